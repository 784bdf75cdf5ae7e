"""Connecting to Ray: one place that honours ``--address``."""

from __future__ import annotations

import logging
import os


def init_ray(address: str | None = None) -> None:
    """Start or join Ray once per process.

    ``None``: a local Ray with this machine's CPUs (or the cluster named by ``RAY_ADDRESS``);
    ``"auto"``: the running cluster this node belongs to; ``ray://host:10001``: a remote cluster
    through Ray Client. An already initialised Ray (a test's, a job's) is reused as it is.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict = {"configure_logging": False, "log_to_driver": False}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False
    ray.init(address=address, **kwargs)


def quiet_ray_data() -> None:
    """Ray Data's per-operator progress logging drowns the CLI's own output."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray.data", "ray.train", "ray.util"):
        logging.getLogger(name).setLevel(logging.WARNING)


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def cpus_per_worker(workers: int, use_gpu: bool, requested: float | None = None) -> float:
    """CPUs each training worker reserves. Ray Data's read tasks also need a CPU to stream shards
    to the workers; on a small machine whole-CPU workers would take every CPU and the reads
    would wait forever, so by default at least one CPU is left free for them."""
    if requested is not None:
        return requested
    if use_gpu:
        return 1.0
    free = cluster_cpus() - 1.0
    return max(0.25, min(1.0, free / max(1, workers)))
