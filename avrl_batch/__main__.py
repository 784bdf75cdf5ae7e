"""`python -m avrl_batch ...` is the same as the `avrl` console script."""

from avrl_batch.cli import main

main()
