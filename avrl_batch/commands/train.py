"""``avrl prepare``, ``avrl train`` and ``avrl evaluate``."""

from __future__ import annotations

import json
from typing import Any

import typer

from avrl_batch.cli import app

_ENDPOINT_HELP = "S3-compatible endpoint (MinIO, Ceph); default: AWS_ENDPOINT_URL"
_ADDRESS_HELP = "Ray cluster: none = local Ray on this machine, 'auto', or ray://host:10001"


@app.command("prepare")
def prepare_cmd(
    manifest: str = typer.Argument(
        ..., help="clip manifest (Parquet or CSV: uri,label[,split,dark]) or intervals of "
        "recordings (uri or source_uri,label,start_s,end_s[,split,dark])"
    ),
    out: str = typer.Option(..., "--out", help="where the shards go (path or s3://bucket/prefix)"),
    preset: str = typer.Option("tiny", help="model preset whose geometry to decode for"),
    val_fraction: float = typer.Option(
        0.1, help="held out for validation if no val split: share of each class's train clips "
        "(clips) or of the recordings (intervals)"
    ),
    classes: str | None = typer.Option(
        None, help="the classes in output order, comma-separated (default: the manifest's "
        "labels; SHADE's nine when all are SHADE's)"
    ),
    normal: list[str] = typer.Option(
        [], "--normal", help="a normal (no anomaly) class, repeatable; needed unless the "
        "classes are SHADE's"
    ),
    clip_stride: float | None = typer.Option(
        None, help="intervals: seconds between clip starts inside an interval (default: half "
        "the model window)"
    ),
    background: str | None = typer.Option(
        None, help="intervals: sample clips of this normal label from the unannotated stretches"
    ),
    background_ratio: float = typer.Option(
        1.0, help="intervals: background clips per annotated clip of a recording"
    ),
    test_fraction: float = typer.Option(
        0.2, help="intervals without a split column: share of the recordings for test"
    ),
    seed: int = typer.Option(0, help="intervals: seed of the recording splits and background"),
    address: str | None = typer.Option(None, help=_ADDRESS_HELP),
    endpoint_url: str | None = typer.Option(None, help=_ENDPOINT_HELP),
) -> None:
    """Decode every clip once (Ray Data, in parallel) into tensor shards for training.

    Example: avrl prepare synth/clips/manifest.parquet --out prepared --preset tiny
    (intervals: avrl prepare incidents.csv --out prepared --normal calm --background calm)
    """
    from rich.console import Console

    from avrl_batch.config import preset as get_preset
    from avrl_batch.train.intervals import IntervalOptions
    from avrl_batch.train.prepare import prepare

    console = Console(stderr=True)
    cfg = get_preset(preset)
    prepared = prepare(
        manifest,
        out,
        cfg,
        endpoint_url=endpoint_url,
        val_fraction=val_fraction,
        classes=tuple(c.strip() for c in classes.split(",") if c.strip()) if classes else None,
        normal=tuple(normal) or None,
        intervals=IntervalOptions(
            window_s=cfg.window_s,
            clip_stride_s=clip_stride,
            background=background,
            background_ratio=background_ratio,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
        ),
        address=address,
        log=lambda line: console.print(
            line, style="yellow", markup=False, highlight=False, soft_wrap=True
        ),
    )
    counts = ", ".join(f"{s} {prepared.n_clips(s)}" for s in prepared.counts)
    typer.echo(
        f"prepared {out}: {counts} clips (T={prepared.frames}, {prepared.size}x{prepared.size}, "
        f"E={prepared.audio_examples}); {len(prepared.skipped)} skipped as unreadable; classes "
        f"{', '.join(prepared.class_names)} (normal: {', '.join(sorted(prepared.classes.normal))})"
    )


