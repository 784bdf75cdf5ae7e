"""`python -m avrl_batch ...` is the same as the `avrl` console script."""

from avrl_batch.cli import main

if __name__ == "__main__":  # a spawned child (synth --workers) imports this module too
    main()
