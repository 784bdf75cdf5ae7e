"""``avrl clips``: a playable MP4 of every event in a scan output (``OUT/clips/``)."""

from __future__ import annotations

import json
from typing import Any

import typer

from avrl_batch.cli import app
from avrl_batch.commands.options import EndpointUrl


@app.command("clips")
def clips(
    out: str = typer.Argument(..., help="scan output: a folder, file:///path or s3://bucket/prefix"),
    margin: float = typer.Option(2.0, help="seconds of context before and after each event"),
    max_event: float = typer.Option(
        60.0, help="of a longer event only its first this-many seconds are cut"
    ),
    height: int = typer.Option(360, help="clip height in pixels (never upscaled)"),
    endpoint_url: EndpointUrl = None,
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Cut each event, with its sound, out of its recording into a small H.264 + AAC MP4
    under OUT/clips/date=…/camera=…/EVENT_ID.mp4 that any browser plays. A rerun cuts only
    the missing clips and removes those whose event is gone (a changed or rescanned file).

    Example: avrl clips out/ --margin 3   (then: avrl report out/ --html report.html)
    """
    from avrl_batch.clips import ClipSpec

    spec = ClipSpec(margin_s=margin, max_event_s=max_event, height=height)
    summary = run_clips(out, spec, endpoint_url=endpoint_url, show_progress=not as_json)
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    print_clip_summary(summary)


def run_clips(out: str, spec: Any, *, endpoint_url: str | None, show_progress: bool) -> Any:
    """sync_clips with a progress bar on a terminal (also used by ``avrl scan --clips``)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from avrl_batch.clips import sync_clips

    if not show_progress or not Console(stderr=True).is_terminal:
        return sync_clips(out, spec=spec, endpoint_url=endpoint_url)
    with Progress(TextColumn("[bold]clips[/bold]"), BarColumn(), MofNCompleteColumn(),
                  transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task("clips", total=None)
        return sync_clips(
            out, spec=spec, endpoint_url=endpoint_url,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )


def print_clip_summary(summary: Any) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console()
    console.print(
        f"clips: {summary.events} events, {summary.written} written, {summary.present} already "
        f"there, {summary.removed} removed (event gone), {len(summary.failed)} failed"
    )
    for event_id, message in summary.failed:
        console.print(Text(f"  failed {event_id}: {message}"))
