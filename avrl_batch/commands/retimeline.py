"""``avrl retimeline``: re-apply timeline settings to a scan output without decoding."""

from __future__ import annotations

import json

import typer

from avrl_batch.cli import app
from avrl_batch.commands.options import (
    EndpointUrl,
    Enter,
    Exit,
    MergeGap,
    MinEvent,
    Smooth,
    TimelineRule,
)


@app.command("retimeline")
def retimeline(
    out: str = typer.Argument(..., help="a scan output root (local or s3://)"),
    timeline: TimelineRule = "incident",
    enter: Enter = None,
    exit_: Exit = None,
    merge_gap: MergeGap = None,
    min_event: MinEvent = None,
    smooth: Smooth = None,
    model_id: str | None = typer.Option(
        None, "--model-id", help="only the sources of this model id (default: every model's)"
    ),
    endpoint_url: EndpointUrl = None,
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Make OUT's events again from its stored window probabilities with other timeline
    settings: no decoding, no model. Each source's events object is replaced whole.

    Example: avrl retimeline scans/ --enter 0.8 --exit 0.5 --merge-gap 10
    """
    from avrl_batch.scan.retimeline import retimeline as run_retimeline
    from avrl_batch.scan.timeline import timeline_from_options

    tl = timeline_from_options(
        timeline, enter=enter, exit=exit_, merge_gap_s=merge_gap, min_event_s=min_event,
        smooth_windows=smooth,
    )
    summary = run_retimeline(out, tl, model_id=model_id, endpoint_url=endpoint_url)
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2, default=str))
        return
    typer.echo(
        f"retimeline {summary.scan_id}: {summary.sources} sources, {summary.events} events "
        f"({', '.join(f'{k} {v}' for k, v in summary.events_by_label.items()) or 'none'}) "
        f"in {summary.wall_s:.1f} s; {summary.thumbnails_missing} without a stored thumbnail"
    )
    for e in summary.errors:
        typer.echo(f"not redone: {e['uri']}: {e['error_type']}: {e['message']}", err=True)
    typer.echo(f"manifest: {summary.manifest}")
