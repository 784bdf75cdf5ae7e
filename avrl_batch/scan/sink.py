"""The sink of a scan: build each finished source's tables, write them whole.

Layout (DESIGN.md §4)::

    OUT/windows/date=YYYY-MM-DD/camera=CAM/<key>.parquet
    OUT/events/date=YYYY-MM-DD/camera=CAM/<key>.parquet   (written even with zero events)
    OUT/unreadable/date=YYYY-MM-DD/camera=CAM/<key>.parquet  (only with undecodable spans)
    OUT/errors/<key>.parquet                              (one row: the source failed)
    OUT/_scans/<scan_id>.json                             (written last)

``date`` is the UTC date of the recording start (path pattern or container metadata) and
``unknown`` when that is unknown; ``camera`` is the camera id made safe for a path
(``unknown`` when none). The events object is the *completion marker*: a source is done
iff its events object exists, so it is written last, with ``if_absent`` (of two racing
scans exactly one wins). The windows and unreadable objects go first, replacing any
leftover of a run that died before the marker (a source without unreadable spans removes
such a leftover, where the scan's listing found one), so a rerun never leaves two files or
rows for one key. Plain functions and classes: no Ray. Collecting a source's windows from
the predictor's batches is assemble.py's part.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from avrl_batch import storage
from avrl_batch.classes import ClassSet
from avrl_batch.errors import StorageError
from avrl_batch.redaction import redact
from avrl_batch.scan.naming import date_partition, safe_component
from avrl_batch.scan.plan import SourceError, SourceTask
from avrl_batch.schema import ERRORS, EVENTS, UNREADABLE, WINDOWS

PARQUET_SUFFIX = ".parquet"
MARKERS = "_compacted"  # scan/compact.py: OUT/_compacted/date=D/camera=C/<key>.parquet


# ---------------------------------------------------------------------------------------------
# names


def partition(task: SourceTask) -> tuple[str, str]:
    return (
        f"date={date_partition(task.start_time)}",
        f"camera={safe_component(task.camera)}",
    )


def windows_uri(out: str, task: SourceTask) -> str:
    return storage.join(out, "windows", *partition(task), task.key + PARQUET_SUFFIX)


def events_uri(out: str, task: SourceTask) -> str:
    return storage.join(out, "events", *partition(task), task.key + PARQUET_SUFFIX)


def unreadable_uri(out: str, task: SourceTask) -> str:
    return storage.join(out, "unreadable", *partition(task), task.key + PARQUET_SUFFIX)


def error_uri(out: str, key: str) -> str:
    return storage.join(out, "errors", key + PARQUET_SUFFIX)


def manifest_uri(out: str, scan_id: str) -> str:
    return storage.join(out, "_scans", f"{scan_id}.json")


def settings_uri(out: str, model_id: str) -> str:
    """The record of the window settings that ``model_id``'s results under ``out`` were made
    with (JSON; not ``.json``, so that it is never read as a scan manifest)."""
    return storage.join(out, "_scans", f"{model_id}.settings")


def read_settings(
    out: str, model_id: str, *, endpoint_url: str | None = None
) -> dict[str, Any] | None:
    """The recorded window settings of ``model_id``'s results under ``out``: its settings
    record, else the newest manifest of a scan of that model that wrote outputs; None when
    there are none."""
    uri = settings_uri(out, model_id)
    if storage.exists(uri, endpoint_url=endpoint_url):
        return json.loads(storage.read_bytes(uri, endpoint_url=endpoint_url))
    scans = storage.list_files(
        storage.join(out, "_scans"), suffix=".json", endpoint_url=endpoint_url
    )
    for manifest in sorted(scans, reverse=True):  # scan ids sort by time
        try:
            m = json.loads(storage.read_bytes(manifest, endpoint_url=endpoint_url))
        except ValueError:
            continue
        if m.get("model_id") == model_id and not m.get("dry_run") and m.get("window_s"):
            return {
                "model_id": model_id,
                "window_s": m["window_s"],
                "stride_s": m.get("stride_s"),
                "camera_pattern": (m.get("config") or {}).get("camera_pattern"),
                "timezone": m.get("timezone", "UTC"),
            }
    return None


def write_settings(
    out: str, settings: dict[str, Any], *, endpoint_url: str | None = None
) -> None:
    data = json.dumps(settings, indent=2, sort_keys=True).encode()
    storage.write_atomic(
        settings_uri(out, settings["model_id"]), data, endpoint_url=endpoint_url
    )


def check_writable(out: str, *, endpoint_url: str | None = None) -> None:
    """StorageError (one line) unless ``out`` takes a write: one hidden object under
    ``_scans/`` written and deleted. Without it a read-only bucket, a mistyped prefix the
    credentials cannot write, or a path under a regular file is found only after every
    source was decoded and inferred, when the first output is written."""
    import os
    import uuid

    probe = storage.join(out, "_scans", f".avrl-write-check-{uuid.uuid4().hex}")
    p = storage.parse_uri(probe)
    created = []  # local folders this check makes, deepest first: removed again afterwards
    folder = os.path.dirname(p.path) if p.scheme == "file" else ""
    while folder and not os.path.exists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    storage.write_atomic(probe, b"", endpoint_url=endpoint_url)
    try:
        storage.delete(probe, endpoint_url=endpoint_url)
    except StorageError:
        return  # written but not deletable: a hidden name, which every listing skips
    for folder in created:  # a scan that fails next (no sources) leaves no empty OUT behind
        try:
            os.rmdir(folder)
        except OSError:
            break


def finished_objects(
    out: str, *, endpoint_url: str | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """({key: events object URI or compaction marker URI}, {key: error object URI}) under
    ``out``: one listing of each prefix instead of one existence check per source. A
    compacted source (``scan/compact.py``) is finished by its marker, named in place of a
    per-source events object that may still be there."""
    from avrl_batch.scan.compact import listed_markers

    done = _objects(out, "events", endpoint_url)
    done.update(listed_markers(out, endpoint_url=endpoint_url))
    return done, _objects(out, "errors", endpoint_url)


def unreadable_objects(out: str, *, endpoint_url: str | None = None) -> frozenset[str]:
    """The URIs of every unreadable-spans object under ``out`` (one listing): the leftovers a
    source's write must remove when it has no spans itself (write_source)."""
    return frozenset(_objects(out, "unreadable", endpoint_url).values())


