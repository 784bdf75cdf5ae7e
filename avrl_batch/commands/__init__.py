"""CLI command groups. Each module registers thin commands on ``avrl_batch.cli.app``.

Heavy libraries (torch, ray, av) are imported inside the command bodies so that
``avrl --help`` stays instant.
"""
