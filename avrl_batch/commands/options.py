"""Options that several commands take, written once (``Annotated`` types for Typer)."""

from __future__ import annotations

from typing import Annotated

import typer

# the timeline settings (scan/timeline.TimelineConfig): `avrl scan` and `avrl retimeline`
TimelineRule = Annotated[str, typer.Option(
    "--timeline",
    help="incident: one event per stretch of anomalous windows, labelled by the majority "
    "class; class: each anomaly class tracked on its own (labels may overlap)",
)]
Enter = Annotated[float | None, typer.Option(
    "--enter", help="event starts at this probability (anomaly share, or the class's) [0.6]"
)]
Exit = Annotated[float | None, typer.Option("--exit", help="event goes on while >= this [0.4]")]
MergeGap = Annotated[float | None, typer.Option(
    "--merge-gap", help="merge events closer than s [4]"
)]
MinEvent = Annotated[float | None, typer.Option(
    "--min-event", help="drop events shorter than s [0]"
)]
Smooth = Annotated[int | None, typer.Option(
    "--smooth", help="moving mean over this many windows before the thresholds [1: none]"
)]
EndpointUrl = Annotated[str | None, typer.Option(
    "--endpoint-url", help="S3-compatible endpoint (MinIO, Ceph); default AWS_ENDPOINT_URL"
)]
