"""`avrl bench scan`: end-to-end scan throughput with 1 and 2 decode workers, and the peak
memory of every Ray worker process.

A scan here is the real thing (``scan.pipeline.run_scan``) on a fresh private local Ray,
into a fresh output folder. "N workers" means N decode tasks in flight on N physical cores
(the process and the Ray it starts are pinned to N cores; Ray gets N + 1 logical CPUs so
the inference actor, which holds one, never starves the decode tasks of a slot).

Memory is measured two ways: the pipeline's own figure (each decode task and the actor
report their process's ``ru_maxrss``), and by sampling the RSS of every Ray worker process
from the driver with psutil, so a worker that never reports (or dies) is still seen.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avrl_batch.bench.report import cpu_seconds, envelope, load_average, median
from avrl_batch.memory import peak_rss_mb

MiB = 1024 * 1024


@dataclass
class RssSampler:
    """Peak RSS (MiB) of each Ray worker process below this one, sampled every ``every_s``."""

    every_s: float = 0.2
    peaks: dict[int, float] = field(default_factory=dict)  # worker + its child processes
    own_peaks: dict[int, float] = field(default_factory=dict)  # the worker process alone
    child_peaks: dict[int, float] = field(default_factory=dict)  # its children (decoder)
    cpu: dict[int, float] = field(default_factory=dict)  # CPU seconds, last seen, per process
    roles: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @staticmethod
    def role_of(title: str) -> str | None:
        """Decode task / inference actor / other Ray worker, from the process title Ray sets
        (``ray::ReadItems->FlatMap(_decode_rows)``, ``ray::MapWorker(MapBatches(Predictor))``)."""
        if not title.startswith("ray::"):
            return None  # raylet, GCS, dashboard agents: not workers
        if "Predictor" in title or "MapWorker" in title:
            return "infer"
        if "decode" in title or "FlatMap" in title:
            return "decode"
        return "other"

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        for proc in me.children(recursive=True):
            try:
                cmd = proc.cmdline()
                role = self.role_of(cmd[0] if cmd else "")
                if role is None:
                    continue
                rss = proc.memory_info().rss / MiB
                # a decode worker's FFmpeg runs in a decoder child (scan/isolate.py): the
                # worker's memory is its own plus its children's
                kids = 0.0
                for child in proc.children(recursive=True):
                    try:
                        kids += child.memory_info().rss / MiB
                        ct = child.cpu_times()
                        self.cpu[child.pid] = ct.user + ct.system
                    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                        pass
                t = proc.cpu_times()
                self.cpu[proc.pid] = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            pid = proc.pid
            self.peaks[pid] = max(self.peaks.get(pid, 0.0), rss + kids)
            self.own_peaks[pid] = max(self.own_peaks.get(pid, 0.0), rss)
            self.child_peaks[pid] = max(self.child_peaks.get(pid, 0.0), kids)
            # a worker that ever ran a decode task or the actor keeps that role
            if self.roles.get(pid) in (None, "other"):
                self.roles[pid] = role

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, float]:
        def peak(table: dict[int, float], role: str) -> float:
            vals = [v for pid, v in table.items() if self.roles.get(pid) == role]
            return round(max(vals, default=0.0), 1)

        return {
            # a decode worker with its decoder child process: the memory one decode slot needs
            "decode_max_mb": peak(self.peaks, "decode"),
            "decode_worker_own_max_mb": peak(self.own_peaks, "decode"),
            "decoder_child_max_mb": peak(self.child_peaks, "decode"),
            "infer_max_mb": peak(self.peaks, "infer"),
            "worker_max_mb": round(max(self.peaks.values(), default=0.0), 1),
            # every worker's peak added up: an upper bound on what the scan held at once
            "workers_sum_mb": round(sum(self.peaks.values()), 1),
            "decode_processes": sum(1 for r in self.roles.values() if r == "decode"),
            # CPU seconds of every worker and its children (as last sampled)
            "workers_cpu_s": round(sum(self.cpu.values()), 2),
        }


def pin_ray_workers(n: int) -> list[int]:
    """Restrict the raylet and every Ray worker below this process to the first ``n`` usable
    cores; returns their pids."""
    import os

    import psutil

    allowed = sorted(os.sched_getaffinity(0))
    if n > len(allowed):
        from avrl_batch.errors import ConfigError

        raise ConfigError(f"{n} workers need {n} cores; only {len(allowed)} are usable here")
    pinned = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
            if "raylet" in proc.name() or cmd.startswith("ray::") or "default_worker" in cmd:
                # a worker's threads (FFmpeg's, torch's) are created later and inherit it
                for t in proc.threads():
                    os.sched_setaffinity(t.id, allowed[:n])
                pinned.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return pinned


def ensure_model(work: Path, preset: str, seed: int = 0) -> Path:
    """A randomly initialised model file of ``preset`` (the same file for every variant)."""
    path = work / f"{preset}-seed{seed}.avrl"
    if not path.exists():
        import torch

        from avrl_batch.config import preset as get_preset
        from avrl_batch.model import build_model
        from avrl_batch.modelfile import save_model

        torch.manual_seed(seed)
        cfg = get_preset(preset)
        save_model(path, build_model(cfg), cfg)
    return path


def scan_once(
    source: str | Path,
    model: str | Path,
    out: str | Path,
    *,
    workers: int,
    segment_s: float | None = None,
    batch_size: int | None = None,
    cascade: bool = False,
    keep_out: bool = False,
) -> dict[str, Any]:
    """One scan of ``source`` on a fresh local Ray pinned to ``workers`` cores (``cascade``:
    ``avrl scan --cascade``; ``keep_out``: leave the output for the caller to read).

    Returns wall time (with and without starting Ray), footage, hours per hour and memory.
    """
    import os

    from avrl_batch.scan.pipeline import private_local_ray, run_scan
    from avrl_batch.scan.plan import DEFAULT_BATCH_SIZE, DEFAULT_SEGMENT_S, ScanConfig

    shutil.rmtree(out, ignore_errors=True)  # a finished output would be skipped, not scanned
    cfg = ScanConfig(
        source=str(source),
        model=str(model),
        out=str(out),
        segment_s=segment_s or DEFAULT_SEGMENT_S,
        batch_size=batch_size or DEFAULT_BATCH_SIZE,
        cascade=cascade,
    )
    # Ray runs its workers at nice 15 by default (to keep the raylet responsive). On a
    # dedicated node that changes nothing, but on a shared one it hands the scan's decode
    # tasks and actor a sliver of the CPU next to any nice-0 process (the naive baseline
    # included): measured, a 2-worker scan then ran slower than a 1-worker one. Workers at
    # nice 0 compete on equal terms, which is what a dedicated scan node gives them.
    os.environ.setdefault("RAY_worker_niceness", "0")
    t0 = time.perf_counter()
    c0 = cpu_seconds()
    with RssSampler() as sampler, private_local_ray(workers + 1):
        # the raylet forks every worker, so pinning it (and the workers it prestarted) pins
        # the scan to `workers` cores; GCS and the driver stay free (they start Ray, which on
        # a loaded single core can exceed Ray's start-up timeout)
        pin_ray_workers(workers)
        t1 = time.perf_counter()
        summary = run_scan(cfg)
    wall = time.perf_counter() - t0
    driver_cpu = cpu_seconds() - c0
    if not keep_out:
        shutil.rmtree(out, ignore_errors=True)
    if summary.sources_failed:
        from avrl_batch.errors import AvrlError

        raise AvrlError(f"benchmark scan failed on some sources: {summary.errors[:2]}")
    return {
        "wall_s": wall,
        "ray_start_s": t1 - t0,
        "scan_wall_s": summary.wall_s,
        "footage_s": summary.footage_s,
        "segments": summary.segments,
        "windows": summary.windows,
        "hours_per_hour": summary.footage_s / summary.wall_s,
        "hours_per_hour_with_ray_start": summary.footage_s / wall,
        "pipeline_peak_rss_mb": summary.peak_rss_mb,
        "sampled": sampler.summary(),
        "driver_peak_rss_mb": peak_rss_mb(),
        # footage hours per CPU-hour of the scan's processes: robust to a shared machine
        "cpu_s": sampler.summary()["workers_cpu_s"] + driver_cpu,
        "hours_per_cpu_hour": summary.footage_s
        / max(sampler.summary()["workers_cpu_s"] + driver_cpu, 1e-9),
        "driver_cpu_s": driver_cpu,
        "workers_cpu_s": sampler.summary()["workers_cpu_s"],
        "model_id": summary.model_id,
        "sources": summary.sources.get("ok", []),
        "cascade": summary.cascade,
    }


def _agg(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str, sub: str | None = None) -> float:
        vals = [r[key][sub] if sub else r[key] for r in runs]
        return round(median([float(v) for v in vals]), 3)

    return {
        "runs": len(runs),
        "footage_s": round(runs[0]["footage_s"], 3),
        "segments": runs[0]["segments"],
        "windows": runs[0]["windows"],
        "scan_wall_s": med("scan_wall_s"),
        "scan_wall_s_runs": [round(r["scan_wall_s"], 3) for r in runs],
        "ray_start_s": med("ray_start_s"),
        "hours_per_hour": med("hours_per_hour"),
        "hours_per_hour_runs": [round(r["hours_per_hour"], 3) for r in runs],
        "hours_per_hour_with_ray_start": med("hours_per_hour_with_ray_start"),
        "cpu_s": med("cpu_s"),
        "hours_per_cpu_hour": med("hours_per_cpu_hour"),
        "peak_decode_worker_mb": med("sampled", "decode_max_mb"),
        "peak_decode_worker_own_mb": med("sampled", "decode_worker_own_max_mb"),
        "peak_decoder_child_mb": med("sampled", "decoder_child_max_mb"),
        "peak_infer_actor_mb": med("sampled", "infer_max_mb"),
        "peak_worker_mb": med("sampled", "worker_max_mb"),
        "workers_sum_mb": med("sampled", "workers_sum_mb"),
        "pipeline_decode_rss_mb": round(
            median([r["pipeline_peak_rss_mb"].get("decode", 0.0) for r in runs]), 1
        ),
        "pipeline_infer_rss_mb": round(
            median([r["pipeline_peak_rss_mb"].get("infer", 0.0) for r in runs]), 1
        ),
    }


def bench_scan(
    sources: list[str | Path],
    *,
    preset: str = "small",
    workers: tuple[int, ...] = (1, 2),
    runs: int = 3,
    work: str | Path = "/tmp/avrl-bench/work",
    segment_s: float | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Scan every source with every worker count, ``runs`` times, interleaved; scaling ratio
    (most workers / fewest) per source and peak-memory ratio (longest / shortest source)."""
    load0 = load_average()
    work = Path(work)
    model = ensure_model(work, preset)
    results = []
    for src in sources:
        per: dict[int, list[dict[str, Any]]] = {w: [] for w in workers}
        for _ in range(runs):
            for w in workers:
                per[w].append(
                    scan_once(
                        src,
                        model,
                        work / f"out-{w}",
                        workers=w,
                        segment_s=segment_s,
                        batch_size=batch_size,
                    )
                )
        row: dict[str, Any] = {
            "source": str(src),
            "by_workers": {str(w): _agg(r) for w, r in per.items()},
        }
        if len(workers) > 1:
            lo, hi = min(workers), max(workers)
            row["scaling"] = {
                "workers": [lo, hi],
                "ratio": round(
                    row["by_workers"][str(hi)]["hours_per_hour"]
                    / row["by_workers"][str(lo)]["hours_per_hour"],
                    3,
                ),
            }
        results.append(row)
    doc: dict[str, Any] = {
        "preset": preset,
        "runs": runs,
        "segment_s": segment_s,
        "results": results,
        "targets": {"scaling_1_to_2": 1.7, "memory_long_vs_short": 1.25},
    }
    if len(results) > 1:
        by_len = sorted(results, key=lambda r: r["by_workers"][str(workers[-1])]["footage_s"])
        short, long = by_len[0], by_len[-1]
        w = str(workers[-1])
        doc["memory"] = {
            "short": {"source": short["source"], **_mem(short["by_workers"][w])},
            "long": {"source": long["source"], **_mem(long["by_workers"][w])},
            "ratio_decode_worker": _ratio(
                long["by_workers"][w]["peak_decode_worker_mb"],
                short["by_workers"][w]["peak_decode_worker_mb"],
            ),
            "ratio_worker_max": _ratio(
                long["by_workers"][w]["peak_worker_mb"], short["by_workers"][w]["peak_worker_mb"]
            ),
            "workers": int(w),
        }
    return envelope("scan", doc, load_before=load0)


