"""`avrl bench archive`: the bookkeeping and query costs of a large, finished archive.

The archive is generated: N placeholder recordings in a camera/date/hour layout
(``camNNN/YYYY-MM-DD/camNNN_YYYYmmddTHH0000Z.mp4``, 24 a camera-day) and, for each, the
finished outputs a scan with a tiny model writes (windows + events objects built by the
sink's own table code, with its ``avrl.source`` metadata, under the keys a scan computes;
written with plain file writes instead of the sink's fsync'd ones, so that 100,000 sources
are made in minutes). Placeholders are never opened: every source is finished, which is
what a rerun finds.

Measured on that archive:

- list + plan: listing the sources, the ``events/``/``errors/`` listings, keys, the split into
  finished and to-do, and the search for older versions (``pipeline._split_finished``);
- the no-op rerun (``avrl scan`` in a fresh process, as a user runs it): wall time, driver peak
  memory, and the storage calls it made, by kind (counted in that process: lists of a folder
  tree, object reads, existence checks);
- ``avrl query`` of events and of windows for one camera-day and for everything;
- with ``--compact``: ``avrl compact`` of the output (time, files per partition before and
  after), then the no-op rerun and the queries again, whose results must not change.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

SOURCES_PER_CAMERA_DAY = 24  # one recording an hour
WINDOWS_PER_SOURCE = 4
FIRST_DAY = datetime(2026, 3, 1, tzinfo=timezone.utc)


def layout(n: int, cameras: int) -> list[tuple[str, str, datetime]]:
    """(relative path, camera, start) of ``n`` hourly recordings over ``cameras`` cameras."""
    out = []
    for i in range(n):
        cam = f"cam{i % cameras:03d}"
        hour = i // cameras  # camera i % cameras records its (i // cameras)-th hour
        start = FIRST_DAY + timedelta(hours=hour)
        out.append((f"{cam}/{start:%Y-%m-%d}/{cam}_{start:%Y%m%dT%H%M%SZ}.mp4", cam, start))
    return out


def make_archive(work: Path, n: int, cameras: int) -> dict[str, Any]:
    """Model, N placeholder sources and their finished outputs under ``work`` (reused when
    already made for the same N and cameras)."""
    from avrl_batch.modelfile import model_from_bytes
    from avrl_batch.scan import sink
    from avrl_batch.scan.plan import SourceTask, keyed_sources
    from avrl_batch.scan.timeline import events_from_windows
    from avrl_batch.storage import list_sources

    done = work / "archive.json"
    if done.exists():
        info = json.loads(done.read_text())
        if info["sources"] == n and info["cameras"] == cameras and not info.get("compacted"):
            return info
        import shutil

        for folder in ("rec", "out"):  # a compacted archive is made again: "before" is uncompacted
            shutil.rmtree(work / folder, ignore_errors=True)
    model = work / "tiny.avrl"
    _tiny_model(model)
    loaded = model_from_bytes(model.read_bytes(), source=str(model))
    rec, out = work / "rec", work / "out"
    t0 = time.monotonic()
    starts = {}
    for rel, cam, start in layout(n, cameras):
        path = rec / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"placeholder")
        starts[str(path)] = (cam, start)
    sources = list_sources(str(rec), include=("*.mp4",))
    classes = loaded.cfg.classes
    w_s = loaded.cfg.window_s
    import numpy as np

    probs = np.full((WINDOWS_PER_SOURCE, len(classes.names)), 1 / len(classes.names))
    begin = w_s * np.arange(WINDOWS_PER_SOURCE)
    scan_id = "20260301T000000Z-000000"
    for src, key in keyed_sources(sources, loaded.model_id):
        cam, start = starts[src.uri]
        task = SourceTask(src.uri, src.version, src.size, key, cam, start,
                          w_s * WINDOWS_PER_SOURCE, True, ())
        w = sink.windows_table(task, np.arange(WINDOWS_PER_SOURCE), begin, begin + w_s,
                               np.ones(WINDOWS_PER_SOURCE, bool), probs, classes=classes,
                               model_id=loaded.model_id, scan_id=scan_id)
        ev = events_from_windows(w, classes=classes)
        for uri, table in ((sink.windows_uri(str(out), task), w),
                           (sink.events_uri(str(out), task), ev)):
            table = sink.with_source_meta(table, src.uri, src.version, loaded.model_id)
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            Path(uri).write_bytes(sink.parquet_bytes(table))
    sink.write_settings(str(out), {
        "model_id": loaded.model_id, "window_s": w_s, "stride_s": w_s,
        "camera_pattern": None, "timezone": "UTC", "rescanning": False,
    })
    info = {"sources": n, "cameras": cameras, "model": str(model), "model_id": loaded.model_id,
            "rec": str(rec), "out": str(out), "generate_s": round(time.monotonic() - t0, 1),
            "days": len({s.date() for _, s in starts.values()})}
    done.write_text(json.dumps(info))
    return info


def _tiny_model(path: Path) -> None:
    import torch

    from avrl_batch.config import preset
    from avrl_batch.model import build_model
    from avrl_batch.modelfile import save_model

    torch.manual_seed(0)
    cfg = preset("tiny")
    save_model(path, build_model(cfg), cfg)


def plan_time(info: dict[str, Any]) -> dict[str, Any]:
    """List + plan of a rerun over the archive, in this process."""
    from avrl_batch.scan import pipeline
    from avrl_batch.scan.plan import ScanConfig

    cfg = ScanConfig(source=info["rec"], model=info["model"], out=info["out"])
    t0 = time.monotonic()
    sources = pipeline._list_sources(cfg)
    listed = time.monotonic() - t0
    _, todo, skipped, stale, _ = pipeline._split_finished(cfg, sources, info["model_id"])
    return {"list_s": round(listed, 2), "list_plan_s": round(time.monotonic() - t0, 2),
            "todo": len(todo), "skipped": len(skipped), "superseded": len(stale)}


# run in a fresh process: `avrl scan` as a user runs it, its storage calls counted
_COUNTED_SCAN = """
import collections, json, sys, time
from avrl_batch import storage
calls = collections.Counter()
def counted(name, fn):
    def wrapper(*a, **k):
        calls[name] += 1
        return fn(*a, **k)
    return wrapper