def _objects(out: str, table: str, endpoint_url: str | None) -> dict[str, str]:
    """{key: object URI} of one table's per-source objects under ``out`` (one recursive
    listing; compacted files, which hold many sources, left out)."""
    from avrl_batch.scan.compact import compacted_generation

    uris = storage.list_files(
        storage.join(out, table), suffix=PARQUET_SUFFIX, endpoint_url=endpoint_url
    )
    names = ((u.rsplit("/", 1)[-1], u) for u in uris)
    return {n[: -len(PARQUET_SUFFIX)]: u for n, u in names if compacted_generation(n) is None}


def finished_keys(out: str, *, endpoint_url: str | None = None) -> tuple[set[str], set[str]]:
    """(keys with an events object, keys with an error object) under ``out``."""
    done, failed = finished_objects(out, endpoint_url=endpoint_url)
    return set(done), set(failed)


# ---------------------------------------------------------------------------------------------
# tables


# Parquet key-value metadata on every windows, events and error object: which source, which
# version of it and which model the object is for (JSON). A changed file gets a new key; this
# is how a later scan recognises the old version's objects, including an events object with
# no rows, and removes them (find_superseded) instead of leaving both versions queryable.
SOURCE_META = b"avrl.source"


def with_source_meta(
    table: pa.Table, uri: str, version: str, model_id: str, scan_id: str | None = None
) -> pa.Table:
    record = {"source_uri": uri, "version": version, "model_id": model_id}
    if scan_id is not None:  # the scan that wrote the object (write_source)
        record["scan_id"] = scan_id
    meta = dict(table.schema.metadata or {})
    meta[SOURCE_META] = json.dumps(record, sort_keys=True).encode()
    return table.replace_schema_metadata(meta)


