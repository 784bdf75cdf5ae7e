"""Query a scan's output tree (docs/design.md §6) with DuckDB, locally or on S3.

How a query runs:

1. **List** the Parquet files of each table through ``storage`` (local or S3; hidden temp
   files of unfinished writes are skipped); with camera or time filters only the
   ``date=``/``camera=`` folders that can match are listed (``_list_partitions``). A
   windows object counts only once its source's events object (the sink's completion
   marker, written last) exists. In a compacted output (``avrl compact``) each partition's
   newest compacted files count, less the rows of sources without a marker under
   ``_compacted/``, and per-source objects of marked sources do not
   (``scan.compact.visible``).
2. **Prune by partition** on the listed paths, before any file is opened: ``camera=C``
   must be one of ``--camera`` (or its path-safe form, ``scan.naming.safe_component``);
   ``date=D`` (the UTC date the *recording* started) must be before ``--until`` and at
   most ``RECORDING_SPAN_DAYS`` before ``--since`` (a recording that starts on D can have
   windows up to that many days later). A partition value that is not a date
   (``date=unknown`` for recordings with no known start) is never pruned; its rows have
   no ``start_time`` and the row filter decides.
3. **Row filters** as a pyarrow dataset filter over the remaining files (pyarrow skips
   row groups by their statistics). They use the files' own columns: the ``camera`` in
   the path only prunes, the ``camera`` column is what rows show and match (the path holds
   a path-safe form: ``Gate 3 (north)`` is ``camera=Gate_3_north``; the column keeps the
   real id).
4. The filtered datasets are registered in DuckDB as the views ``events``, ``windows``,
   ``unreadable`` and ``errors`` (DuckDB scans them lazily with its own projection/filter
   pushdown), so ``--sql`` can join them. DuckDB's httpfs extension is not needed: S3 goes through
   pyarrow's S3 filesystem.

Filter meaning: ``--since``/``--until`` keep rows with ``since <= start_time < until``
(rows with an unknown start time are dropped when either is given); ``--min-score`` is on
``peak_score`` for events and ``score`` for windows; ``--inferred-only`` drops the windows a
cascade scan's screen passed over (``inferred`` false); ``--anomalies-only`` keeps windows
whose top class is an anomaly (events are always anomalies). ``--label`` must be a class of
a model that scanned into OUT (the scan manifests record each model's classes).
``--camera unknown`` also matches rows with no camera id (the sink files them under
``camera=unknown``). Errors have no camera, time, label or score: filters leave the
``errors`` view alone. Unreadable spans (stretches of a scanned source that could not be
decoded) have a camera and times but no label or score: only ``--camera``, ``--since`` and
``--until`` apply to them.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from avrl_batch.classes import ClassSet
from avrl_batch.errors import ConfigError, StorageError
from avrl_batch.scan.compact import Compacted, identity_expr, visible
from avrl_batch.scan.sink import MARKERS
from avrl_batch.schema import TABLES

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa
    import pyarrow.dataset as ds

# A partition dated D (recording start) may hold windows/events starting up to this many
# days later: recordings up to 48 h long. --since prunes older partitions.
RECORDING_SPAN_DAYS = 2

# default order of each table's rows: by time, then position in the source
ORDER_BY: dict[str, str] = {
    "events": "start_time NULLS LAST, camera, source_uri, start_s, label",
    "windows": "start_time NULLS LAST, camera, source_uri, window_index",
    "errors": "source_uri",
    "unreadable": "start_time NULLS LAST, camera, source_uri, start_s",
}

# what the sink calls a camera it could not tell (scan.naming.UNKNOWN)
UNKNOWN_CAMERA = "unknown"

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class QueryFilters:
    """What ``avrl query``'s filter options ask for; empty means no filter."""

    labels: tuple[str, ...] = ()
    cameras: tuple[str, ...] = ()
    since: datetime | None = None  # UTC, inclusive
    until: datetime | None = None  # UTC, exclusive
    min_score: float | None = None
    anomalies_only: bool = False
    # windows: only those the full model inferred (a cascade scan's screened-out ones dropped)
    inferred_only: bool = False

    def __post_init__(self) -> None:
        if self.since and self.until and self.since >= self.until:
            raise ConfigError(
                f"--since {self.since.isoformat()} is not before --until {self.until.isoformat()}"
            )

    @property
    def is_empty(self) -> bool:
        return self == QueryFilters()


