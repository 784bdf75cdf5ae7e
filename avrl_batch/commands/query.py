"""``avrl query`` and ``avrl report``: read a scan's event logs (DuckDB) and review them."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import typer

from avrl_batch.cli import app
from avrl_batch.commands.options import EndpointUrl

if TYPE_CHECKING:
    import pyarrow as pa

    from avrl_batch.query import QueryResult

FORMATS = ("table", "json", "csv", "parquet")
_EXT_FORMAT = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv",
               ".txt": "table"}


def _write_file(path: Path, data: bytes) -> None:
    """Write a result file, creating its folder (as `avrl scan --out` does); a path that
    cannot be written is one line, not a traceback."""
    from avrl_batch.errors import StorageError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise StorageError(
            f"cannot write {path}: {exc.strerror or exc}; choose another file"
        ) from None


@app.command("query")
def query(
    out: str = typer.Argument(..., help="scan output: a folder, file:///path or s3://bucket/prefix"),
    label: list[str] = typer.Option([], "--label", "-l", help="only this label (repeatable)"),
    camera: list[str] = typer.Option([], "--camera", "-c", help="only this camera (repeatable)"),
    since: str | None = typer.Option(
        None, help="start_time >= this (ISO 8601, e.g. 2026-03-01T08:00:00Z, or a date); UTC "
        "when no offset"
    ),
    until: str | None = typer.Option(None, help="start_time < this (same forms as --since)"),
    min_score: float | None = typer.Option(
        None, help="events: peak_score >= X; windows: score >= X"
    ),
    anomalies_only: bool = typer.Option(
        False, "--anomalies-only", help="windows whose top class is an anomaly"
    ),
    inferred_only: bool = typer.Option(
        False, "--inferred-only", help="windows the full model saw (not those a --cascade "
        "scan's screen passed over)"
    ),
    table: str = typer.Option(
        "events", "--table", "-t",
        help="events, windows, unreadable (stretches that could not be decoded) or errors",
    ),
    sql: str | None = typer.Option(
        None, help="your own SELECT over the views events, windows, unreadable, errors (the "
        "filters above narrow events, windows and unreadable first)"
    ),
    fmt: str | None = typer.Option(
        None, "--format", "-f",
        help="table, json (one object per line), csv or parquet (needs --output); default: "
        "table on a terminal, json when piped, or from --output's extension",
    ),
    output: Path | None = typer.Option(None, "--output", "-o", help="write to this file"),
    endpoint_url: EndpointUrl = None,
    limit: int | None = typer.Option(None, help="at most N rows"),
    model_id: str | None = typer.Option(
        None, "--model", help="the model id whose results to show (default: the newest scan's)"
    ),
    memory_limit: str = typer.Option(
        "1GB", help="DuckDB's memory for the query; a larger sort spills to a temporary "
        "folder (rows stream out as they come, so the result may be larger than this)"
    ),
) -> None:
    """Query the events, windows, unreadable spans or errors of a scan with filters or your
    own SQL (DuckDB).

    Examples:

      avrl query out/ --label fight --label shoot --since 2026-03-01 --min-score 0.8

      avrl query out/ -t unreadable --camera cam01

      avrl query s3://bucket/scans --camera cam01 --format csv > cam01.csv

      avrl query out/ --sql "SELECT e.label, count(*) AS n, avg(w.score) FROM events e
      JOIN windows w ON w.source_uri = e.source_uri AND w.start_s >= e.start_s AND
      w.end_s <= e.end_s GROUP BY e.label"
    """
    from avrl_batch.query import QueryFilters, parse_time, stream_query

    fmt = _output_format(fmt, output)
    filters = QueryFilters(
        labels=tuple(label),
        cameras=tuple(camera),
        since=parse_time(since, option="--since") if since else None,
        until=parse_time(until, option="--until") if until else None,
        min_score=min_score,
        anomalies_only=anomalies_only,
        inferred_only=inferred_only,
    )
    with stream_query(
        out, table=table, filters=filters, sql=sql, limit=limit, endpoint_url=endpoint_url,
        model_id=model_id, note=lambda line: typer.echo(f"note: {line}", err=True),
        memory_limit=memory_limit,
    ) as result:
        what = "rows" if sql else table
        if fmt == "table":
            _print_table(result, output, what, filters.is_empty)
        else:
            _write_rows(result, fmt, output, what)


def _output_format(fmt: str | None, output: Path | None) -> str:
    """--format, or the one --output's extension names, or table on a terminal, json piped."""
    from avrl_batch.errors import ConfigError

    if fmt is None:
        if output is not None:
            fmt = _EXT_FORMAT.get(output.suffix.lower(), "json")
        else:
            fmt = "table" if sys.stdout.isatty() else "json"
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "parquet" and output is None:
        raise ConfigError("--format parquet needs --output FILE")
    return fmt