def source_meta(data: bytes) -> dict[str, str] | None:
    """The SOURCE_META of a Parquet object's bytes; None for objects written without it."""
    raw = (pq.read_schema(io.BytesIO(data)).metadata or {}).get(SOURCE_META)
    return json.loads(raw) if raw else None


# Below this many rows a table is written uncompressed: zstd costs ~0.5 ms of set-up per
# table (a fixed cost per column chunk) and saves nothing on a few rows (4 windows: 4.7 KB
# either way; 128: 13 KB vs 17 KB), and a scan's driver writes two such tables per source.
# Compaction rewrites small objects into zstd files.
COMPRESS_FROM_ROWS = 64


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf,
                   compression="zstd" if table.num_rows >= COMPRESS_FROM_ROWS else "none")
    return buf.getvalue()


def _times(start: datetime | None, seconds: np.ndarray) -> pa.Array:
    if start is None:
        return pa.nulls(len(seconds), pa.timestamp("us", tz="UTC"))
    base_us = int(round(start.astimezone(timezone.utc).timestamp() * 1e6))
    us = base_us + np.round(seconds * 1e6).astype(np.int64)
    return pa.array(us, pa.timestamp("us", tz="UTC"))


def windows_table(
    task: SourceTask,
    window_index: np.ndarray,
    start_s: np.ndarray,
    end_s: np.ndarray,
    has_audio: np.ndarray,
    probs: np.ndarray,
    *,
    classes: ClassSet,
    model_id: str,
    scan_id: str,
    inferred: np.ndarray | None = None,
    screen_score: np.ndarray | None = None,
) -> pa.Table:
    """One source's windows (WINDOWS schema), ordered by window index. ``probs`` is (N, C).

    ``inferred`` (N,) bool: False marks a window a cascade's screen passed over (labelled
    with the first normal class, score 0); None: all inferred. ``screen_score``: (N,) or None.
    """
    order = np.argsort(window_index, kind="stable")
    wi, s, e = window_index[order], start_s[order], end_s[order]
    p = probs[order].astype(np.float32)  # (N, C)
    n, c = p.shape if p.ndim == 2 else (0, len(classes))
    seen = np.ones(n, bool) if inferred is None else np.asarray(inferred, bool)[order]
    best = p.argmax(axis=1) if n else np.zeros(0, np.int64)
    calm = next(i for i, name in enumerate(classes.names) if name in classes.normal)
    best = np.where(seen, best, calm)
    labels = [classes.names[i] for i in best]
    scores = np.where(seen, p[np.arange(n), best], 0.0) if n else np.zeros(0)
    return pa.Table.from_arrays(
        [
            pa.array([task.uri] * n, pa.string()),
            pa.array([task.camera] * n, pa.string()),
            pa.array(wi, pa.int32()),
            pa.array(s, pa.float64()),
            pa.array(e, pa.float64()),
            _times(task.start_time, s),
            _times(task.start_time, e),
            pa.array(labels, pa.string()),
            pa.array(scores, pa.float32()),
            pa.ListArray.from_arrays(
                pa.array(np.arange(0, n * c + 1, c, dtype=np.int32)),
                pa.array(p.reshape(-1), pa.float32()),  # (N * C,) row-major: class order
            ),
            pa.array([classes.is_anomaly(lb) for lb in labels], pa.bool_()),
            pa.array(has_audio[order].astype(bool), pa.bool_()),
            pa.array([model_id] * n, pa.string()),
            pa.array([scan_id] * n, pa.string()),
            pa.array(seen, pa.bool_()),
            pa.nulls(n, pa.float32())
            if screen_score is None
            else pa.array(np.asarray(screen_score, np.float32)[order], pa.float32()),
        ],
        schema=WINDOWS,
    )


