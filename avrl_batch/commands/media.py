"""``avrl probe``: what a media source holds, as the scan will see it."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer

from avrl_batch.cli import app


@app.command("probe")
def probe_cmd(
    source: str = typer.Argument(..., help="a local path, file:// or s3://bucket/key URI"),
    endpoint_url: str | None = typer.Option(
        None, "--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Duration, frame rate, size, codecs, audio, rotation and creation time of a video.

    Example: avrl probe s3://cams/lobby/lobby_20240501T120000Z.mp4 --json
    """
    from avrl_batch.media import probe
    from avrl_batch.storage import open_source

    with open_source(source, endpoint_url=endpoint_url) as f:
        info = probe(f)
    row = asdict(info)
    row["creation_time"] = info.creation_time.isoformat() if info.creation_time else None
    if as_json:
        typer.echo(json.dumps({"source": source, **row}))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    # the path and the container's strings are data, not rich markup
    table = Table(title=escape(source), show_header=False)
    for key, value in row.items():
        table.add_row(key, Text("-" if value is None else str(value)))
    Console().print(table)
