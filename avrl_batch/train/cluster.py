"""How many CPUs a training worker reserves on the cluster it runs on."""

from __future__ import annotations


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