def overhead_per_source(doc: dict[str, Any], n: int) -> dict[str, Any]:
    """``--many N``: the last two results are N short files and one file as long as all of
    them; the difference per file, by scan wall time and by CPU time, at the most workers."""
    many, one = doc["results"][-2], doc["results"][-1]
    w = max(many["by_workers"], key=int)
    a, b = many["by_workers"][w], one["by_workers"][w]
    return {
        "sources": n,
        "workers": int(w),
        "wall_ms_per_source": round((a["scan_wall_s"] - b["scan_wall_s"]) / n * 1000, 2),
        "cpu_ms_per_source": round((a["cpu_s"] - b["cpu_s"]) / n * 1000, 2),
        "many": {"scan_wall_s": a["scan_wall_s"], "cpu_s": a["cpu_s"], "windows": a["windows"]},
        "one": {"scan_wall_s": b["scan_wall_s"], "cpu_s": b["cpu_s"], "windows": b["windows"]},
        "target_ms": 10.0,
    }


def _mem(agg: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "footage_s",
        "segments",
        "peak_decode_worker_mb",
        "peak_decoder_child_mb",
        "peak_infer_actor_mb",
        "peak_worker_mb",
        "pipeline_decode_rss_mb",
    )
    return {k: agg[k] for k in keys}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def table(doc: dict[str, Any]) -> list[str]:
    lines = [
        "| source | workers | footage s | segments | h footage / h (median) | runs | "
        "h footage / CPU-h | peak decode worker MiB (worker + decoder) | inference actor MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        for w, a in r["by_workers"].items():
            lines.append(
                f"| {Path(r['source']).name} | {w} | {a['footage_s']:.0f} | {a['segments']} | "
                f"{a['hours_per_hour']:.2f} | {a['hours_per_hour_runs']} | "
                f"{a.get('hours_per_cpu_hour', float('nan')):.2f} | "
                f"{a['peak_decode_worker_mb']:.0f} ({a.get('peak_decode_worker_own_mb', 0):.0f}"
                f" + {a.get('peak_decoder_child_mb', 0):.0f}) | {a['peak_infer_actor_mb']:.0f} |"
            )
    return lines
