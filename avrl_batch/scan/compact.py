"""``avrl compact``: each (table, date, camera) partition's per-source objects rewritten into a
few large Parquet files, safely next to a running scan (docs/design.md §6, "Compaction").

What compaction adds to the layout::

    OUT/<table>/date=D/camera=C/compact-<generation>-<nnn>.parquet   rows of many sources
    OUT/_compacted/date=D/camera=C/<key>.parquet                     one marker per source

The rules every reader and writer follows:

- A compacted file's Parquet metadata ``avrl.keys`` lists the sources whose rows it holds
  (key, source_uri, version, model_id, scan_id). Of a partition's compacted files only the
  newest *generation* counts (the name's generation id sorts by time); a generation holds
  every marked source of the one before it, so an older generation's files are leftovers of
  a compaction that died before removing them.
- A source is compacted iff its marker exists. Its rows are then those of the newest
  generation, and per-source objects with its key are leftovers (ignored, removed by the next
  compaction). A source listed in a compacted file without a marker is hidden there: a
  compaction died before writing the marker (its per-source objects are still in place), or
  a scan removed the source (an older version replaced, a ``--rescan``), which is done by
  deleting the marker, one small object, instead of rewriting a large file.
- The scan's bookkeeping lists markers as it lists events objects: a marked key is finished
  (``sink.finished_objects``), so a compacted source is never scanned again, and a file's old
  version that is compacted is removed by deleting its marker.

Order of one partition's compaction: write the new generation (windows, unreadable, events),
then the markers of the sources it took from per-source objects, then delete those objects
(events last), then the markers of the sources it dropped (older versions of a source whose
newer version is in the partition), then the older generations. A compaction killed at any
point leaves a tree that reads the same; the next one finishes the job. One compaction at a
time per OUT (``_scans/compacting.lock``, written if absent), and none beside a ``--rescan``
(refused while a settings record says ``rescanning``; ``avrl scan --rescan`` and
``avrl retimeline`` refuse while the lock exists).
"""

from __future__ import annotations

import io
import json
import re
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from avrl_batch import storage
from avrl_batch.errors import ConfigError, StorageError
from avrl_batch.scan.naming import key_source_id
from avrl_batch.scan.sink import MARKERS, parquet_bytes, source_meta, with_source_meta
from avrl_batch.schema import EVENTS, TABLES

KEYS_META = b"avrl.keys"
LOCK_NAME = "compacting.lock"
# the per-source tables a compaction rewrites, in write order (events, the completion
# marker of per-source objects, last); errors/ stays one small object per failed source
COMPACTED_TABLES = ("windows", "unreadable", "events")
DEFAULT_TARGET_MB = 128
ROW_GROUP_ROWS = 65_536
_NAME = re.compile(r"^compact-(\d{8}T\d{6}Z-[0-9a-f]{6})-(\d{3})\.parquet$")
_SEP = "\x1f"  # between the parts of a row's source identity (never in a URI or an id)


def compacted_generation(name: str) -> str | None:
    """The generation id of a compacted file's name (``compact-<gen>-<nnn>.parquet``), None
    for any other name: a per-source key (``<stem>-<16 hex>-<20 hex>``) never matches."""
    m = _NAME.match(name)
    return m.group(1) if m else None


def compacted_name(generation: str, index: int) -> str:
    return f"compact-{generation}-{index:03d}.parquet"


def lock_uri(out: str) -> str:
    return storage.join(out, "_scans", LOCK_NAME)


def marker_uri(out: str, partition: tuple[str, ...], key: str) -> str:
    return storage.join(out, MARKERS, *partition, key + ".parquet")


def identity(source_uri: str, model_id: str, scan_id: str) -> str:
    """One row's source identity as a compacted file's readers match it: within a
    (table, partition) a scan writes one version of a source, so (URI, model, scan) names
    the rows of one key."""
    return _SEP.join((source_uri, model_id, scan_id))


def identity_expr() -> Any:
    """``identity`` of every row, as a pyarrow dataset expression."""
    import pyarrow.dataset as pads

    f = pads.field
    return pc.binary_join_element_wise(f("source_uri"), f("model_id"), f("scan_id"), _SEP)