def _print_table(result: QueryResult, output: Path | None, what: str, unfiltered: bool) -> None:
    """A terminal table, one per TABLE_ROWS rows as they stream (a result of any size is
    never held whole); the last line counts the rows."""
    import pyarrow as pa
    from rich.console import Console

    from avrl_batch.query import rich_table

    sink = open(output, "w") if output is not None else None  # noqa: SIM115 - closed below
    console = Console(file=sink, width=200) if sink is not None else Console()
    n = 0
    try:
        for rows in _chunks(result, TABLE_ROWS):
            console.print(rich_table(pa.Table.from_batches(rows)))
            n += sum(b.num_rows for b in rows)
        if sink is None:
            if n == 0:
                console.print(f"no {what} match" + ("" if unfiltered else " these filters"))
            else:
                console.print(f"{n} {what}")
    except OSError as exc:
        raise _unwritable(output, exc) from None
    finally:
        if sink is not None:
            sink.close()


TABLE_ROWS = 1000  # rows per printed table


def _chunks(result: QueryResult, rows: int) -> Iterator[list[pa.RecordBatch]]:
    """The result's batches grouped into lists of about ``rows`` rows."""
    group: list[pa.RecordBatch] = []
    size = 0
    for batch in result:
        group.append(batch)
        size += batch.num_rows
        if size >= rows:
            yield group
            group, size = [], 0
    if group:
        yield group


def _unwritable(output: Path | None, exc: OSError) -> Exception:
    from avrl_batch.errors import StorageError

    return StorageError(f"cannot write {output}: {exc.strerror or exc}; choose another file")


def _write_rows(result: QueryResult, fmt: str, output: Path | None, what: str) -> None:
    """json, csv or parquet to --output (with a count on stderr) or to stdout, batch by
    batch as the rows stream out of DuckDB."""
    from avrl_batch.query import RowWriter

    try:
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
        with (open(output, "wb") if output is not None else _stdout()) as sink:
            writer = RowWriter(fmt, sink, result.schema)
            for batch in result:
                writer.write(batch)
            writer.close()
    except OSError as exc:
        raise _unwritable(output, exc) from None
    if output is not None:
        typer.echo(f"{writer.rows} {what} -> {output}", err=True)


@contextlib.contextmanager
def _stdout() -> Iterator[BinaryIO]:
    yield sys.stdout.buffer
    sys.stdout.flush()


@app.command("report")
def report(
    out: str = typer.Argument(..., help="scan output: a folder, file:///path or s3://bucket/prefix"),
    html: Path = typer.Option(..., "--html", help="write the report to this HTML file"),
    clip_expiry: float | None = typer.Option(
        None, help="S3 output: link each event's clip by a presigned URL valid this many hours "
        "(at most 168; whoever has the page can play the clips until then); default: no S3 "
        "clips linked. Local clips are always linked, relative to the HTML file"
    ),
    endpoint_url: EndpointUrl = None,
    model_id: str | None = typer.Option(
        None, "--model", help="the model id whose results to show (default: the newest scan's)"
    ),
) -> None:
    """One self-contained HTML file to review a scan: a timeline per camera, every event
    with its thumbnail, its clip and audio (after `avrl clips`), verdict buttons whose marks
    export as verdicts.csv, counts by label and camera, and the failed sources.

    Example: avrl report out/ --html report.html   (open it in any browser; works offline)
    """
    from avrl_batch.report import build_report

    expiry_s = None if clip_expiry is None else int(round(clip_expiry * 3600))
    summary = build_report(
        out, endpoint_url=endpoint_url, model_id=model_id, html_path=str(html),
        clip_expiry_s=expiry_s, note=lambda line: typer.echo(f"note: {line}", err=True),
    )
    for line in summary.warnings:
        typer.echo(f"warning: {line}", err=True)
    _write_file(html, summary.html.encode("utf-8"))
    typer.echo(
        f"report: {summary.n_events} events, {summary.n_cameras} cameras, "
        f"{summary.n_errors} errors -> {html}"
    )
