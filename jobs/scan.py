"""Ray job entrypoint for `avrl scan` (options and credentials: see jobs/_common.py).

    ray job submit --working-dir . -- \
        python jobs/scan.py --config jobs/configs/scan.yaml [OVERRIDES]
"""

import sys

from _common import run  # `python jobs/scan.py` puts jobs/ first on sys.path

if __name__ == "__main__":
    sys.exit(run("scan"))
