"""``avrl calibrate``: train the cascade's screen and write it into a copy of a model file."""

from __future__ import annotations

import json

import typer

from avrl_batch.cli import app
from avrl_batch.commands.options import EndpointUrl


@app.command("calibrate")
def calibrate_cmd(
    model: str = typer.Argument(..., help="model file (local or s3://...)"),
    data: list[str] = typer.Argument(
        ..., help="intervals of recordings: Parquet/CSV with uri|source_uri,label,start_s,end_s "
        "(one or more tables)"
    ),
    out: str = typer.Option(..., "--out", help="where to write the model file with its screen"),
    recall: float = typer.Option(
        0.97, help="share of anomaly windows the screen must pass on held-out windows"
    ),
    margin: int = typer.Option(1, help="windows decoded fully each side of a candidate"),
    per_class: bool = typer.Option(
        True, "--per-class/--pooled", help="--recall of each anomaly class (default), or of "
        "all anomalies pooled"
    ),
    recall_of: str = typer.Option(
        "events", "--recall-of", help="events (one counts when any of its windows is a "
        "candidate) or windows"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of lines"),
    endpoint_url: EndpointUrl = None,
) -> None:
    """Train the screening stage of `avrl scan --cascade` (a logistic regression over packet
    sizes, keyframe differences, audio log-mel energy and the model's own audio-branch
    feature of every window) on labelled recordings, with its threshold set for --recall on
    out-of-fold windows. The screen belongs to this model: calibrate again after retraining.

    Example: avrl calibrate run/model.avrl data/ground_truth.parquet --out run/model-screen.avrl

    Example: avrl calibrate run/model.avrl a/ground_truth.parquet b/ground_truth.parquet --out M2
    """
    from avrl_batch.train.calibrate import calibrate, summary

    screen = calibrate(
        model, data, out, recall=recall, margin_windows=margin, per_class=per_class,
        recall_of=recall_of, endpoint_url=endpoint_url,
        progress=None if as_json else typer.echo,
    )
    doc = {"model_file": out, **summary(screen)}
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    for name, h in doc["heads"].items():
        if h is None:
            typer.echo(f"{name:5s} head: none (no recording with audio)")
            continue
        typer.echo(
            f"{name:5s} head: threshold {h['threshold']:.4f}, held-out recall "
            f"{h['val_recall']:.3f} of {h['val_positives']} anomaly windows, passes "
            f"{h['val_pass_share']:.1%} of {h['val_windows']} windows"
        )
        by_class = ", ".join(f"{k} {v:.2f}" for k, v in h["val_recall_by_class"].items())
        typer.echo(f"      held-out recall of {doc['recall_of']} by class: {by_class}; "
                   f"{h['val_event_recall']:.3f} of {h['val_events']} events")
    typer.echo(
        f"audio head reads the model's audio branch: "
        f"{'yes, ' + str(doc['audio_net_dim']) + ' values' if doc['audio_net_dim'] else 'no'}; "
        f"video head decodes keyframes: {'yes' if doc['video_keyframes'] else 'no (packets only)'}"
    )
    typer.echo(f"wrote {out}")
