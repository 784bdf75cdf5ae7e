"""``avrl query`` and ``avrl report``: read a scan's event logs (DuckDB) and review them."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from avrl_batch.cli import app
from avrl_batch.commands.options import EndpointUrl

if TYPE_CHECKING:
    import pyarrow as pa

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
    table: str = typer.Option("events", "--table", "-t", help="events, windows or errors"),
    sql: str | None = typer.Option(
        None, help="your own SELECT over the views events, windows, errors (the filters "
        "above narrow events and windows first)"
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
) -> None:
    """Query the events, windows or errors of a scan with filters or your own SQL (DuckDB).

    Examples:

      avrl query out/ --label fight --label shoot --since 2026-03-01 --min-score 0.8

      avrl query s3://bucket/scans --camera cam01 --format csv > cam01.csv

      avrl query out/ --sql "SELECT e.label, count(*) AS n, avg(w.score) FROM events e
      JOIN windows w ON w.source_uri = e.source_uri AND w.start_s >= e.start_s AND
      w.end_s <= e.end_s GROUP BY e.label"
    """
    from avrl_batch.query import QueryFilters, parse_time, run_query

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
    data = run_query(
        out, table=table, filters=filters, sql=sql, limit=limit, endpoint_url=endpoint_url,
        model_id=model_id, note=lambda line: typer.echo(f"note: {line}", err=True),
    )
    what = "rows" if sql else table
    if fmt == "table":
        _print_table(data, output, what, filters.is_empty)
    else:
        _write_rows(data, fmt, output, what)


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


def _print_table(data: pa.Table, output: Path | None, what: str, unfiltered: bool) -> None:
    from rich.console import Console

    from avrl_batch.query import rich_table

    if output is not None:
        text = io.StringIO()
        Console(file=text, width=200).print(rich_table(data))
        _write_file(output, text.getvalue().encode())
        return
    console = Console()
    if data.num_rows == 0:
        console.print(f"no {what} match" + ("" if unfiltered else " these filters"))
        return
    console.print(rich_table(data, title=f"{data.num_rows} {what}"))


def _write_rows(data: pa.Table, fmt: str, output: Path | None, what: str) -> None:
    """json, csv or parquet to --output (with a count on stderr) or to stdout."""
    from avrl_batch.query import to_csv, to_json_lines, to_parquet

    if fmt == "json":
        payload = to_json_lines(data).encode()
    elif fmt == "csv":
        payload = to_csv(data)
    else:
        payload = to_parquet(data)
    if output is not None:
        _write_file(output, payload)
        typer.echo(f"{data.num_rows} {what} -> {output}", err=True)
    else:
        sys.stdout.buffer.write(payload)
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