def parse_time(text: str, *, option: str = "time") -> datetime:
    """An ISO 8601 time (``2026-03-01T08:00:00Z``, ``...+01:00``; no offset means UTC) or a
    date (midnight UTC), as an aware UTC datetime; ConfigError otherwise."""
    s = text.strip()
    try:
        if _DATE_RE.match(s):
            d = date.fromisoformat(s)
            return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
        t = datetime.fromisoformat(s[:-1] + "+00:00" if s[-1:] in "Zz" else s)
    except ValueError:
        raise ConfigError(
            f"bad {option} {text!r}: use ISO 8601 like 2026-03-01T08:00:00Z or a date 2026-03-01"
        ) from None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


@dataclass
class OutputTree:
    """The listed files of one scan output (``OUT``), local or on S3."""

    out: str
    endpoint_url: str | None = None
    files: dict[str, list[tuple[str, dict[str, str]]]] = field(default_factory=dict)
    # each table's compacted files that count (scan/compact.py), with the rows to hide
    compacted: dict[str, list[Compacted]] = field(default_factory=dict)
    scan_manifests: list[str] = field(default_factory=list)

    @classmethod
    def open(
        cls, out: str, *, endpoint_url: str | None = None, filters: QueryFilters | None = None,
        require: bool = True,
    ) -> OutputTree:
        """List ``out``; StorageError if it holds no scan output at all (unless not
        ``require``: then the tree is empty). With ``filters``
        naming cameras or times, only the partitions that can hold matching rows are listed
        (``date=`` folders first, then the kept dates' ``camera=`` folders): a camera-day
        query on a large output lists a few folders, not the whole tree."""
        from avrl_batch import storage

        p = storage.parse_uri(out)
        # one spelling for the root, the one list_files answers in (local: absolute path)
        out = p.path if p.scheme == "file" else out.rstrip("/")
        tree = cls(out=out, endpoint_url=endpoint_url)
        marked = {  # the compacted sources (scan/compact.py) of the partitions listed
            uri.rsplit("/", 1)[-1].removesuffix(".parquet")
            for uri in _list_partitions(storage.join(out, MARKERS), filters, endpoint_url)
        }
        for table in TABLES:
            base = storage.join(out, table)
            found = []
            for uri in _list_partitions(base, filters if table != "errors" else None,
                                        endpoint_url):
                rel = uri[len(base) :].lstrip("/")
                found.append((uri, _partition_values(rel)))
            if table == "errors":
                tree.files[table] = found
                continue
            # a compacted source's rows come from its partition's newest compacted files
            # (its per-source objects, if any are left, are ignored); see scan/compact.py
            tree.files[table], tree.compacted[table] = visible(
                found, base, marked, endpoint_url=endpoint_url
            )
        # the sink writes a source's events object last, as its completion marker: windows
        # and unreadable spans without it belong to a source still being written (or a
        # killed run) -> not shown
        done = {uri[len(storage.join(out, "events")) :] for uri, _ in tree.files["events"]}
        for table in ("windows", "unreadable"):
            base = storage.join(out, table)
            tree.files[table] = [
                (uri, parts) for uri, parts in tree.files[table] if uri[len(base) :] in done
            ]
        tree.scan_manifests = storage.list_files(
            storage.join(out, "_scans"), suffix=".json", endpoint_url=endpoint_url
        )
        if require and not any(tree.files.values()) and not any(tree.compacted.values()) \
                and not tree.scan_manifests:
            raise StorageError(
                f"no scan output under {out}: run `avrl scan SOURCE --model MODEL --out {out}` "
                "first (or check the path / --endpoint-url)"
            )
        return tree

    def pruned_files(self, table: str, filters: QueryFilters) -> list[str]:
        """URIs of ``table``'s files that can hold rows matching ``filters`` (partition
        pruning only; see the module docstring)."""
        if table == "errors":
            return [uri for uri, _ in self.files[table]]
        return [uri for uri, parts in self.files[table] if _may_match(parts, filters)] + [
            c.uri for c in self._pruned_compacted(table, filters)
        ]

    def _pruned_compacted(self, table: str, filters: QueryFilters) -> list[Compacted]:
        return [c for c in self.compacted.get(table, []) if _may_match(c.parts, filters)]

    def datasets(self, table: str, filters: QueryFilters) -> list[ds.Dataset]:
        """pyarrow datasets of ``table``'s rows matching ``filters``: one over the pruned
        per-source files and, when the output is compacted, one over the pruned compacted
        files less the rows of the sources hidden there (no compaction marker)."""
        import pyarrow.dataset as pads

        from avrl_batch import storage

        schema = TABLES[table]
        small = [uri for uri, parts in self.files[table]
                 if table == "errors" or _may_match(parts, filters)]
        compacted = self._pruned_compacted(table, filters)
        expr = row_filter(table, filters)
        fs = None
        found = []
        for uris, hidden in ((small, []), ([c.uri for c in compacted],
                                           [h for c in compacted for h in c.hidden])):
            if not uris:
                continue
            if fs is None:
                fs, _ = storage.filesystem(self.out, endpoint_url=self.endpoint_url)
            data = pads.dataset([_fs_path(u) for u in uris], schema=schema, format="parquet",
                                filesystem=fs)
            keep = expr
            if hidden:
                shown = ~identity_expr().isin(sorted(set(hidden)))
                keep = shown if keep is None else keep & shown
            found.append(data if keep is None else data.filter(keep))
        if not found:
            import pyarrow as pa

            found.append(pads.dataset(pa.table({f.name: [] for f in schema}, schema=schema)))
        return found

    def read_table(self, table: str, filters: QueryFilters) -> pa.Table:
        """Every row of ``table`` matching ``filters`` (all versions and models; the views of
        :func:`connect` apply the newest-version and one-model rules) as one table."""
        import pyarrow as pa

        return pa.concat_tables([d.to_table() for d in self.datasets(table, filters)])

    def manifests(self, skipped: list[str] | None = None) -> list[dict[str, Any]]:
        """The scan manifests (``_scans/*.json``), oldest name first. One that cannot be read,
        is not a JSON object or has a field of the wrong type (``manifest_problem``) is left
        out, with one line saying why appended to ``skipped``: a manifest being written or
        foreign JSON is not fatal for a query or a report."""
        from avrl_batch import storage

        out = []
        for uri in self.scan_manifests:
            try:
                manifest = json.loads(storage.read_bytes(uri, endpoint_url=self.endpoint_url))
                problem = manifest_problem(manifest)
            except (ValueError, StorageError) as exc:
                problem = f"unreadable ({str(exc).splitlines()[0][:120] if str(exc) else exc!r})"
            if problem is None:
                out.append(manifest)
            elif skipped is not None:
                skipped.append(f"{uri}: skipped, {problem}")
        return out

    def class_names(self) -> tuple[str, ...]:
        """The classes of the models that scanned into this output (from the scan manifests,
        in their order); empty when there is no scan manifest."""
        names: dict[str, None] = {}
        for classes in model_classes(self.manifests()).values():
            names.update(dict.fromkeys(classes.names))
        return tuple(names)

    def check_labels(self, labels: tuple[str, ...]) -> None:
        """ConfigError naming the known labels unless every one of ``labels`` is a class of
        a model that scanned into this output."""
        known = self.class_names() if labels else ()
        unknown = [lb for lb in labels if known and lb not in known]
        if unknown:
            raise ConfigError(
                f"unknown label {unknown[0]!r}; the scanned model's labels: {', '.join(known)}"
            )


