"""`avrl bench damaged`: how much of a recording with a bad sector a scan keeps.

A copy of the footage has ``fraction`` of its bytes (random) destroyed, centred on the
middle of the file (the MP4 index at the end survives, as after a bad sector in a long
recording). The real scan (``scan.pipeline.run_scan``, a fresh private local Ray, a random
model of ``preset``) runs on it; the figures come from its output:

- ``kept_share``: the seconds the windows cover over the recording's duration (target
  at least 0.95);
- ``unreadable``: the spans reported, and whether they reach from the first to the last
  video packet whose bytes were destroyed (``damage_covered``; the packets found by their
  byte positions in the intact file). A frame that still decodes inside the damage splits
  the span in two.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from avrl_batch.bench.report import envelope, load_average

# how far after the first damaged packet's time the first span may start: the packet may
# still decode from what the damage spared of it (one frame interval at 10 fps is 0.1 s)
HIT_SLACK_S = 0.5


def destroy_middle(src: Path, dest: Path, fraction: float, seed: int = 0) -> tuple[int, int]:
    """``src`` copied to ``dest`` with ``fraction`` of its bytes, centred on the middle,
    replaced by random ones; the destroyed byte range [lo, hi)."""
    data = bytearray(src.read_bytes())
    n = max(1, int(len(data) * fraction))
    lo = len(data) // 2 - n // 2
    data[lo : lo + n] = np.random.default_rng(seed).bytes(n)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(bytes(data))
    return lo, lo + n


def damaged_packet_times(path: Path, lo: int, hi: int) -> tuple[float, float] | None:
    """(first, last) presentation time, seconds from the video's first timestamp, of the video
    packets of ``path`` with bytes in [lo, hi); None when none has."""
    import av

    from avrl_batch.media.probe import time_origin

    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        origin = time_origin(c, vs)
        times = [
            float(p.pts * p.time_base) - origin
            for p in c.demux(vs)
            if p.pts is not None and p.pos is not None and p.pos < hi and p.pos + p.size > lo
        ]
    return (min(times), max(times)) if times else None


def bench_damaged(
    footage: Path,
    work: Path,
    *,
    fraction: float = 0.005,
    preset: str = "tiny",
    segment_s: float = 300.0,
    workers: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Scan a damaged copy of ``footage`` once; the share kept and the spans reported."""
    import pyarrow.parquet as pq

    from avrl_batch import storage
    from avrl_batch.bench.scan import ensure_model
    from avrl_batch.media import probe
    from avrl_batch.scan.pipeline import private_local_ray, run_scan
    from avrl_batch.scan.plan import ScanConfig

    load0 = load_average()
    work.mkdir(parents=True, exist_ok=True)
    damaged = work / "rec" / "cam01" / f"cam01_20260401T080000Z_damaged{footage.suffix}"
    lo, hi = destroy_middle(footage, damaged, fraction, seed)
    hit = damaged_packet_times(footage, lo, hi)
    duration = probe(str(footage)).duration_s or 0.0
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)  # a finished output would be skipped, not scanned
    model = ensure_model(work, preset)
    t0 = time.perf_counter()
    with private_local_ray(workers + 1):
        summary = run_scan(ScanConfig(source=str(damaged.parent.parent), model=str(model),
                                      out=str(out), segment_s=segment_s))
    wall = time.perf_counter() - t0

    def table(name: str) -> Any:
        files = storage.list_files(str(out / name), suffix=".parquet")
        return pq.read_table(files[0], partitioning=None) if files else None

    windows, spans = table("windows"), table("unreadable")
    kept_s = float(np.sum(np.asarray(windows["end_s"]) - np.asarray(windows["start_s"]))) \
        if windows is not None else 0.0
    reported = [] if spans is None else [
        {"start_s": round(r["start_s"], 3), "end_s": round(r["end_s"], 3), "reason": r["reason"],
         "message": r["message"]}
        for r in spans.to_pylist()
    ]
    # the spans reach from the first damaged packet (or the frame after it, when what the
    # damage spared of that packet still decoded) to past the last one; frames that still
    # decoded between them are windows' footage, not a gap in the account
    extent = [min(r["start_s"] for r in reported), max(r["end_s"] for r in reported)] \
        if reported else None
    covered = hit is not None and extent is not None and (
        extent[0] <= hit[0] + HIT_SLACK_S and extent[1] >= hit[1]
    )
    return envelope(
        "damaged",
        {
            "file": footage.name,
            "duration_s": round(duration, 3),
            "bytes": damaged.stat().st_size,
            "fraction_destroyed": fraction,
            "bytes_destroyed": [lo, hi],
            "damaged_packets_s": None if hit is None else [round(hit[0], 3), round(hit[1], 3)],
            "preset": preset,
            "segment_s": segment_s,
            "workers": workers,
            "sources_ok": summary.sources_ok,
            "sources_failed": summary.sources_failed,
            "errors": summary.errors,
            "windows": summary.windows,
            "kept_s": round(kept_s, 3),
            "kept_share": round(kept_s / duration, 4) if duration else 0.0,
            "unreadable": reported,
            "unreadable_s": round(sum(r["end_s"] - r["start_s"] for r in reported), 3),
            "unreadable_extent_s": extent,
            "damage_covered": covered,
            "scan_wall_s": round(wall, 1),
            "target": {"kept_share_at_least": 0.95, "damage_covered": True},
        },
        load_before=load0,
    )


def table(doc: dict[str, Any]) -> list[str]:
    spans = "; ".join(
        f"{r['start_s']:.1f}-{r['end_s']:.1f} s {r['reason']}" for r in doc["unreadable"]
    ) or "none"
    hit = doc["damaged_packets_s"]
    return [
        "| footage | destroyed | damaged packets | kept as windows | unreadable spans "
        "| damage covered | scan wall |",
        "|---|---|---|---|---|---|---|",
        f"| {doc['file']} ({doc['duration_s']:g} s) | {doc['fraction_destroyed']:.1%} of "
        f"{doc['bytes']:,} bytes | "
        f"{'-' if hit is None else f'{hit[0]:.1f}-{hit[1]:.1f} s'} | "
        f"{doc['kept_share']:.2%} ({doc['kept_s']:.0f} s) | {spans} | "
        f"{'yes' if doc['damage_covered'] else 'no'} | {doc['scan_wall_s']:.0f} s |",
    ]
