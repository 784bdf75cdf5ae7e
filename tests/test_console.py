"""The CLI's stderr: Ray's one non-actionable core-worker line is dropped, every other byte
(C-level writes to fd 2 and Python's own stderr) reaches the terminal. The same check on a
real scan's console is in tests/test_reliability_scan.py (two `avrl scan` processes)."""

from __future__ import annotations

import subprocess
import sys

# The line as Ray 2.60's core worker writes it for a Ray Data actor-pool map.
RAY_LINE = (
    "[2026-12-02 14:25:38,904 E 9994 9994] core_worker.cc:2465: Actor with class name: "
    "'MapWorker(ReadRange->MapBatches(Predictor))' and ID: '641921a9e119992a8cf2e55501000000' "
    "has constructor arguments in the object store and max_restarts > 0. If the arguments in "
    "the object store go out of scope or are lost, the actor restart will fail. See "
    "https://github.com/ray-project/ray/issues/53727 for more details."
)

CODE = f"""
import os, sys
from avrl_batch.commands.console import drop_benign_ray_lines
drop_benign_ray_lines()
drop_benign_ray_lines()  # idempotent
os.write(2, b"[x E 1 1] core_worker.cc:99: Failed to register actor\\n")
os.write(2, {RAY_LINE!r}.encode() + b"\\n")
print("python stderr", file=sys.stderr)
os.write(2, b"no newline at exit")
"""


def test_cli_stderr_drops_only_rays_benign_line() -> None:
    res = subprocess.run([sys.executable, "-c", CODE], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    err = res.stderr.decode()
    assert "constructor arguments in the object store" not in err
    assert "core_worker.cc:99: Failed to register actor\n" in err
    assert "python stderr\n" in err
    assert err.endswith("no newline at exit")  # passed on at exit, not lost