def model_classes(manifests: list[dict[str, Any]]) -> dict[str, ClassSet]:
    """model id -> its classes (the order of its windows' ``probs``), from the scan manifests;
    a retimeline's manifest records none, and a foreign one is skipped."""
    found: dict[str, ClassSet] = {}
    for m in manifests:
        if m.get("kind") == "retimeline" or not m.get("model_id"):
            continue
        try:
            found[str(m["model_id"])] = ClassSet.from_record(m)
        except ConfigError:
            continue
    return found


# What a reader of a manifest relies on, by type (pipeline.ScanSummary.to_dict writes them);
# any field may be absent, and other fields are not looked at.
_MANIFEST_NUMBERS = ("sources_ok", "sources_failed", "sources_skipped", "windows", "events",
                     "footage_s", "footage_hours_per_hour", "wall_s")
_MANIFEST_TEXTS = ("scan_id", "model_id", "finished_at", "started_at", "out")


def manifest_problem(manifest: Any) -> str | None:
    """Why ``manifest`` (parsed JSON) cannot be shown as a scan manifest, or None."""
    if not isinstance(manifest, dict):
        return f"not a JSON object (a {type(manifest).__name__})"
    for name in _MANIFEST_NUMBERS:
        value = manifest.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"{name} is not a number ({value!r:.40})"
    for name in _MANIFEST_TEXTS:
        value = manifest.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name} is not text ({value!r:.40})"
    return None