def unreadable_table(
    task: SourceTask,
    spans: list[tuple[float, float, str, str]],
    *,
    model_id: str,
    scan_id: str,
) -> pa.Table:
    """One source's unreadable spans (UNREADABLE schema): (start_s, end_s, reason, message)
    each, in time order."""
    spans = sorted(spans)
    n = len(spans)
    s = np.array([x[0] for x in spans], np.float64)
    e = np.array([x[1] for x in spans], np.float64)
    return pa.Table.from_arrays(
        [
            pa.array([task.uri] * n, pa.string()),
            pa.array([task.camera] * n, pa.string()),
            pa.array(s, pa.float64()),
            pa.array(e, pa.float64()),
            _times(task.start_time, s),
            _times(task.start_time, e),
            pa.array([x[2] for x in spans], pa.string()),
            pa.array([redact(x[3]) for x in spans], pa.string()),
            pa.array([model_id] * n, pa.string()),
            pa.array([scan_id] * n, pa.string()),
        ],
        schema=UNREADABLE,
    )


def error_table(err: SourceError, scan_id: str) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "source_uri": err.uri,
                "stage": err.stage,
                "error_type": err.error_type,
                "message": redact(err.message),  # whoever built the error, no secret kept
                "scan_id": scan_id,
            }
        ],
        schema=ERRORS,
    )


# ---------------------------------------------------------------------------------------------
# writers


def write_source(
    out: str,
    task: SourceTask,
    windows: pa.Table,
    events: pa.Table,
    *,
    model_id: str = "",
    endpoint_url: str | None = None,
    replace: bool = False,
    unreadable: pa.Table | None = None,
    spans_listed: frozenset[str] | None = None,
) -> bool:
    """Windows first (written if absent; else replacing a dead run's leftover), then the
    unreadable spans (an object only when there are any; else a leftover is removed: one
    listed in ``spans_listed``, the unreadable objects the scan's listing found, or, when
    that is None, whatever is there), then events, the completion marker, only if absent
    (``replace``: each object replaced whole, for ``--rescan``). Returns False when another
    scan had already completed this key.
    Every object carries SOURCE_META (the task's URI and version, ``model_id`` and the
    writing scan's id).

    Of two scans racing on a key, the loser may have replaced the winner's windows (and
    spans) after the winner checked: it then reads the winner's scan id from the events
    object and writes its windows and spans again under that id (the same rows: one version,
    one model), so that the key's windows, spans and events name one scan, which is what
    queries pair them by."""
    if windows.schema != WINDOWS or events.schema != EVENTS:
        raise ValueError("windows/events tables must have the WINDOWS/EVENTS schemas")
    if unreadable is not None and unreadable.schema != UNREADABLE:
        raise ValueError("the unreadable table must have the UNREADABLE schema")
    marker = events_uri(out, task)
    scan_id = next((t["scan_id"][0].as_py() for t in (windows, events) if t.num_rows), None)
    windows = with_source_meta(windows, task.uri, task.version, model_id, scan_id)
    events = with_source_meta(events, task.uri, task.version, model_id, scan_id)
    data = parquet_bytes(windows)
    # the windows written only if absent: one request where nothing is there (the usual
    # case); else a dead run's leftover is replaced, a finished key's objects left alone
    if replace or not storage.write_atomic(windows_uri(out, task), data, if_absent=True,
                                           endpoint_url=endpoint_url):
        if not replace and storage.exists(marker, endpoint_url=endpoint_url):
            return False  # a concurrent scan finished it: leave its objects alone
        storage.write_atomic(windows_uri(out, task), data, endpoint_url=endpoint_url)
    spans_uri = unreadable_uri(out, task)
    if unreadable is not None and unreadable.num_rows:
        unreadable = with_source_meta(unreadable, task.uri, task.version, model_id, scan_id)
        storage.write_atomic(spans_uri, parquet_bytes(unreadable), endpoint_url=endpoint_url)
    elif spans_listed is None or spans_uri in spans_listed:
        storage.delete(spans_uri, endpoint_url=endpoint_url)
    won = storage.write_atomic(
        marker, parquet_bytes(events), if_absent=not replace, endpoint_url=endpoint_url
    )
    if not won:
        _follow_winner(out, task, windows, unreadable, scan_id, endpoint_url)
    return won