def read_keys(uri: str, *, endpoint_url: str | None = None) -> list[dict[str, str]]:
    """The ``avrl.keys`` entries of a compacted file: its footer only."""
    return _footer(uri, endpoint_url)[0]


def _footer(uri: str, endpoint_url: str | None) -> tuple[list[dict[str, str]], int]:
    """(the ``avrl.keys`` entries, the size in bytes) of a compacted file."""
    fs, path = storage.filesystem(uri, endpoint_url=endpoint_url)
    try:
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).schema_arrow.metadata or {}
            size = f.size()
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot read the footer of {uri}: {exc}") from None
    return json.loads(meta.get(KEYS_META, b"[]")), size


# ---------------------------------------------------------------------------------------------
# what a reader shows


@dataclass
class Compacted:
    """One compacted file a reader takes: its URI, partition values and the identities of the
    sources in it that are hidden (no marker)."""

    uri: str
    parts: dict[str, str]
    keys: list[dict[str, str]]
    hidden: list[str]


def split_listing(
    listed: list[tuple[str, dict[str, str]]], base: str
) -> tuple[list[tuple[str, dict[str, str]]], dict[tuple[str, ...], dict[str, list[str]]]]:
    """A table's listed files -> (per-source files, {partition: {generation: [URIs]}})."""
    small, gens = [], {}
    for uri, parts in listed:
        rel = uri[len(base):].lstrip("/").split("/")
        gen = compacted_generation(rel[-1])
        if gen is None:
            small.append((uri, parts))
        else:
            gens.setdefault(tuple(rel[:-1]), {}).setdefault(gen, []).append(uri)
    return small, gens


def visible(
    listed: list[tuple[str, dict[str, str]]],
    base: str,
    marked: set[str],
    *,
    endpoint_url: str | None = None,
) -> tuple[list[tuple[str, dict[str, str]]], list[Compacted]]:
    """What a reader takes of one table's listed files: (per-source files whose key has no
    marker, each partition's newest-generation compacted files with the identities to hide)."""
    small, gens = split_listing(listed, base)
    small = [(u, p) for u, p in small if _key_of(u) not in marked]
    parts_of = dict(listed)
    taken = []
    for _, by_gen in sorted(gens.items()):
        for uri in sorted(by_gen[max(by_gen)]):
            keys = read_keys(uri, endpoint_url=endpoint_url)
            hidden = [
                identity(k["source_uri"], k["model_id"], k["scan_id"])
                for k in keys
                if k["key"] not in marked
            ]
            taken.append(Compacted(uri, parts_of[uri], keys, hidden))
    return small, taken


def visible_rows(
    c: Compacted, table: str, *, endpoint_url: str | None = None
) -> tuple[pa.Table, dict[str, str]]:
    """A compacted file's rows less those of its hidden sources, and {identity: version} of
    the sources it shows."""
    data, _ = _read(c.uri, table, endpoint_url)
    if c.hidden:
        data = data.filter(pc.invert(_identity_mask(data, set(c.hidden))))
    return data, {_entry_identity(k): k["version"] for k in c.keys}


def _key_of(uri: str) -> str:
    return uri.rsplit("/", 1)[-1].removesuffix(".parquet")


def listed_markers(out: str, *, endpoint_url: str | None = None) -> dict[str, str]:
    """{key: marker URI} of every compacted source under ``out`` (one listing)."""
    uris = storage.list_files(
        storage.join(out, MARKERS), suffix=".parquet", endpoint_url=endpoint_url
    )
    return {_key_of(u): u for u in uris}


def marker_bytes(source_uri: str, version: str, model_id: str) -> bytes:
    """A marker: an empty events table carrying the source's ``avrl.source`` metadata, so
    that a scan confirms an old version from it as from an events object."""
    return parquet_bytes(with_source_meta(EVENTS.empty_table(), source_uri, version, model_id))


