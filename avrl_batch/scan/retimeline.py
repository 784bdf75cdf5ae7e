"""Re-apply timeline settings to a scan output's stored windows, without decoding.

The timeline settings (``timeline.TimelineConfig``: rule, enter, exit, merge gap, minimum
event, smoothing) act only on window probabilities, which every windows object stores. So a
change of them needs no decoding and no model: for each finished source (an events object,
the completion marker) its windows object is read, events are made again with
``timeline.events_from_windows``, and the events object is replaced whole
(``storage.write_atomic``: temp file + rename, one PUT on S3), keeping its ``avrl.source``
metadata. A source is never without events: a query sees the old or the new object.

Thumbnails: the scan made JPEGs only for the windows that could become an event's peak under
its own thresholds, and keeps only the events' ones. A new event takes the thumbnail of the
stored event whose span holds its peak window, else none (a rescan makes new ones).
Plain functions: no Ray, no media.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from avrl_batch import storage
from avrl_batch.classes import ClassSet
from avrl_batch.errors import DataError
from avrl_batch.scan import sink
from avrl_batch.scan.naming import scan_id_now
from avrl_batch.scan.plan import error_of
from avrl_batch.scan.timeline import TimelineConfig, events_from_windows


@dataclass
class RetimelineSummary:
    """What ``retimeline`` did (also the body of its manifest, ``kind`` "retimeline")."""

    scan_id: str
    out: str
    timeline: dict[str, Any]
    model_id: str | None = None  # only this model's sources (None: every model's)
    sources: int = 0  # events objects rewritten
    events: int = 0
    events_by_label: dict[str, int] = field(default_factory=dict)
    thumbnails_missing: int = 0  # new events with no stored thumbnail to take
    errors: list[dict[str, str]] = field(default_factory=list)  # uri, error_type, message
    wall_s: float = 0.0
    manifest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "retimeline", **asdict(self)}


def retimeline(
    out: str,
    timeline: TimelineConfig,
    *,
    model_id: str | None = None,
    endpoint_url: str | None = None,
) -> RetimelineSummary:
    """Make every finished source's events under ``out`` again with ``timeline`` (only
    ``model_id``'s when given); a source that cannot be redone keeps its events and is
    listed in ``errors``. Writes a manifest ``_scans/<scan_id>.json`` last."""
    t0 = time.monotonic()
    started = datetime.now(timezone.utc)
    summary = RetimelineSummary(scan_id_now(started), out, asdict(timeline), model_id)
    from avrl_batch.scan.compact import check_not_compacting

    check_not_compacting(out, "avrl retimeline", endpoint_url=endpoint_url)
    done, _ = sink.finished_objects(out, endpoint_url=endpoint_url)
    classes = _model_classes(out, endpoint_url)
    by_label: Counter[str] = Counter()
    for _, events_uri in sorted(done.items()):
        try:
            events = _retimeline_source(out, events_uri, timeline, model_id, classes,
                                        endpoint_url)
        except Exception as exc:  # noqa: BLE001 - one source keeps its events, the rest go on
            kind, msg = error_of(exc)
            summary.errors.append({"uri": events_uri, "error_type": kind, "message": msg})
            continue
        if events is None:
            continue
        summary.sources += 1
        summary.events += events.num_rows
        summary.thumbnails_missing += events["thumbnail"].null_count
        by_label.update(events["label"].to_pylist())
    summary.events_by_label = dict(sorted(by_label.items()))
    summary.wall_s = round(time.monotonic() - t0, 3)
    manifest = summary.to_dict() | {
        "started_at": started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }
    summary.manifest = sink.write_manifest(
        out, summary.scan_id, manifest, endpoint_url=endpoint_url
    )
    return summary


def _model_classes(out: str, endpoint_url: str | None) -> dict[str, ClassSet]:
    """model id -> its classes, from the scan manifests under ``out`` (the order of the
    stored ``probs``)."""
    from avrl_batch.query import OutputTree, model_classes

    return model_classes(OutputTree.open(out, endpoint_url=endpoint_url).manifests())


def _retimeline_source(
    out: str,
    events_uri: str,
    timeline: TimelineConfig,
    model_id: str | None,
    classes: dict[str, ClassSet],
    endpoint_url: str | None,
) -> pa.Table | None:
    """The new events of one source, written in place of its old ones; None when the source
    is another model's."""
    old_bytes = storage.read_bytes(events_uri, endpoint_url=endpoint_url)
    meta = sink.source_meta(old_bytes)
    if model_id is not None and (meta or {}).get("model_id") != model_id:
        return None
    source_model = str((meta or {}).get("model_id"))
    if source_model not in classes:
        raise DataError(
            f"{events_uri}: no scan manifest of model {source_model} says its classes"
        )
    markers = storage.join(out, sink.MARKERS)
    if events_uri.startswith(markers + "/"):  # a compacted source
        return _retimeline_compacted(out, events_uri, meta or {}, timeline,
                                     classes[source_model], endpoint_url)
    old = pq.read_table(io.BytesIO(old_bytes))
    windows_uri = storage.join(out, "windows") + events_uri[len(storage.join(out, "events")) :]
    windows = pq.read_table(io.BytesIO(storage.read_bytes(windows_uri, endpoint_url=endpoint_url)))
    events = events_from_windows(
        windows, timeline, classes=classes[source_model],
        thumbnails=_stored_thumbnails(old, windows),
        version=(meta or {}).get("version", ""),
    )
    if meta:
        events = sink.with_source_meta(
            events, meta["source_uri"], meta["version"], meta["model_id"]
        )
    storage.write_atomic(events_uri, sink.parquet_bytes(events), endpoint_url=endpoint_url)
    return events