storage.list_sources = counted("list_sources", storage.list_sources)
storage.list_files = counted("list_files", storage.list_files)
storage.read_bytes = counted("read_bytes", storage.read_bytes)
storage.exists = counted("exists", storage.exists)
storage.open_source = counted("open_source", storage.open_source)
from avrl_batch.cli import main
t0 = time.monotonic()
try:
    main(sys.argv[1:])
except SystemExit as e:
    assert not e.code, e.code
print("COUNTS", json.dumps({"wall_s": time.monotonic() - t0, **calls}), file=sys.stderr)
"""


def noop_rerun(info: dict[str, Any]) -> dict[str, Any]:
    """`avrl scan REC --model M --out OUT --json` over the finished archive."""
    run = subprocess.run(
        [sys.executable, "-c", _COUNTED_SCAN, "scan", info["rec"], "--model", info["model"],
         "--out", info["out"], "--json"],
        capture_output=True, text=True, check=True, timeout=3600,
    )
    summary = json.loads(run.stdout[run.stdout.index("{"):])
    counts = json.loads(run.stderr.rsplit("COUNTS", 1)[1])
    return {
        "wall_s": round(counts.pop("wall_s"), 2),
        "scan_wall_s": round(summary["wall_s"], 2),
        "sources_skipped": summary["sources_skipped"],
        "sources_ok": summary["sources_ok"],
        "driver_peak_rss_mb": summary["peak_rss_mb"].get("driver"),
        "storage_calls": counts,
    }


def query_times(info: dict[str, Any]) -> dict[str, Any]:
    """`avrl query` times (in this process): one camera-day vs everything, events and
    windows, with a digest of each result (the same rows in the same order give the same
    digest)."""
    from avrl_batch.query import QueryFilters, run_query

    day = FIRST_DAY + timedelta(days=max(0, info["days"] // 2))
    one = QueryFilters(cameras=("cam000",), since=day, until=day + timedelta(days=1))
    out: dict[str, Any] = {"camera_day": {"camera": "cam000", "day": f"{day:%Y-%m-%d}"}}
    for table in ("events", "windows"):
        for what, filters in (("camera_day", one), ("all", QueryFilters())):
            t0 = time.monotonic()
            rows = run_query(info["out"], table=table, filters=filters)
            out.setdefault(what, {})[table] = {"s": round(time.monotonic() - t0, 2),
                                               "rows": rows.num_rows, "digest": _digest(rows)}
    return out


def _digest(rows: Any) -> str:
    import hashlib

    import pyarrow as pa

    sink = pa.BufferOutputStream()
    table = rows.combine_chunks()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]


def files_per_partition(out: str) -> dict[str, Any]:
    """The most files in one (table, date, camera) partition, and all files, of the tables a
    compaction rewrites."""
    from collections import Counter

    from avrl_batch import storage
    from avrl_batch.scan.compact import COMPACTED_TABLES

    per: Counter[tuple[str, ...]] = Counter()
    for table in COMPACTED_TABLES:
        base = storage.join(out, table)
        for uri in storage.list_files(base, suffix=".parquet"):
            per[(table, *storage.relative_parts(base, uri)[:-1])] += 1
    return {"files": sum(per.values()), "max_per_partition": max(per.values(), default=0),
            "partitions": len(per)}


def compact_archive(info: dict[str, Any], work: Path) -> dict[str, Any]:
    """`avrl compact` of the archive's output (in this process); the archive is made again by
    the next run."""
    from avrl_batch.scan.compact import compact

    before = files_per_partition(info["out"])
    info["compacted"] = True
    (work / "archive.json").write_text(json.dumps(info))
    summary = compact(info["out"])
    return {"wall_s": summary.wall_s, "sources_compacted": summary.sources_compacted,
            "mb_written": round(summary.bytes_written / 1e6, 1), "errors": summary.errors,
            "before": before, "after": files_per_partition(info["out"])}
