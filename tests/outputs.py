"""A realistic small scan output tree (docs/design.md §6) for the query and report tests.

Windows carry probabilities with embedded anomalies; events come from the real timeline
code (with real JPEG thumbnails of the peak windows); errors and a scan manifest are there
too. Partition names come from the scan sink's own functions (``scan.naming``): the recording's
UTC start date (``unknown`` when not known) and a path-safe camera id (one camera here,
``Gate 3 (north)``, needs the safe form ``Gate_3_north``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from avrl_batch.classes import SHADE
from avrl_batch.scan.naming import date_partition, safe_component
from avrl_batch.scan.timeline import TimelineConfig, events_from_windows, jpeg_thumbnail
from avrl_batch.schema import ERRORS, WINDOWS

MODEL_ID = "avrl-tiny-0123456789ab"
SCAN_ID = "scan-20260305T120000Z-1a2b"
WINDOW_S = 2.0

# hand-picked so that filters have something to separate: (camera, start or None, windows,
# [(label, first window, last window)])
RECORDINGS: list[tuple[str, datetime | None, int, list[tuple[str, int, int]]]] = [
    ("cam01", datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc), 60,
     [("fight", 5, 12), ("shoot", 30, 31)]),
    ("cam01", datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc), 60, [("chase", 10, 20)]),
    # crosses midnight: its windows after 00:00 belong to 2 March, its partition to 1 March
    ("cam01", datetime(2026, 3, 1, 23, 59, tzinfo=timezone.utc), 60,
     [("run", 5, 8), ("scatter", 50, 56)]),
    ("cam02", datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc), 60,
     [("arrest", 20, 28), ("fight", 24, 33)]),
    ("cam02", datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc), 60, []),
    ("Gate 3 (north)", datetime(2026, 3, 2, 18, 0, tzinfo=timezone.utc), 60,
     [("knockdown", 3, 6), ("fight", 40, 58)]),
    ("Gate 3 (north)", None, 40, [("shoot", 10, 12)]),
]


@dataclass
class OutputTree:
    root: Path
    sources: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cameras: list[str] = field(default_factory=list)
    n_windows: int = 0
    n_events: int = 0


def _key(source_uri: str) -> str:
    return hashlib.sha1(f"{source_uri}|v1|{MODEL_ID}".encode()).hexdigest()[:20]


def _frame(label: str, seed: int) -> np.ndarray:
    """A 120x160 RGB picture: a coloured gradient by label with a bright 'person' box."""
    rng = np.random.default_rng(seed)
    base = np.array([(37 * (i + 3)) % 256 for i in range(3)], np.float32)
    k = SHADE.names.index(label)
    base = (base + np.array([60 * k, 25 * k, 200 - 20 * k])) % 256
    ramp = np.linspace(0.4, 1.0, 160, dtype=np.float32)[None, :, None]
    img = base[None, None, :] * ramp * np.ones((120, 1, 1), np.float32)
    y, x = rng.integers(10, 60), rng.integers(10, 110)
    img[y : y + 50, x : x + 30] = (250, 240, 200)
    return img.clip(0, 255).astype(np.uint8)


def window_row(
    source_uri: str,
    camera: str | None,
    index: int,
    start_s: float,
    end_s: float,
    start: datetime | None,
    probs: np.ndarray,
    *,
    has_audio: bool = True,
    model_id: str = MODEL_ID,
    scan_id: str = SCAN_ID,
) -> dict:
    """One WINDOWS row whose label and score are the arg-max of ``probs`` (the classes)."""
    k = int(np.argmax(probs))
    return {
        "source_uri": source_uri,
        "camera": camera,
        "window_index": index,
        "start_s": start_s,
        "end_s": end_s,
        "start_time": None if start is None else start + timedelta(seconds=start_s),
        "end_time": None if start is None else start + timedelta(seconds=end_s),
        "label": SHADE.names[k],
        "score": float(probs[k]),
        "probs": probs.tolist(),
        "is_anomaly": SHADE.names[k] not in ("normal1", "normal2"),
        "has_audio": has_audio,
        "model_id": model_id,
        "scan_id": scan_id,
        "inferred": True,
        "screen_score": None,
    }


def _windows(camera: str, start: datetime | None, n: int, spans, source_uri: str, rng) -> pa.Table:
    probs = rng.dirichlet(np.ones(len(SHADE.names)) * 0.5, size=n).astype(np.float32) * 0.3
    probs[:, SHADE.names.index("normal1")] += 0.7  # calm footage: normal wins
    for label, a, b in spans:
        k = SHADE.names.index(label)
        probs[a : b + 1] *= 0.15
        probs[a : b + 1, k] += 0.85 * rng.uniform(0.8, 1.0, size=b - a + 1)
    probs /= probs.sum(axis=1, keepdims=True)
    has_audio = camera != "Gate 3 (north)"  # a camera without microphone
    rows = [
        window_row(source_uri, camera, i, i * WINDOW_S, (i + 1) * WINDOW_S, start, probs[i],
                   has_audio=has_audio)
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=WINDOWS)


def write_output_tree(root: Path, *, seed: int = 0) -> OutputTree:
    """Write the tree under ``root`` (created) and say what is in it."""
    rng = np.random.default_rng(seed)
    tree = OutputTree(root=root)
    for n, (camera, start, count, spans) in enumerate(RECORDINGS):
        stamp = start.strftime("%Y%m%dT%H%M%SZ") if start else f"nostart{n}"
        source_uri = f"s3://archive/{camera}/{camera}_{stamp}.mp4"
        date = date_partition(start)  # the scan sink's own naming
        windows = _windows(camera, start, count, spans, source_uri, rng)
        labels = windows["label"].to_pylist()

        def thumb(i: int, labels: list[str] = labels, n: int = n) -> bytes:
            return jpeg_thumbnail(_frame(labels[i], n * 1000 + i))

        # the per-class rule: the tree has two labels overlapping in one recording (cam02)
        tl = TimelineConfig(mode="class", merge_gap_s=2.0)
        events = events_from_windows(windows, tl, classes=SHADE, thumbnails=thumb)
        key = _key(source_uri)
        for table, data in (("windows", windows), ("events", events)):
            d = root / table / f"date={date}" / f"camera={safe_component(camera)}"
            d.mkdir(parents=True, exist_ok=True)
            pq.write_table(data, d / f"{key}.parquet")
        tree.sources.append(source_uri)
        tree.n_windows += windows.num_rows
        tree.n_events += events.num_rows
        if camera not in tree.cameras:
            tree.cameras.append(camera)
    # failed sources: one error row each; one name is hostile user data (escaping tests)
    failures = [
        ("s3://archive/cam02/cam02_20260301T180000Z.mp4", "decode", "InvalidDataError",
         "Invalid data found when processing input"),
        ('s3://archive/cam03/<b>odd</b> & "quoted".mp4', "probe", "NoVideoStream",
         "no video stream in <b>odd</b> & \"quoted\".mp4"),
    ]
    (root / "errors").mkdir(parents=True, exist_ok=True)
    for uri, stage, etype, msg in failures:
        row = {"source_uri": uri, "stage": stage, "error_type": etype, "message": msg,
               "scan_id": SCAN_ID}
        pq.write_table(pa.Table.from_pylist([row], schema=ERRORS),
                       root / "errors" / f"{_key(uri)}.parquet")
        tree.failed.append(uri)
    (root / "_scans").mkdir(parents=True, exist_ok=True)
    # the keys the scan's manifest has (avrl_batch/scan/pipeline.py ScanSummary)
    manifest = {
        "scan_id": SCAN_ID,
        "model_id": MODEL_ID,
        "started_at": "2026-03-05T12:00:00+00:00",
        "finished_at": "2026-03-05T12:04:10+00:00",
        "sources_listed": len(tree.sources) + len(failures),
        "sources_ok": len(tree.sources),
        "sources_failed": len(failures),
        "sources_skipped": 0,
        "windows": tree.n_windows,
        "events": tree.n_events,
        "footage_s": tree.n_windows * WINDOW_S,
        "footage_hours_per_hour": 3.2,
        "window_s": WINDOW_S,
        "stride_s": WINDOW_S,
        "class_names": list(SHADE.names),
        "normal_classes": sorted(SHADE.normal),
    }
    (root / "_scans" / f"{SCAN_ID}.json").write_text(json.dumps(manifest, indent=2))
    return tree
