"""Ray job entrypoint for `avrl train` (options and credentials: see jobs/_common.py).

    ray job submit --working-dir . -- \
        python jobs/train.py --config jobs/configs/train.yaml [OVERRIDES]
"""

import sys

from _common import run  # `python jobs/train.py` puts jobs/ first on sys.path

if __name__ == "__main__":
    sys.exit(run("train"))
