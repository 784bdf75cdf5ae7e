"""``avrl tune``: timeline operating points of a finished scan, without rescanning."""

from __future__ import annotations

import json

import typer

from avrl_batch.cli import app
from avrl_batch.commands.options import EndpointUrl


@app.command("tune")
def tune_cmd(
    out: str = typer.Argument(..., help="scan output (a folder or s3://bucket/prefix)"),
    truth: str = typer.Option(
        ..., "--truth", help="ground truth: Parquet/CSV with source_uri,label,start_s,end_s"
    ),
    model_id: str | None = typer.Option(
        None, help="the model whose windows to use (default: the latest scan's)"
    ),
    enter: list[float] = typer.Option(
        [], "--enter", help="enter thresholds to try, repeatable [0.3 to 0.9 by 0.1]"
    ),
    exit_: list[float] = typer.Option(
        [], "--exit", help="exit thresholds to try (those <= each enter), repeatable "
        "[0.2 to 0.8 by 0.1]"
    ),
    min_event: list[float] = typer.Option(
        [], "--min-event", help="minimum event lengths in s to try, repeatable [0]"
    ),
    max_false_alarms: float = typer.Option(
        1.0, help="false alarms per camera-hour the chosen setting may have"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    endpoint_url: EndpointUrl = None,
) -> None:
    """Sweep the timeline thresholds over a scan's stored window probabilities: event
    precision/recall/F1 at tIoU 0.3 and false alarms per camera-hour per setting, and the
    setting with the best recall within --max-false-alarms.

    Example: avrl tune out/ --truth data/ground_truth.parquet --min-event 0 --min-event 4
    """
    from avrl_batch.scan import tune as tuning

    result = tuning.tune(
        out,
        truth,
        model_id=model_id,
        enters=tuple(enter) or tuning.DEFAULT_ENTERS,
        exits=tuple(exit_) or tuning.DEFAULT_EXITS,
        min_events=tuple(min_event) or (0.0,),
        max_false_alarms=max_false_alarms,
        endpoint_url=endpoint_url,
    )
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{result.model_id}: {result.sources} recording(s), {result.camera_hours:.2f} "
        f"camera-hours, {result.truth_events} true events, tIoU {result.iou:g}"
    )
    for col in ("enter", "exit", "min event s", "precision", "recall", "F1", "tp", "fp", "fn",
                "false alarms / cam-h"):
        table.add_column(col, justify="right")
    for p in result.points:
        mark = "bold green" if p == result.best else None
        table.add_row(
            f"{p.enter:g}", f"{p.exit:g}", f"{p.min_event_s:g}", f"{p.precision:.3f}",
            f"{p.recall:.3f}", f"{p.f1:.3f}", str(p.tp), str(p.fp), str(p.fn),
            f"{p.false_alarms_per_hour:.2f}", style=mark,
        )
    console = Console(width=120)
    console.print(table)
    b = result.best
    if b is None:
        typer.echo(
            f"no setting keeps false alarms at or below {result.max_false_alarms:g} per "
            "camera-hour; try higher --enter or a --min-event"
        )
        return
    typer.echo(
        f"best recall at <= {result.max_false_alarms:g} false alarms per camera-hour: "
        f"--enter {b.enter:g} --exit {b.exit:g} --min-event {b.min_event_s:g} (recall "
        f"{b.recall:.3f}, precision {b.precision:.3f}, F1 {b.f1:.3f}, "
        f"{b.false_alarms_per_hour:.2f} false alarms / camera-hour); apply it with avrl "
        "retimeline OUT and these options (no decoding)"
    )
