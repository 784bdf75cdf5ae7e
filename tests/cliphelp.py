"""A scan output with real recordings behind its events, for the clip and review tests: the
events objects are written the way the sink writes them (with their source metadata), so
no Ray is needed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
from scanhelp import recording

from avrl_batch import storage
from avrl_batch.classes import SHADE
from avrl_batch.scan.naming import source_key
from avrl_batch.scan.plan import SourceTask
from avrl_batch.scan.sink import windows_table, write_source
from avrl_batch.schema import EVENTS

MARGIN = 2.0
# (recording, seconds, audio, events as (start_s, end_s))
RECORDINGS = {
    "cam01/cam01_20260301T080000Z.mp4": (30.0, True, [(1.0, 6.0), (20.0, 26.0)]),
    "cam02/cam02_20260301T090000Z.mp4": (16.0, False, [(8.0, 12.0)]),
}


def events_table(uri: str, spans: list[tuple[float, float]], start: datetime) -> pa.Table:
    n = len(spans)
    return pa.table({
        "event_id": [f"{Path(uri).stem[:5]}ev{i}" for i in range(n)],
        "source_uri": [uri] * n,
        "camera": [Path(uri).stem[:5]] * n,
        "label": ["shoot"] * n,
        "start_s": [s for s, _ in spans],
        "end_s": [e for _, e in spans],
        "start_time": [start + timedelta(seconds=s) for s, _ in spans],
        "end_time": [start + timedelta(seconds=e) for _, e in spans],
        "peak_score": [0.9] * n,
        "mean_score": [0.8] * n,
        "n_windows": [3] * n,
        "thumbnail": [None] * n,
        "model_id": ["m"] * n,
        "scan_id": ["s"] * n,
    }, schema=EVENTS)


def make_clip_out(rec: Path, out: str, endpoint_url: str | None = None,
                  bucket_root: str | None = None) -> dict[str, tuple[float, float, bool]]:
    """Recordings under ``rec`` (uploaded under ``bucket_root`` when given) and an OUT with
    each recording's windows (2-s, SHADE probabilities) and events, written by the sink;
    returns {event_id: (start_s, end_s, has_audio)}."""
    expected = {}
    for rel, (seconds, audio, spans) in RECORDINGS.items():
        path = recording(rec / rel, seconds, audio=audio, seed=len(rel))
        uri = str(path)
        if bucket_root is not None:
            uri = storage.join(bucket_root, *rel.split("/"))
            storage.write_atomic(uri, path.read_bytes(), endpoint_url=endpoint_url)
        version = storage.list_sources(uri, endpoint_url=endpoint_url)[0].version
        cam = rel.split("/")[0]
        start = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
        task = SourceTask(uri, version, path.stat().st_size, source_key(uri, version, "m"),
                          cam, start, seconds, audio, ())
        n = int(seconds // 2)
        idx = np.arange(n)
        probs = np.full((n, len(SHADE.names)), 0.1 / (len(SHADE.names) - 1), np.float32)
        probs[:, SHADE.names.index("normal1")] = 0.9
        windows = windows_table(task, idx, 2.0 * idx, 2.0 * idx + 2, np.full(n, audio), probs,
                                classes=SHADE, model_id="m", scan_id="s")
        write_source(out, task, windows, events_table(uri, spans, start), model_id="m",
                     endpoint_url=endpoint_url)
        for i, (s, e) in enumerate(spans):
            expected[f"{cam}ev{i}"] = (s, e, audio)
    return expected