def _partition_cameras(filters: QueryFilters) -> set[str]:
    """The ``camera=`` values the cameras of ``filters`` can be filed under: the sink names a
    camera's partition with a path-safe form of the id."""
    from avrl_batch.scan.naming import safe_component

    return {*filters.cameras, *(safe_component(c) for c in filters.cameras)}


def _may_match(parts: dict[str, str], filters: QueryFilters) -> bool:
    """Whether a file (or folder) with these partition values can hold rows matching
    ``filters`` (see the module docstring)."""
    cam = parts.get("camera")
    if filters.cameras and cam is not None and cam not in _partition_cameras(filters):
        return False
    d = parts.get("date")
    if d is not None and _DATE_RE.match(d):
        day = datetime.fromisoformat(d).replace(tzinfo=timezone.utc)
        if filters.until is not None and day >= filters.until:
            return False
        if filters.since is not None and day + timedelta(
            days=RECORDING_SPAN_DAYS + 1
        ) <= filters.since:
            return False
    return True


def _list_partitions(
    base: str, filters: QueryFilters | None, endpoint_url: str | None
) -> list[str]:
    """The Parquet files under a table's folder ``base``; with camera or time ``filters`` only
    those of the ``date=``/``camera=`` folders that can hold matching rows, found one level at
    a time (``storage.list_folders``)."""
    from avrl_batch import storage

    def files(uri: str) -> list[str]:
        return storage.list_files(uri, suffix=".parquet", endpoint_url=endpoint_url)

    if filters is None or not (filters.cameras or filters.since or filters.until):
        return files(base)
    found: list[str] = []
    for date_dir in storage.list_folders(base, endpoint_url=endpoint_url):
        if not _may_match(_partition_values(date_dir + "/"), filters):
            continue
        try:
            day = storage.join(base, date_dir)
        except StorageError:
            continue  # a name join refuses is no partition the sink wrote
        if not filters.cameras:
            found += files(day)
            continue
        for cam_dir in storage.list_folders(day, endpoint_url=endpoint_url):
            if not _may_match(_partition_values(date_dir + "/" + cam_dir + "/"), filters):
                continue
            try:
                found += files(storage.join(day, cam_dir))
            except StorageError:
                continue
    return sorted(found)


def _partition_values(rel: str) -> dict[str, str]:
    """``date=2026-03-01/camera=cam01/x.parquet`` -> {"date": ..., "camera": ...}."""
    out = {}
    for seg in rel.split("/")[:-1]:
        k, sep, v = seg.partition("=")
        if sep:
            out[k] = unquote(v)  # hive paths may percent-encode values
    return out


def _fs_path(uri: str) -> str:
    from avrl_batch import storage

    p = storage.parse_uri(uri)
    return p.path if p.scheme == "file" else f"{p.bucket}/{p.key}"