def _follow_winner(
    out: str, task: SourceTask, windows: pa.Table, unreadable: pa.Table | None,
    scan_id: str | None, endpoint_url: str | None,
) -> None:
    """After losing the race for ``task``'s events object: this writer's windows and spans,
    which may have replaced the winner's, written again under the winner's scan id."""
    meta = source_meta(storage.read_bytes(events_uri(out, task), endpoint_url=endpoint_url))
    winner = (meta or {}).get("scan_id")
    if winner is None or scan_id is None or winner == scan_id:
        return
    for uri, table in ((windows_uri(out, task), windows), (unreadable_uri(out, task), unreadable)):
        if table is None or not table.num_rows:
            continue
        table = table.set_column(table.schema.get_field_index("scan_id"), "scan_id",
                                 pa.array([winner] * table.num_rows, pa.string()))
        table = with_source_meta(table, task.uri, task.version, str(meta.get("model_id")),
                                 winner)
        storage.write_atomic(uri, parquet_bytes(table), endpoint_url=endpoint_url)


def write_error(
    out: str,
    err: SourceError,
    scan_id: str,
    *,
    version: str = "",
    model_id: str = "",
    endpoint_url: str | None = None,
    replace: bool = False,
) -> bool:
    table = with_source_meta(error_table(err, scan_id), err.uri, version, model_id)
    return storage.write_atomic(
        error_uri(out, err.key), parquet_bytes(table), if_absent=not replace,
        endpoint_url=endpoint_url,
    )


def previous_objects(
    out: str, key: str, done: dict[str, str], failed: dict[str, str]
) -> list[str]:
    """The objects an earlier scan wrote for ``key`` (windows, events — the marker last —
    and/or its error object): what ``--rescan`` removes once the key's new outcome is written,
    less the names that outcome has just replaced."""
    return list(_superseded_objects(out, done.get(key), failed.get(key)))


# ---------------------------------------------------------------------------------------------
# superseded versions


@dataclass(frozen=True)
class Superseded:
    """The objects of an older version of a listed source (same URI and model, other version):
    removed once the current version's outputs (or its error row) exist."""

    source_uri: str
    version: str  # the old version
    key: str  # the old version's key
    current_key: str
    uris: tuple[str, ...]  # windows, events and/or error objects, in deletion order


def _legacy_stem(key: str) -> str:
    return key.rsplit("-", 1)[0]  # legacy_source_key: "<file stem>-<digest>"


def adopt_legacy(
    keyed: list[tuple[Any, str]], done: dict[str, str], failed: dict[str, str], model_id: str
) -> None:
    """File the finished objects of a listed source under a legacy key (written before keys
    carried a source id, ``naming.legacy_source_key``) under its current key, in place: the
    source counts as finished and ``--rescan`` replaces those objects. A hash per listed
    source, no read."""
    from avrl_batch.scan.naming import legacy_source_key

    for src, key in keyed:
        old = legacy_source_key(src.uri, src.version, model_id)
        for found in (done, failed):
            if key not in found and old in found:
                found[key] = found.pop(old)


