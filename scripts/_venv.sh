# Sourced by scripts/demo.sh and scripts/test.sh: one virtualenv in the repo, torch first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AVRL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
# torch==2.13.0 comes from this machine's disk as a CPU build; a bare `torch` could pull a
# multi-GB CUDA build, so it is installed before anything that depends on it.
"$VENV/bin/python" -c "import torch" 2>/dev/null || "${PIP[@]}" install "torch==2.13.0"
