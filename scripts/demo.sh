#!/usr/bin/env bash
# Fresh machine -> the whole chain on embedded defaults (local Ray, local folder).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
"${PIP[@]}" install -e "$ROOT"
exec "$VENV/bin/avrl" demo "$@"