def row_filter(table: str, filters: QueryFilters) -> ds.Expression | None:
    """The row-level filter of ``filters`` on ``table``'s own columns (None: no filter)."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    if table == "errors":
        return None
    if table == "unreadable":  # no label or score: only camera and time apply
        filters = QueryFilters(cameras=filters.cameras, since=filters.since, until=filters.until)
    f = pads.field
    terms = []
    if filters.labels:
        terms.append(f("label").isin(list(filters.labels)))
    if filters.cameras:
        cam = f("camera").isin(list(filters.cameras))
        if UNKNOWN_CAMERA in filters.cameras:
            # the sink files rows without a camera id under camera=unknown: match them too
            cam = cam | f("camera").is_null()
        terms.append(cam)
    ts = pa.timestamp("us", tz="UTC")
    if filters.since is not None:
        terms.append(f("start_time") >= pa.scalar(filters.since, ts))
    if filters.until is not None:
        terms.append(f("start_time") < pa.scalar(filters.until, ts))
    if filters.min_score is not None:
        col = "peak_score" if table == "events" else "score"
        terms.append(f(col) >= pa.scalar(filters.min_score, pa.float32()))
    if filters.anomalies_only:
        if table == "windows":
            terms.append(f("is_anomaly"))
        # every event is labelled with an anomaly class: nothing to filter
    if filters.inferred_only and table == "windows":
        # null: an object written before the column existed, every window of it inferred
        terms.append(f("inferred").is_null() | f("inferred"))
    if not terms:
        return None
    expr = terms[0]
    for t in terms[1:]:
        expr = expr & t
    return expr


def connect(
    tree: OutputTree,
    filters: QueryFilters | None = None,
    *,
    model_id: str | None = None,
    note: Callable[[str], None] | None = None,
    memory_limit: str | None = None,
    spill_dir: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views ``events``, ``windows``, ``unreadable``,
    ``errors`` (filtered).

    ``events`` and ``windows`` show one model's results (``model_id``, default the model of
    the newest scan; ``note`` is told which when the output holds several) and, of each
    source, only its newest version: the windows and events of the newest scan that
    finished it. An older version still there (a scan still running, or one killed while it
    removed the old objects) is not shown. Versions are told apart on every window, before
    the filters, so a filter never brings an older version back.
    """
    import duckdb

    filters = filters or QueryFilters()
    con = duckdb.connect()
    # times come back as UTC whatever the machine's zone (ICU is built into the wheel)
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    if memory_limit is not None:
        # a sort or join larger than this spills to spill_dir: a query's memory is bounded
        con.execute(f"SET memory_limit = {_sql_text(memory_limit)}")
    if spill_dir is not None:
        con.execute(f"SET temp_directory = {_sql_text(spill_dir)}")
    _register(con, "errors", tree.datasets("errors", filters))
    _register(con, "_every_window", tree.datasets("windows", QueryFilters()))
    shown = _shown_model(con, tree.out, model_id, note)
    con.execute(
        "CREATE VIEW _newest AS SELECT source_uri, max(scan_id) AS scan_id FROM _every_window "
        f"WHERE model_id = {_sql_text(shown)} GROUP BY source_uri"
    )
    for table in ("events", "windows", "unreadable"):
        _register(con, f"_{table}_rows", tree.datasets(table, filters))
        con.execute(
            f"CREATE VIEW {table} AS SELECT t.* FROM _{table}_rows t SEMI JOIN _newest n "
            "ON t.source_uri = n.source_uri AND t.scan_id = n.scan_id "
            f"WHERE t.model_id = {_sql_text(shown)}"
        )
    return con


def _register(con: duckdb.DuckDBPyConnection, name: str, datasets: list[ds.Dataset]) -> None:
    """``name`` as a view over ``datasets`` (per-source and compacted files), one after the
    other."""
    if len(datasets) == 1:
        con.register(name, datasets[0])
        return
    parts = []
    for i, data in enumerate(datasets):
        con.register(f"{name}_{i}", data)
        parts.append(f"SELECT * FROM {name}_{i}")
    con.execute(f"CREATE VIEW {name} AS " + " UNION ALL ".join(parts))