def _retimeline_compacted(
    out: str,
    marker: str,
    meta: dict[str, str],
    timeline: TimelineConfig,
    classes: ClassSet,
    endpoint_url: str | None,
) -> pa.Table:
    """A compacted source made per-source again with its new events: its windows and
    unreadable rows and the new events written as its per-source objects (events last), then
    its marker deleted, so a query shows the old events until the new ones are complete.
    The next ``avrl compact`` takes it back."""
    from avrl_batch.scan.compact import key_rows

    rows = key_rows(out, marker, endpoint_url=endpoint_url)
    events = events_from_windows(
        rows["windows"], timeline, classes=classes,
        thumbnails=_stored_thumbnails(rows["events"], rows["windows"]),
        version=meta.get("version", ""),
    )
    rel = storage.relative_parts(storage.join(out, sink.MARKERS), marker)
    tables = [("windows", rows["windows"]), ("unreadable", rows["unreadable"]),
              ("events", events)]
    for table, data in tables:
        if table == "unreadable" and not data.num_rows:
            continue
        if meta:
            data = sink.with_source_meta(data, meta["source_uri"], meta["version"],
                                         meta["model_id"])
        storage.write_atomic(storage.join(out, table, *rel), sink.parquet_bytes(data),
                             endpoint_url=endpoint_url)
    storage.delete(marker, endpoint_url=endpoint_url)
    return events


def _stored_thumbnails(old_events: pa.Table, windows: pa.Table) -> Any:
    """window_index -> the JPEG of the stored event whose span holds that window's start."""
    spans = [
        (e["start_s"], e["end_s"], e["thumbnail"])
        for e in old_events.select(["start_s", "end_s", "thumbnail"]).to_pylist()
        if e["thumbnail"]
    ]
    start_of = dict(
        zip(windows["window_index"].to_pylist(), windows["start_s"].to_pylist(), strict=True)
    )

    def thumbnail(window_index: int) -> bytes | None:
        t = start_of.get(window_index)
        if t is None:
            return None
        return next((jpeg for s, e, jpeg in spans if s <= t < e), None)

    return thumbnail
