"""What every benchmark result carries: the machine, the load it ran under, medians of runs.

A figure without its machine and load is not reproducible; a ratio of two figures taken at
different times on a shared machine is not a ratio. So every result records the machine
(CPU model, cores, memory, torch/PyAV versions), the 1-minute load average before and after,
and each measured variant's individual runs next to their median; ratios are computed from
variants measured in the same invocation, interleaved run by run.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "avrl-bench/1"


def cpu_model() -> str:
    """The CPU's model name (lscpu's "Model name", read from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    import av
    import torch

    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": mem_gib,
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "pyav": av.__version__,
        "ffmpeg": ".".join(str(x) for x in av.library_versions["libavcodec"]),
    }


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_seconds() -> float:
    """User + system CPU seconds used so far by this process (every thread)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


@dataclass
class Measured:
    """Runs of one variant: seconds per run and any per-run figures (e.g. peak RSS)."""

    name: str
    seconds: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, seconds: float, **figures: float) -> None:
        self.seconds.append(seconds)
        for k, v in figures.items():
            self.extra.setdefault(k, []).append(float(v))

    @property
    def median_s(self) -> float:
        return median(self.seconds)

    def summary(self, *, work: float | None = None, unit: str = "x_realtime") -> dict[str, Any]:
        """Median seconds, the runs, the median of each extra figure, and ``work / median``
        as ``unit`` when ``work`` is given (e.g. footage seconds -> times realtime)."""
        d: dict[str, Any] = {
            "median_s": round(self.median_s, 4),
            "runs_s": [round(s, 4) for s in self.seconds],
        }
        if work is not None and self.median_s > 0:
            d[unit] = round(work / self.median_s, 3)
        for k, v in self.extra.items():
            d[k] = round(median(v), 3)
            d[f"{k}_runs"] = [round(x, 3) for x in v]
        d.update(self.info)
        return d


def interleaved(
    variants: dict[str, Callable[[], dict[str, float] | None]], runs: int, warmup: bool = True
) -> dict[str, Measured]:
    """Time each variant ``runs`` times, alternating between them run by run, so that a
    change in the machine's load hits all of them alike and their ratio stays fair.
    A variant may return extra per-run figures (a dict of floats) to record."""
    out = {name: Measured(name) for name in variants}
    if warmup:
        for fn in variants.values():
            fn()  # first-call costs (imports, codec init, page cache) are not the steady state
    for _ in range(runs):
        for name, fn in variants.items():
            c0 = cpu_seconds()
            t0 = time.perf_counter()
            figures = fn() or {}
            dt = time.perf_counter() - t0
            # CPU time of this process (all its threads): on a shared machine wall time
            # measures the neighbours too, CPU time mostly measures the work
            out[name].add(dt, cpu_s=cpu_seconds() - c0, **figures)
    return out


@contextmanager
def cores(n: int | None):
    """Restrict this thread (and the threads and processes it starts) to ``n`` CPU cores.

    FFmpeg sizes its thread pool from the affinity mask (av_cpu_count uses
    sched_getaffinity), so "1 core" really means a 1-thread decoder and "2 cores" two.
    """
    if n is None:
        yield
        return
    before = os.sched_getaffinity(0)
    allowed = sorted(before)
    if n > len(allowed):
        from avrl_batch.errors import ConfigError

        raise ConfigError(f"--cores {n}: only {len(allowed)} cores are usable here")
    from threadpoolctl import threadpool_limits

    os.sched_setaffinity(0, set(allowed[:n]))
    try:
        # OpenBLAS sized its pool from every core at import; on fewer cores its threads
        # contend and spin (measured: the audio path's matrix products cost 5x the CPU time
        # with 2 BLAS threads on 1 core). Ray's workers get OMP_NUM_THREADS = their CPUs.
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        os.sched_setaffinity(0, before)


def envelope(bench: str, figures: dict[str, Any], *, load_before: float) -> dict[str, Any]:
    """The JSON document of one benchmark: schema, which bench, machine, load, figures."""
    return {
        "schema": SCHEMA,
        "bench": bench,
        "machine": machine(),
        "load_avg_1m": {"before": load_before, "after": load_average()},
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **figures,
    }


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table for the README: the header, its rule, one line a row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines
