"""``avrl bench finalise``: how many finished sources a scan's driver writes per second.

The sources come out of a model that costs nothing: each is a finished source as the
assembler hands it over (``WINDOWS_PER_SOURCE`` windows with probabilities, no event
thumbnails), so the figure is the driver's own finalisation rate — timeline, the windows and
events objects written exactly once (sink.write_source), the ledger — through the scan's
writer pool (``pipeline._Writers``) with each ``--writers`` count, interleaved run by run,
into a fresh folder under OUT each time (a local folder or ``s3://`` with ``--endpoint-url``).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from avrl_batch.bench.report import envelope, load_average, median

WINDOWS_PER_SOURCE = 4
WINDOW_S = 2.0
MODEL_ID = "bench-finalise"


def finished_sources(n: int, cameras: int = 10) -> list[Any]:
    """``n`` finished sources over ``cameras`` cameras, one 8-s recording an hour each."""
    import numpy as np

    from avrl_batch.classes import SHADE
    from avrl_batch.scan.assemble import FinishedSource
    from avrl_batch.scan.plan import SourceTask, source_key
    from avrl_batch.scan.sink import windows_table

    rng = np.random.default_rng(0)
    first = datetime(2026, 3, 1, tzinfo=timezone.utc)
    begin = WINDOW_S * np.arange(WINDOWS_PER_SOURCE)
    out = []
    for i in range(n):
        cam, start = f"cam{i % cameras:03d}", first + timedelta(hours=i // cameras)
        uri = f"/archive/{cam}/{cam}_{start:%Y%m%dT%H%M%SZ}.mp4"
        version = f"{1000 + i}-0"
        task = SourceTask(uri, version, 1000 + i, source_key(uri, version, MODEL_ID), cam, start,
                          WINDOW_S * WINDOWS_PER_SOURCE, True, ())
        probs = rng.dirichlet(np.ones(len(SHADE)), WINDOWS_PER_SOURCE).astype(np.float32)
        w = windows_table(task, np.arange(WINDOWS_PER_SOURCE), begin, begin + WINDOW_S,
                          np.ones(WINDOWS_PER_SOURCE, bool), probs, classes=SHADE,
                          model_id=MODEL_ID, scan_id="bench")
        out.append(FinishedSource(task, windows=w))
    return out


def finalise_once(fins: list[Any], out: str, writers: int,
                  endpoint_url: str | None = None) -> dict[str, Any]:
    """Write ``fins`` as a scan's driver does, into ``out``; seconds and sources/s."""
    from avrl_batch.classes import SHADE
    from avrl_batch.scan import pipeline
    from avrl_batch.scan.plan import ScanConfig, ScanPlan, WindowSpec

    cfg = ScanConfig(source="/archive", model="bench.avrl", out=out, writers=writers,
                     endpoint_url=endpoint_url)
    spec = WindowSpec(WINDOW_S, WINDOW_S, 1, 1, 1)
    plan = ScanPlan(todo=[f.task for f in fins], failed=[], skipped=[], spec=spec,
                    model_id=MODEL_ID, spans_listed=pipeline._spans_listed(cfg))
    summary = pipeline.ScanSummary(scan_id="bench", model_id=MODEL_ID, out=out, dry_run=False,
                                   sources_listed=len(fins))
    t0 = time.monotonic()
    ledger = pipeline._Ledger(summary, len(plan.todo), t0, None)
    with pipeline._Writers(writers) as pool:
        for fin in fins:
            pipeline._write_finished(cfg, plan, ledger, fin, SHADE, {}, pool)
    seconds = time.monotonic() - t0
    if summary.sources_ok != len(fins):
        raise RuntimeError(f"finalised {summary.sources_ok} of {len(fins)} sources: "
                           f"{summary.write_failures[:1]}")
    return {"s": seconds, "sources_per_s": len(fins) / seconds}


def bench_finalise(
    out: str, *, sources: int = 2000, writers: tuple[int, ...] = (0, 8), runs: int = 1,
    endpoint_url: str | None = None,
) -> dict[str, Any]:
    from avrl_batch import storage
    from avrl_batch.redaction import redact

    load0 = load_average()
    fins = finished_sources(sources)
    per: dict[int, list[dict[str, Any]]] = {w: [] for w in writers}
    for _ in range(runs):
        for w in writers:
            per[w].append(finalise_once(
                fins, storage.join(out, f"run-{uuid.uuid4().hex[:8]}"), w, endpoint_url
            ))
    figures = {
        str(w): {
            "s": round(median([r["s"] for r in rs]), 3),
            "sources_per_s": round(median([r["sources_per_s"] for r in rs]), 1),
            "sources_per_s_runs": [round(r["sources_per_s"], 1) for r in rs],
        }
        for w, rs in per.items()
    }
    return envelope("finalise", {
        "out": redact(out),
        "sources": sources, "windows_per_source": WINDOWS_PER_SOURCE, "runs": runs,
        "writers": figures, "goal_sources_per_s": 200,
    }, load_before=load0)


def table(doc: dict[str, Any]) -> list[str]:
    from avrl_batch.bench.report import markdown_table

    return markdown_table(
        ["writers", "seconds", "sources/s"],
        [[w, f"{f['s']:.2f}", f"{f['sources_per_s']:.0f}"] for w, f in doc["writers"].items()],
    )
