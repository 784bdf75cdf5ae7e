"""Connecting to Ray: one place that honours ``--address``."""

from __future__ import annotations

import logging


def init_ray(address: str | None = None) -> None:
    """Start or join Ray once per process (``avrl_batch.cluster.connect``): ``None`` gives a
    private local Ray with this machine's CPUs (or joins ``RAY_ADDRESS`` inside a Ray job);
    ``"auto"``, ``HOST:PORT`` or ``ray://HOST:10001`` join that cluster. An already initialised
    Ray (a test's, a job's) is reused as it is."""
    from avrl_batch.cluster import connect

    connect(address)


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
