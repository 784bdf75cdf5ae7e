"""A scan output with real recordings behind its events, for the clip and review tests: the
events objects are written the way the sink writes them (with their source metadata), so
no Ray is needed."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from scanhelp import recording

from avrl_batch import storage
from avrl_batch.scan.sink import parquet_bytes, with_source_meta
from avrl_batch.schema import EVENTS

MARGIN = 2.0
# (recording, seconds, audio, events as (start_s, end_s))
RECORDINGS = {
    "cam01/cam01_20260301T080000Z.mp4": (30.0, True, [(1.0, 6.0), (20.0, 26.0)]),
    "cam02/cam02_20260301T090000Z.mp4": (16.0, False, [(8.0, 12.0)]),
}


def events_table(uri: str, spans: list[tuple[float, float]]) -> pa.Table:
    n = len(spans)
    return pa.table({
        "event_id": [f"{Path(uri).stem[:5]}ev{i}" for i in range(n)],
        "source_uri": [uri] * n,
        "camera": [Path(uri).stem[:5]] * n,
        "label": ["shoot"] * n,
        "start_s": [s for s, _ in spans],
        "end_s": [e for _, e in spans],
        "start_time": [None] * n,
        "end_time": [None] * n,
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
    one events object per recording; returns {event_id: (start_s, end_s, has_audio)}."""
    expected = {}
    for rel, (seconds, audio, spans) in RECORDINGS.items():
        path = recording(rec / rel, seconds, audio=audio, seed=len(rel))
        uri = str(path)
        if bucket_root is not None:
            uri = storage.join(bucket_root, *rel.split("/"))
            storage.write_atomic(uri, path.read_bytes(), endpoint_url=endpoint_url)
        version = storage.list_sources(uri, endpoint_url=endpoint_url)[0].version
        table = with_source_meta(events_table(uri, spans), uri, version, "m")
        cam = rel.split("/")[0]
        events = storage.join(out, "events", "date=2026-03-01", f"camera={cam}",
                              f"{Path(rel).stem}-k.parquet")
        storage.write_atomic(events, parquet_bytes(table), endpoint_url=endpoint_url)
        for eid, (s, e) in zip(table["event_id"].to_pylist(), spans, strict=True):
            expected[eid] = (s, e, audio)
    return expected