def _sql_text(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def _shown_model(
    con: duckdb.DuckDBPyConnection,
    out: str,
    requested: str | None,
    note: Callable[[str], None] | None,
) -> str | None:
    """The model whose results the views show: ``requested``, else the newest scan's."""
    models = [m for (m,) in con.sql(
        "SELECT model_id FROM _every_window GROUP BY model_id ORDER BY max(scan_id) DESC"
    ).fetchall()]
    if requested is not None:
        if requested not in models:
            raise ConfigError(
                f"no results of model {requested} under {out}; it holds "
                f"{', '.join(models) or 'none'}"
            )
        return requested
    if len(models) > 1 and note is not None:
        note(
            f"{out} holds results of {len(models)} models ({', '.join(models)}); showing "
            f"{models[0]}, the newest scan's: --model ID shows another"
        )
    return models[0] if models else None


# DuckDB's memory for one query (sorts and joins spill to a temporary folder beyond it) and
# the rows per batch a result streams in
DEFAULT_MEMORY_LIMIT = "1GB"
BATCH_ROWS = 8192


class QueryResult:
    """The rows of a query as a stream of Arrow record batches (``schema``, iterate once),
    read from DuckDB as they are produced; ``close()`` (or ``with``) ends the query and
    removes its spill folder."""

    def __init__(self, con: Any, reader: pa.RecordBatchReader, table: str | None,
                 spill_dir: str) -> None:
        self._con, self._reader, self._table, self._spill = con, reader, table, spill_dir
        # a --sql result's batches may differ (an interval column is a duration or, when it
        # counts months, text): writers take the first batch's schema
        self.schema: pa.Schema = (
            TABLES[table] if table else portable(reader.schema.empty_table()).schema
        )

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        import duckdb
        import pyarrow as pa

        try:
            for batch in self._reader:
                if self._table is not None:
                    yield batch.cast(TABLES[self._table])  # DuckDB drops NOT NULL flags
                else:
                    yield from portable(pa.Table.from_batches([batch])).to_batches()
        except duckdb.Error as exc:  # e.g. Out of Memory: the one line says so
            what = "--sql" if self._table is None else "query"
            raise ConfigError(f"{what}: {_first_line(exc)} (see --memory-limit)") from None

    def read_all(self) -> pa.Table:
        import pyarrow as pa

        batches = list(self)
        return pa.Table.from_batches(batches, schema=batches[0].schema if batches else
                                     self.schema)

    def close(self) -> None:
        import shutil

        self._con.close()
        shutil.rmtree(self._spill, ignore_errors=True)

    def __enter__(self) -> QueryResult:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream_query(
    out: str,
    *,
    table: str = "events",
    filters: QueryFilters | None = None,
    sql: str | None = None,
    limit: int | None = None,
    endpoint_url: str | None = None,
    model_id: str | None = None,
    note: Callable[[str], None] | None = None,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    batch_rows: int = BATCH_ROWS,
) -> QueryResult:
    """Rows of ``table`` matching ``filters`` (ordered, at most ``limit``), or the result
    of ``sql`` over the filtered views (one model's newest versions: :func:`connect`), as a
    stream of record batches: only the partitions the filters can match are listed
    (``OutputTree.open``), and DuckDB holds at most ``memory_limit`` (an ORDER BY over more
    spills to a temporary folder). ConfigError for SQL DuckDB rejects."""
    import tempfile

    import duckdb

    if table not in TABLES:
        raise ConfigError(f"unknown table {table!r}; choose one of {', '.join(TABLES)}")
    filters = filters or QueryFilters()
    if table == "errors" and sql is None and not filters.is_empty:
        raise ConfigError(
            "errors have no camera, time, label or score: drop the filters for --table errors"
        )
    if table == "unreadable" and sql is None and (
        filters.labels or filters.min_score is not None or filters.anomalies_only
    ):
        raise ConfigError(
            "unreadable spans have no label or score: use only --camera, --since and --until "
            "with --table unreadable"
        )
    if limit is not None and limit < 0:
        raise ConfigError(f"--limit must be >= 0 (got {limit})")
    tree = OutputTree.open(out, endpoint_url=endpoint_url, filters=filters)
    tree.check_labels(filters.labels)
    spill = tempfile.mkdtemp(prefix="avrl-query-")
    try:
        con = connect(tree, filters, model_id=model_id, note=note,
                      memory_limit=memory_limit, spill_dir=spill)
    except BaseException:
        import shutil

        shutil.rmtree(spill, ignore_errors=True)
        raise
    if sql is not None:
        # `SELECT ...;` is how people end SQL; inside the LIMIT wrapper it is a syntax error
        sql = sql.strip().rstrip(";").rstrip()
    text = sql if sql is not None else f"SELECT * FROM {table} ORDER BY {ORDER_BY[table]}"
    if limit is not None:
        text = f"SELECT * FROM ({text}\n) LIMIT {int(limit)}"  # \n: a trailing -- comment
    try:
        result = con.sql(text)
        reader = result.to_arrow_reader(batch_rows) if result is not None else None
    except duckdb.Error as exc:
        _close_quietly(con, spill)
        raise ConfigError(f"--sql: {_first_line(exc)}") from None
    if reader is None:
        _close_quietly(con, spill)
        raise ConfigError("--sql must be a query that returns rows (SELECT ...)")
    return QueryResult(con, reader, table if sql is None else None, spill)


def _close_quietly(con: Any, spill: str) -> None:
    import shutil

    con.close()
    shutil.rmtree(spill, ignore_errors=True)


def run_query(out: str, **kwargs: Any) -> pa.Table:
    """:func:`stream_query`'s rows as one table (for results that fit in memory)."""
    with stream_query(out, **kwargs) as result:
        return result.read_all()


def portable(data: pa.Table) -> pa.Table:
    """``--sql`` results in types every output format writes. DuckDB answers a sum of
    integers as HUGEINT (Arrow decimal128(38, 0)) and a difference of timestamps as INTERVAL
    (Arrow month_day_nano_interval, which Parquet and CSV cannot hold): a decimal without
    scale becomes int64 (float64 if it does not fit), one with a scale float64; an interval
    becomes a duration (microseconds), or ISO 8601 text if it counts months."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = []
    for col in data.columns:
        t = col.type
        if pa.types.is_decimal(t):
            try:
                col = pc.cast(col, pa.int64()) if t.scale == 0 else pc.cast(col, pa.float64())
            except pa.ArrowInvalid:  # > 2**63: keep the magnitude, lose the last digits
                col = pc.cast(col, pa.float64(), safe=False)
        elif pa.types.is_interval(t):
            col = _interval_column(col)
        cols.append(col)
    return pa.table(cols, names=data.column_names)


def _interval_column(col: pa.ChunkedArray) -> pa.ChunkedArray:
    import pyarrow as pa

    values = col.to_pylist()  # MonthDayNano(months, days, nanoseconds) or None
    if all(v is None or v.months == 0 for v in values):
        return pa.chunked_array(
            [pa.array([None if v is None else v.days * 86_400_000_000 + v.nanoseconds // 1000
                       for v in values], pa.duration("us"))]
        )
    # months have no fixed length: only text says what DuckDB meant
    return pa.chunked_array(
        [pa.array([None if v is None else f"P{v.months}M{v.days}DT{v.nanoseconds / 1e9:g}S"
                   for v in values], pa.string())]
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---- output formats ------------------------------------------------------------------------

# columns a terminal table leaves out: pictures, probability vectors, long repeated ids
HIDDEN_IN_TABLE = ("thumbnail", "probs", "model_id", "scan_id")


def _py(value: Any) -> Any:
    """A value of ``Table.to_pylist()`` as plain JSON: times ISO 8601 (UTC, ``Z``), dates and
    clock times ISO 8601, durations in seconds, decimals as numbers, binary base64."""
    if isinstance(value, datetime):
        if value.tzinfo is None:  # a naive TIMESTAMP from --sql: DuckDB runs in UTC here
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, list | tuple):
        return [_py(v) for v in value]
    if isinstance(value, dict):
        return {k: _py(v) for k, v in value.items()}
    return value


def to_json_lines(data: pa.Table) -> str:
    """One JSON object per row; times ISO 8601 UTC, durations in seconds, binary
    (thumbnails) base64."""
    return "".join(json.dumps(_py(row)) + "\n" for row in data.to_pylist())


def to_csv(data: pa.Table, *, header: bool = True) -> bytes:
    """CSV; binary columns are dropped, lists and structs become JSON, times ISO 8601 UTC,
    durations seconds."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    cols, names = [], []
    for name, col in zip(data.column_names, data.columns, strict=True):
        t = col.type
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            continue
        if pa.types.is_nested(t):  # list, struct, map: the CSV writer has no form for them
            col = pa.array(
                [None if v is None else json.dumps(_py(v)) for v in col.to_pylist()], pa.string()
            )
        elif pa.types.is_duration(t):
            col = pa.array([None if v is None else _py(v) for v in col.to_pylist()], pa.float64())
        elif pa.types.is_timestamp(t):
            col = pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ")
        cols.append(col)
        names.append(name)
    buf = io.BytesIO()
    pacsv.write_csv(pa.table(cols, names=names), buf,
                    write_options=pacsv.WriteOptions(include_header=header))
    return buf.getvalue()


def to_parquet(data: pa.Table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(data, buf)
    return buf.getvalue().to_pybytes()


class RowWriter:
    """Writes a result batch by batch to a binary file object: ``json`` (to_json_lines),
    ``csv`` (to_csv, one header) or ``parquet`` (one file, a row group per batch, in the
    schema of the first batch, else ``schema``). ``close()`` finishes the file (a Parquet
    footer; an empty result is a valid empty file)."""

    def __init__(self, fmt: str, sink: Any, schema: pa.Schema) -> None:
        self.fmt, self.sink, self.schema, self.rows = fmt, sink, schema, 0
        self._parquet: Any = None

    def write(self, batch: pa.RecordBatch) -> None:
        import pyarrow as pa

        data = pa.Table.from_batches([batch])
        if self.fmt == "json":
            self.sink.write(to_json_lines(data).encode())
        elif self.fmt == "csv":
            self.sink.write(to_csv(data, header=self.rows == 0))
        else:
            self._parquet_writer(batch.schema).write_table(data)
        self.rows += batch.num_rows

    def _parquet_writer(self, schema: pa.Schema) -> Any:
        import pyarrow.parquet as pq

        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.sink, schema)
        return self._parquet

    def close(self) -> None:
        if self.fmt == "parquet":
            self._parquet_writer(self.schema).close()
        elif self.fmt == "csv" and self.rows == 0:
            self.sink.write(to_csv(self.schema.empty_table()))


def rich_table(data: pa.Table, title: str | None = None) -> Any:
    """A rich Table for a terminal (columns in HIDDEN_IN_TABLE and binary/list columns
    left out; floats to 3 decimals; times to the second; sources by file name)."""
    import pyarrow as pa
    from rich.table import Table
    from rich.text import Text

    keep = [
        n
        for n, f in zip(data.column_names, data.schema, strict=True)
        if n not in HIDDEN_IN_TABLE
        and not (pa.types.is_binary(f.type) or pa.types.is_list(f.type))
    ]
    # a source is shown by its file name (the whole URI is in json/csv/parquet output)
    out = Table(title=title, show_lines=False, header_style="bold")
    for n in keep:
        out.add_column("source" if n == "source_uri" else n, overflow="fold")
    for row in data.select(keep).to_pylist():
        if isinstance(row.get("source_uri"), str):
            row["source_uri"] = row["source_uri"].rstrip("/").rsplit("/", 1)[-1]
        # Text: values are data, never rich markup (a camera "[/gate]" would raise)
        out.add_row(*(Text(_cell(row[n])) for n in keep))
    return out


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, datetime):
        return v.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)