def key_rows(
    out: str, marker: str, *, endpoint_url: str | None = None
) -> dict[str, pa.Table]:
    """The rows of one compacted source (its marker's URI), by table, from the newest
    generation of its partition: what ``avrl retimeline`` turns back into per-source objects."""
    partition = _marker_partition(out, marker)
    key = _key_of(marker)
    found: dict[str, pa.Table] = {}
    for table in COMPACTED_TABLES:
        base = storage.join(out, table, *partition)
        names = {u.rsplit("/", 1)[-1]: u
                 for u in storage.list_files(base, suffix=".parquet", endpoint_url=endpoint_url)}
        gens = _generations(names)
        found[table] = conform(TABLES[table].empty_table(), TABLES[table])
        for uri in gens[max(gens)] if gens else []:
            entry = next((k for k in read_keys(uri, endpoint_url=endpoint_url)
                          if k["key"] == key), None)
            if entry is not None:
                data, _ = _read(uri, table, endpoint_url)
                found[table] = data.filter(_identity_mask(data, {_entry_identity(entry)}))
                break
    return found


# ---------------------------------------------------------------------------------------------
# compaction


@dataclass
class CompactSummary:
    out: str
    dry_run: bool = False
    partitions: int = 0  # partitions looked at
    partitions_compacted: int = 0
    sources_compacted: int = 0  # sources taken from per-source objects into compacted files
    sources_dropped: int = 0  # older versions left out (a newer version is in the partition)
    sources_waiting: int = 0  # per-source objects left for the next compaction (being written
    # or removed by a scan while this one read them)
    files_before: int = 0  # windows/unreadable/events files of the partitions compacted
    files_after: int = 0
    bytes_written: int = 0
    wall_s: float = 0.0
    errors: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "compact", **asdict(self)}


@dataclass
class _Source:
    key: str
    source_uri: str
    version: str
    model_id: str
    scan_id: str
    tables: dict[str, pa.Table]
    sizes: dict[str, int]  # bytes of input each table's rows came from
    small: list[str]  # its per-source objects (deleted once the new generation is written)
    marker: str | None  # its marker, when it was compacted already