def find_superseded(
    out: str,
    keyed: list[tuple[Any, str]],
    done: dict[str, str],
    failed: dict[str, str],
    model_id: str,
    *,
    endpoint_url: str | None = None,
) -> list[Superseded]:
    """Older versions' objects of the listed sources ``keyed`` ((storage.Source, key) pairs).

    The listing decides: a finished key that is not current and has the source id of a
    listed source's key (``naming.key_source_id``: same URI, same model) is an older version
    of it. Only those candidates are read (one small object each, and only for files that
    changed: a rerun over unchanged files reads nothing), to take the old version from its
    SOURCE_META and to confirm it names the same URI and model. Keys without a source id
    (``naming.legacy_source_key``) are candidates when their file stem matches. Objects of
    other files, of other models and objects without SOURCE_META are never touched.
    """
    from avrl_batch.scan.naming import key_source_id

    current = {key for _, key in keyed}
    by_source: dict[str, list[str]] = {}
    by_stem: dict[str, list[str]] = {}  # legacy keys
    for key in sorted(set(done) | set(failed)):
        if key in current:
            continue
        sid = key_source_id(key)
        if sid is not None:
            by_source.setdefault(sid, []).append(key)
        else:
            by_stem.setdefault(_legacy_stem(key), []).append(key)
    found = []
    for src, key in keyed:
        sid = key_source_id(key)
        olds = [*by_source.get(sid or "", ()), *by_stem.get(key.rsplit("-", 2)[0], ())]
        for old in olds:
            marker = done.get(old) or failed[old]
            meta = source_meta(storage.read_bytes(marker, endpoint_url=endpoint_url))
            if not meta or meta.get("source_uri") != src.uri or meta.get("model_id") != model_id:
                continue
            if meta.get("version") == src.version:
                continue  # same version under another key: not ours to judge
            uris = _superseded_objects(out, done.get(old), failed.get(old))
            if uris:
                found.append(Superseded(src.uri, str(meta.get("version")), old, key, uris))
    return found


def _superseded_objects(
    out: str, events_object: str | None, error_object: str | None
) -> tuple[str, ...]:
    """What to delete of an old version, every name rebuilt through storage.join from the
    listed objects' paths below OUT: the windows and unreadable objects beside its events
    object (the unreadable one may not exist: deletes are idempotent), then the events
    marker (last: until it is gone a rerun finds the rest), and its error object. For a
    compacted source (``events_object`` is its compaction marker) the per-source names of
    its partition, then the marker: its rows in the compacted files are hidden from then on.
    A listed name that join refuses (an S3 key with a ``..`` or ``%2e%2e`` segment) is no
    object this scan wrote: that version is left alone (empty result)."""
    uris: list[str] = []
    try:
        if events_object is not None:
            markers = storage.join(out, MARKERS)
            compacted = events_object.startswith(markers.rstrip("/") + "/")
            rel = storage.relative_parts(markers if compacted else storage.join(out, "events"),
                                         events_object)
            uris += [
                storage.join(out, "windows", *rel),
                storage.join(out, "unreadable", *rel),
                storage.join(out, "events", *rel),
                *([storage.join(out, MARKERS, *rel)] if compacted else []),
            ]
        if error_object is not None:
            rel = storage.relative_parts(storage.join(out, "errors"), error_object)
            uris.append(storage.join(out, "errors", *rel))
    except StorageError:
        return ()
    return tuple(uris)


def remove_superseded(
    stale: list[Superseded],
    done: set[str] | dict[str, str],
    failed: set[str] | dict[str, str],
    *,
    endpoint_url: str | None = None,
) -> list[Superseded]:
    """Delete the objects of each superseded version whose current key is finished (in ``done``
    or ``failed``); returns those removed. The others wait for a scan that finishes them, so
    a source always has at least one version's outputs."""
    removed = []
    for s in stale:
        if s.current_key not in done and s.current_key not in failed:
            continue
        for uri in s.uris:
            storage.delete(uri, endpoint_url=endpoint_url)
        removed.append(s)
    return removed


def write_manifest(
    out: str, scan_id: str, manifest: dict[str, Any], *, endpoint_url: str | None = None
) -> str:
    uri = manifest_uri(out, scan_id)
    # the whole text redacted: error messages, endpoint, anything a config or a message quoted
    # (masks keep JSON's quotes, so the manifest stays JSON)
    data = redact(json.dumps(manifest, indent=2, sort_keys=True, default=str)).encode()
    storage.write_atomic(uri, data, if_absent=True, endpoint_url=endpoint_url)
    return uri
