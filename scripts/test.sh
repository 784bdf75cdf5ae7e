#!/usr/bin/env bash
# Fresh machine -> the whole test suite (real local Ray, moto S3 server, PyAV-made media).
# Arguments go to pytest: `bash scripts/test.sh -m "not slow"` is the fast lane, leaving out
# the tests marked @pytest.mark.slow.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
"${PIP[@]}" install -e "$ROOT[test]"
# Headless Chromium renders the HTML report in tests/test_report.py.
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium" >&2
  fi
fi
cd "$ROOT"
"$VENV/bin/ruff" check avrl_batch tests jobs
exec "$VENV/bin/python" -m pytest -q "$@"