@app.command("train")
def train_cmd(
    data: str | None = typer.Argument(
        None, help="prepared dataset (the --out of avrl prepare); with --resume, the run's"
    ),
    out: str = typer.Option(
        ..., "--out", help="checkpoints and model.avrl go here (path or s3://)"
    ),
    preset: str | None = typer.Option(
        None,
        help="model preset: paper, small, tiny or tiny96 (default tiny; with --resume, the run's)",
    ),
    fusion: str | None = typer.Option(None, help="concat, concat_ln, concat_um, add or lf"),
    modality: str | None = typer.Option(None, help="av, video or audio (Table V ablation)"),
    workers: int = typer.Option(1, help="Ray Train workers (DDP processes)"),
    gpu: bool = typer.Option(False, "--gpu/--no-gpu", help="one GPU per worker, NCCL, autocast"),
    cpus_per_worker: float | None = typer.Option(
        None, help="CPUs each worker reserves (default: 1, fewer on a small machine)"
    ),
    epochs: int | None = typer.Option(
        None, help="epochs (paper: 80); with --resume the run's, or more to extend it"
    ),
    batch_size: int | None = typer.Option(
        None, help="global batch, split over workers (paper: 12)"
    ),
    lr: float | None = typer.Option(
        None, help="initial learning rate (default: 1e-2 with sgd as in the paper, 1e-3 with adam)"
    ),
    optimizer: str | None = typer.Option(
        None,
        help="sgd (the paper's) or adam; default: adam for the from-scratch tiny presets, else sgd",
    ),
    audio_dropout: float | None = typer.Option(
        None, help="probability of hiding a clip's audio in training (modality dropout)"
    ),
    schedule: str | None = typer.Option(
        None,
        help="plateau (the paper's: lr x0.1 when validation loss stalls) or cosine (anneal "
        "to the minimum over --epochs) [plateau]",
    ),
    seed: int | None = typer.Option(
        None,
        help="seed of the initial weights, flips, dropout and data order (same seed, data and "
        "workers: same model)",
    ),
    init: str | None = typer.Option(
        None, "--init", help="fine-tune from this model file: its network and matching "
        "weights (the head is new when the data's classes differ)"
    ),
    freeze: str | None = typer.Option(
        None, help="with --init: keep video, audio or trunks (both) fixed"
    ),
    max_failures: int = typer.Option(1, help="worker failures to recover from (FailureConfig)"),
    resume: bool = typer.Option(
        False, "--resume", help="continue the run under --out with the settings it was started "
        "with (OUT/run.json); a differing one is refused, a larger --epochs extends the run"
    ),
    address: str | None = typer.Option(None, help=_ADDRESS_HELP),
    endpoint_url: str | None = typer.Option(None, help=_ENDPOINT_HELP),
) -> None:
    """Train AVRL with Ray Train (DDP) on prepared clips; writes OUT/model.avrl.

    Example: avrl train prepared --out runs/av --preset tiny --workers 2 --epochs 10
    (after a crash: avrl train --out runs/av --resume; to train on: --resume --epochs 20;
    fine-tune: avrl train mine --out runs/mine --init runs/av/model.avrl --epochs 5)
    """
    from avrl_batch.train.trainer import run_settings, train

    run = run_settings(
        out,
        resume=resume,
        data_uri=data,
        preset_name=preset,
        fusion=fusion,
        modality=modality,
        endpoint_url=endpoint_url,
        optimizer=optimizer,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        audio_dropout=audio_dropout,
        seed=seed,
        schedule=schedule,
        init=init,
        freeze=freeze,
    )
    display = EpochDisplay(run.cfg.class_names)
    result = train(
        run.data_uri,
        out,
        run.cfg,
        run.tc,
        workers=workers,
        use_gpu=gpu,
        cpus_per_worker=cpus_per_worker,
        resume=resume,
        max_failures=max_failures,
        address=address,
        endpoint_url=endpoint_url,
        on_epoch=display.row,
        log=display.note,
    )
    display.summary(result.history)
    typer.echo(f"model {result.model_id} written to {result.model_uri}")


class EpochDisplay:
    """One line per epoch as it is reported, then the whole history as a table."""

    def __init__(self, class_names: tuple[str, ...]) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.class_names = class_names

    def note(self, line: str) -> None:
        # worker lines carry "[rank0]"-style prefixes and paths: print them as text, not markup
        self.console.print(line, style="yellow", markup=False, highlight=False, soft_wrap=True)

    def row(self, m: dict[str, Any]) -> None:
        resumed = (
            f"  (resumed after epoch {m['resumed_from_epoch']})"
            if m.get("resumed_from_epoch")
            else ""
        )
        self.console.print(
            f"epoch {m['epoch']:>3}  lr {m['lr']:.1e}  train loss {m['train_loss']:.4f} "
            f"acc {100 * m['train_acc']:5.1f}%  val loss {m['val_loss']:.4f} "
            f"acc {100 * m['val_acc']:5.1f}%  mean/class {_pct(m['val_mean_class_acc'])}{resumed}",
            highlight=False,
        )

    def summary(self, history: list[dict[str, Any]]) -> None:
        from rich.table import Table

        table = Table(title="training")
        for col in ("epoch", "lr", "train loss", "train acc", "val loss", "val acc", "mean/class"):
            table.add_column(col, justify="right")
        for m in history:
            table.add_row(
                str(m["epoch"]),
                f"{m['lr']:.1e}",
                f"{m['train_loss']:.4f}",
                _pct(m["train_acc"]),
                f"{m['val_loss']:.4f}",
                _pct(m["val_acc"]),
                _pct(m["val_mean_class_acc"]),
            )
        self.console.print(table)
        if history:
            per = history[-1].get("val_per_class_acc") or {}
            self.console.print(
                "val accuracy per class (%): "
                + "  ".join(f"{n} {_pct(per.get(n))}" for n in self.class_names),
                highlight=False,
                soft_wrap=True,
            )


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


@app.command("evaluate")
def evaluate_cmd(
    model: str = typer.Argument(..., help="model file (path or s3://...)"),
    data: str = typer.Option(..., "--data", help="prepared dataset (avrl prepare --out)"),
    split: str = typer.Option("test", help="train, val or test"),
    subset: str = typer.Option("all", help="all, dark (Table IV) or light"),
    patch: str | None = typer.Option(None, help="occlusion for Fig. 6: temporal or spatial"),
    ratio: float = typer.Option(0.0, help="share of frames (temporal) or frame area (spatial)"),
    compare: list[str] = typer.Option([], "--compare", help="more models, side by side (Table V)"),
    plot: str | None = typer.Option(None, help="write the confusion matrix (Fig. 4) to this PNG"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    endpoint_url: str | None = typer.Option(None, help=_ENDPOINT_HELP),
) -> None:
    """Per-class top-1 accuracy (Table II layout), confusion matrix, dark subset, occlusion.

    Example: avrl evaluate runs/av/model.avrl --data prepared --compare runs/video/model.avrl
    """
    from avrl_batch.train.evaluate import evaluate, plot_confusion, results_table

    results = evaluate(
        [model, *compare],
        data,
        split=split,
        subset=subset,
        patch=patch,
        ratio=ratio,
        endpoint_url=endpoint_url,
    )
    if plot:
        plot_confusion(results, plot)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    from rich.console import Console

    # wide enough for the whole Table II row (a pipe or a CI log has no terminal width)
    console = Console(width=40 + 12 * (len(results[0].class_names) + 2))
    console.print(results_table(results))
    if plot:
        console.print(f"confusion matrix written to {plot}", markup=False, highlight=False)
