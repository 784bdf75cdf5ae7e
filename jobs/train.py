"""Ray job entrypoint for `avrl train`.

    ray job submit --working-dir . -- \
        python jobs/train.py --config jobs/configs/train.yaml [OVERRIDES]

The YAML's keys are the options of `avrl train` (see `avrl train --help`); options after the
config override it. The job joins the cluster it runs on (the job runner sets RAY_ADDRESS)
and runs the same code path as the CLI. S3 credentials come from the cluster's AWS chain
(IAM instance profile / IRSA), never from this command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The working directory Ray uploads is the repository root; make the package importable even
# where it is not installed (a plain Ray image with only the dependencies).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avrl_batch.cluster import run_job  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_job("train", sys.argv[1:]))
