"""``avrl compact``: rewrite a scan output's per-source objects into few large files."""

from __future__ import annotations

import json

import typer

from avrl_batch.cli import app
from avrl_batch.commands.options import EndpointUrl


@app.command("compact")
def compact(
    out: str = typer.Argument(..., help="a scan output root (local or s3://)"),
    target_mb: float = typer.Option(
        128.0, "--target-mb", help="about this many MB of input per compacted file"
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="say what would be compacted; write and delete nothing"
    ),
    endpoint_url: EndpointUrl = None,
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Rewrite each (table, date, camera) partition's per-source windows, unreadable and events
    objects into a few compacted files (about --target-mb each), safely next to a running
    scan: queries show the same rows before, during and after, and a rerun of the scan skips
    the compacted sources. Readers without avrl (pyarrow, DuckDB, Polars, Spark) read the
    compacted tables like the per-source ones.

    Example: avrl compact s3://archive-scans/out --endpoint-url http://minio:9000
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from avrl_batch.scan.compact import compact as run_compact

    if as_json or not Console(stderr=True).is_terminal:
        summary = run_compact(out, target_mb=target_mb, endpoint_url=endpoint_url,
                              dry_run=dry_run)
    else:
        with Progress(TextColumn("[bold]compact[/bold]"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("partitions"), console=Console(stderr=True),
                      transient=True) as bar:
            task = bar.add_task("compact", total=None)
            summary = run_compact(
                out, target_mb=target_mb, endpoint_url=endpoint_url, dry_run=dry_run,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        verb = "would compact" if dry_run else "compacted"
        typer.echo(
            f"{verb} {summary.partitions_compacted} of {summary.partitions} partitions: "
            f"{summary.sources_compacted} sources taken in, {summary.sources_dropped} older "
            f"versions dropped, {summary.files_before} files -> {summary.files_after} "
            f"({summary.bytes_written / 1e6:.1f} MB written) in {summary.wall_s:.1f} s"
        )
        if summary.sources_waiting:
            typer.echo(f"{summary.sources_waiting} sources changed while read: left for the "
                       "next compaction")
    for e in summary.errors:
        typer.echo(f"not compacted: {e['partition']}: {e['error_type']}: {e['message']}",
                   err=True)
    if summary.errors:
        raise typer.Exit(1)
