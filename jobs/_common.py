"""What the Ray job entrypoints jobs/scan.py and jobs/train.py share.

    ray job submit --working-dir . -- \
        python jobs/<command>.py --config jobs/configs/<command>.yaml [OVERRIDES]

The YAML's keys are the options of `avrl <command>` (see `avrl <command> --help`); options
after the config override it. The job joins the cluster it runs on (the job runner sets
RAY_ADDRESS) and runs the same code path as the CLI. S3 credentials come from the cluster's
AWS chain (IAM instance profile / IRSA), never from the job's command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(command: str, argv: list[str] | None = None) -> int:
    """Run ``avrl <command>`` with ``argv`` (default: this process's arguments) as a Ray job;
    returns the exit code."""
    # The working directory Ray uploads is the repository root; make the package importable
    # even where it is not installed (a plain Ray image with only the dependencies).
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from avrl_batch.commands.jobconfig import run_job

    return run_job(command, sys.argv[1:] if argv is None else argv)