def compact(
    out: str,
    *,
    target_mb: float = DEFAULT_TARGET_MB,
    endpoint_url: str | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> CompactSummary:
    """Compact every partition of ``out`` that has per-source objects, more than one file of
    a table, or sources to drop. ConfigError while another compaction holds the lock or a
    ``--rescan`` is in progress."""
    t0 = time.monotonic()
    p = storage.parse_uri(out)
    out = p.path if p.scheme == "file" else out.rstrip("/")
    summary = CompactSummary(out=out, dry_run=dry_run)
    if target_mb <= 0:
        raise ConfigError(f"--target-mb must be > 0 (got {target_mb})")
    if not {*COMPACTED_TABLES, MARKERS} & set(storage.list_folders(out, endpoint_url=endpoint_url)):
        raise StorageError(
            f"no scan output under {out}: nothing to compact (check the path / --endpoint-url)"
        )
    _check_no_rescan(out, endpoint_url)
    lock = lock_uri(out)
    if not dry_run:
        note = json.dumps({"host": socket.gethostname(),
                           "started_at": datetime.now(timezone.utc).isoformat()}).encode()
        if not storage.write_atomic(lock, note, if_absent=True, endpoint_url=endpoint_url):
            raise ConfigError(
                f"another compaction of {out} is running ({lock} exists); if none is, delete "
                "that file and run again"
            )
    try:
        listing = _listing(out, endpoint_url)
        markers = listed_markers(out, endpoint_url=endpoint_url)
        by_part: dict[tuple[str, ...], list[str]] = {}
        for key, uri in markers.items():
            by_part.setdefault(_marker_partition(out, uri), []).append(key)
        partitions = sorted({part for files in listing.values() for part in files} | set(by_part))
        generation = _generation()
        for i, part in enumerate(partitions):
            summary.partitions += 1
            try:
                _compact_partition(out, part, listing, markers, by_part.get(part, []), generation,
                                   target_mb * 1e6, summary, endpoint_url)
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - one partition, not the compaction
                from avrl_batch.scan.plan import error_of

                kind, msg = error_of(exc)
                summary.errors.append({"partition": "/".join(part), "error_type": kind,
                                       "message": msg})
            if progress is not None:
                progress(i + 1, len(partitions))
    finally:
        if not dry_run:
            storage.delete(lock, endpoint_url=endpoint_url)
    summary.wall_s = round(time.monotonic() - t0, 3)
    return summary


def _generation() -> str:
    from avrl_batch.scan.naming import scan_id_now

    return scan_id_now()


def _check_no_rescan(out: str, endpoint_url: str | None) -> None:
    for uri in storage.list_files(storage.join(out, "_scans"), suffix=".settings",
                                  endpoint_url=endpoint_url):
        try:
            rescanning = json.loads(storage.read_bytes(uri, endpoint_url=endpoint_url)).get(
                "rescanning")
        except (ValueError, AttributeError):
            continue
        if rescanning:
            raise ConfigError(
                f"a --rescan of {out} has not finished ({uri} says rescanning): run it to the "
                "end before compacting"
            )


def check_not_compacting(out: str, what: str, *, endpoint_url: str | None = None) -> None:
    """ConfigError while a compaction holds ``out``'s lock: ``what`` (``--rescan``,
    ``avrl retimeline``) rewrites per-source objects a compaction may be moving."""
    lock = lock_uri(out)
    if storage.exists(lock, endpoint_url=endpoint_url):
        raise ConfigError(
            f"a compaction of {out} is running ({lock} exists): run {what} after it ends (if "
            "no compaction is running, delete that file)"
        )


def _listing(
    out: str, endpoint_url: str | None
) -> dict[str, dict[tuple[str, ...], dict[str, str]]]:
    """{table: {partition: {file name: URI}}}: one recursive listing per table."""
    found: dict[str, dict[tuple[str, ...], dict[str, str]]] = {}
    for table in COMPACTED_TABLES:
        base = storage.join(out, table)
        by_part: dict[tuple[str, ...], dict[str, str]] = {}
        for uri in storage.list_files(base, suffix=".parquet", endpoint_url=endpoint_url):
            rel = storage.relative_parts(base, uri)
            by_part.setdefault(tuple(rel[:-1]), {})[rel[-1]] = uri
        found[table] = by_part
    return found


def _compact_partition(
    out: str,
    part: tuple[str, ...],
    listing: dict[str, dict[tuple[str, ...], dict[str, str]]],
    markers: dict[str, str],
    part_markers: list[str],
    generation: str,
    target_bytes: float,
    summary: CompactSummary,
    endpoint_url: str | None,
) -> None:
    files = {t: listing[t].get(part, {}) for t in COMPACTED_TABLES}
    gens = {t: _generations(files[t]) for t in COMPACTED_TABLES}
    newest = {t: gens[t][max(gens[t])] if gens[t] else [] for t in COMPACTED_TABLES}
    small = {t: {n.removesuffix(".parquet"): u for n, u in files[t].items()
                 if compacted_generation(n) is None} for t in COMPACTED_TABLES}
    footers = {t: {u: _footer(u, endpoint_url) for u in newest[t]} for t in COMPACTED_TABLES}
    entries = {t: {u: keys for u, (keys, _) in footers[t].items()} for t in COMPACTED_TABLES}
    # more files than the target size needs (a compaction with a smaller --target-mb): merged
    split = any(len(f) > 1 and len(f) > sum(n for _, n in f.values()) // target_bytes + 1
                for f in footers.values())
    in_gen = {k["key"] for keys in entries["events"].values() for k in keys}
    marked = {k for k in in_gen if k in markers}
    # markers of this partition whose key the newest generation does not hold: sources a
    # compaction dropped and died before deleting their markers
    stale = [markers[k] for k in part_markers if k not in in_gen]
    new_small = sorted(k for k in small["events"] if k not in markers)
    leftovers = any(k in marked for t in COMPACTED_TABLES for k in small[t])
    older = any(len(gens[t]) > 1 for t in COMPACTED_TABLES)
    unmarked = any(k["key"] not in marked for t in COMPACTED_TABLES
                   for keys in entries[t].values() for k in keys)
    if not (new_small or stale or leftovers or older or unmarked or split):
        return  # already compact
    # the new generation must sort after every one there (readers take the newest): a clock
    # behind the last compaction's, or the same second, still gives a later id
    generation = _after(generation, [g for t in COMPACTED_TABLES for g in gens[t]])
    sources: dict[str, _Source] = {}
    for table in COMPACTED_TABLES:  # the newest generation's marked sources
        for uri, keys in entries[table].items():
            keys = [k for k in keys if k["key"] in marked]
            if not keys:
                continue
            data, size = _read(uri, table, endpoint_url)
            ident = _identities(data)
            for k in keys:
                src = sources.setdefault(k["key"], _Source(
                    k["key"], k["source_uri"], k["version"], k["model_id"], k["scan_id"], {}, {},
                    [small[t][k["key"]] for t in COMPACTED_TABLES if k["key"] in small[t]],
                    markers[k["key"]]))
                rows = data.filter(pc.equal(ident, _entry_identity(k)))
                src.tables[table] = rows
                src.sizes[table] = size * rows.num_rows // max(data.num_rows, 1)
    for key in new_small:  # sources finished as per-source objects since
        got = _read_small(key, small, endpoint_url)
        if got is None:
            summary.sources_waiting += 1
        else:
            sources[key] = got
    kept, dropped = _newest_versions(list(sources.values()))
    # an events object without its windows beside it is an older version half removed (by
    # a scan or a compaction that died meanwhile): finished here when a newer version of the
    # same source is kept, else left for its scan
    kept_ids = {key_source_id(s.key): s.key for s in kept}
    orphans = [
        [small[t][k] for t in ("unreadable", "events") if k in small[t]]
        for k in new_small
        if k not in sources and k not in small["windows"] and key_source_id(k) is not None
        and kept_ids.get(key_source_id(k), k) != k
    ]
    chunks = {t: _chunks(kept, t, target_bytes) for t in COMPACTED_TABLES}
    summary.partitions_compacted += 1
    summary.sources_compacted += sum(s.marker is None for s in kept)
    summary.sources_dropped += len(dropped)
    summary.files_before += sum(len(f) for f in files.values())
    summary.files_after += sum(len(c) for c in chunks.values())
    if summary.dry_run:
        return
    for table in COMPACTED_TABLES:
        for i, chunk in enumerate(chunks[table]):
            uri = storage.join(out, table, *part, compacted_name(generation, i))
            data = _file_bytes(table, chunk)
            storage.write_atomic(uri, data, if_absent=True, endpoint_url=endpoint_url)
            summary.bytes_written += len(data)
    _check_no_rescan(out, endpoint_url)  # a --rescan begun meanwhile keeps its objects
    for s in kept:
        if s.marker is None:
            storage.write_atomic(marker_uri(out, part, s.key),
                                 marker_bytes(s.source_uri, s.version, s.model_id),
                                 endpoint_url=endpoint_url)
    for s in kept:
        for uri in s.small:  # windows, unreadable, then events: events last
            storage.delete(uri, endpoint_url=endpoint_url)
    for s in dropped:  # the marker first: from then on the source is gone for readers
        for uri in ([s.marker] if s.marker else []) + s.small:
            storage.delete(uri, endpoint_url=endpoint_url)
    for uri in [*stale, *(u for uris in orphans for u in uris)]:
        storage.delete(uri, endpoint_url=endpoint_url)
    for table in COMPACTED_TABLES:
        for uris in gens[table].values():
            for uri in uris:
                storage.delete(uri, endpoint_url=endpoint_url)


def _after(generation: str, existing: list[str]) -> str:
    """``generation``, or the id just after the newest of ``existing`` when that one does not
    sort before it (the hex part counted up)."""
    newest = max(existing, default="")
    if newest < generation:
        return generation
    stamp, counter = newest.rsplit("-", 1)
    return f"{stamp}-{int(counter, 16) + 1:06x}"


def _marker_partition(out: str, marker: str) -> tuple[str, ...]:
    return tuple(storage.relative_parts(storage.join(out, MARKERS), marker)[:-1])


def _generations(files: dict[str, str]) -> dict[str, list[str]]:
    gens: dict[str, list[str]] = {}
    for name, uri in files.items():
        gen = compacted_generation(name)
        if gen is not None:
            gens.setdefault(gen, []).append(uri)
    return {g: sorted(v) for g, v in gens.items()}


def _entry_identity(entry: dict[str, str]) -> str:
    return identity(entry["source_uri"], entry["model_id"], entry["scan_id"])


def _identities(data: pa.Table) -> Any:
    """``identity`` of every row of a table (what ``identity_expr`` is for a dataset)."""
    return pc.binary_join_element_wise(data["source_uri"], data["model_id"], data["scan_id"],
                                       _SEP)


def _identity_mask(data: pa.Table, identities: set[str]) -> Any:
    return pc.is_in(_identities(data), pa.array(sorted(identities), pa.string()))


def _read(uri: str, table: str, endpoint_url: str | None) -> tuple[pa.Table, int]:
    """An object's rows (in ``table``'s schema) and its size in bytes."""
    raw = storage.read_bytes(uri, endpoint_url=endpoint_url)
    return _parse(raw, table), len(raw)


def _parse(raw: bytes, table: str) -> pa.Table:
    return conform(pq.read_table(io.BytesIO(raw)), TABLES[table])


def conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """``data`` in ``schema`` (columns a file written before they existed are null), no
    key-value metadata."""
    cols = [
        data[f.name].cast(f.type) if f.name in data.column_names
        else pa.nulls(data.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema.remove_metadata())


def _read_small(
    key: str, small: dict[str, dict[str, str]], endpoint_url: str | None
) -> _Source | None:
    """A source finished as per-source objects; None when one of them is gone (a scan is
    removing it as an older version) or unreadable: it waits for the next compaction."""
    try:
        raw = storage.read_bytes(small["events"][key], endpoint_url=endpoint_url)
        meta = source_meta(raw)
        if meta is None or key not in small["windows"]:
            return None  # not written by this sink's writers, or being removed
        tables = {"events": _parse(raw, "events")}
        sizes = {"events": len(raw)}
        for table in ("windows", "unreadable"):
            if key in small[table]:
                tables[table], sizes[table] = _read(small[table][key], table, endpoint_url)
    except (StorageError, OSError, pa.ArrowException):
        return None
    scan_ids = [*tables["windows"]["scan_id"].to_pylist()[:1],
                *tables["events"]["scan_id"].to_pylist()[:1]]
    return _Source(
        key, str(meta.get("source_uri")), str(meta.get("version")), str(meta.get("model_id")),
        scan_ids[0] if scan_ids else "", tables, sizes,
        [small[t][key] for t in COMPACTED_TABLES if key in small[t]], None,
    )


def _newest_versions(sources: list[_Source]) -> tuple[list[_Source], list[_Source]]:
    """(the newest scan's source of each URI and model, the older versions)."""
    best: dict[tuple[str, str], _Source] = {}
    for s in sorted(sources, key=lambda s: (s.scan_id, s.key)):
        best[(s.source_uri, s.model_id)] = s
    kept = sorted(best.values(), key=lambda s: (s.source_uri, s.key))
    keep = {id(s) for s in kept}
    return kept, [s for s in sources if id(s) not in keep]


def _chunks(kept: list[_Source], table: str, target_bytes: float) -> list[list[_Source]]:
    """Sources in order, cut into files of about ``target_bytes`` of input each; the events
    table lists every source (even one without events), the others those with rows."""
    with_rows = [s for s in kept if table == "events" or table in s.tables]
    chunks: list[list[_Source]] = []
    size = 0.0
    for s in with_rows:
        if not chunks or size >= target_bytes:
            chunks.append([])
            size = 0.0
        chunks[-1].append(s)
        size += s.sizes.get(table, 0)
    return chunks


def _file_bytes(table: str, chunk: list[_Source]) -> bytes:
    schema = TABLES[table].remove_metadata()
    rows = pa.concat_tables([schema.empty_table(), *(s.tables.get(table, schema.empty_table())
                                                     for s in chunk)])
    keys = [{"key": s.key, "source_uri": s.source_uri, "version": s.version,
             "model_id": s.model_id, "scan_id": s.scan_id} for s in chunk]
    rows = rows.replace_schema_metadata({KEYS_META: json.dumps(keys, sort_keys=True).encode()})
    buf = io.BytesIO()
    pq.write_table(rows, buf, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return buf.getvalue()
