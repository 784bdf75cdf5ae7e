"""``avrl info`` and ``avrl import-weights``: size a model, turn pretrained weights into one."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from avrl_batch.cli import app


@app.command("info")
def info(
    preset: str = typer.Option("paper", help="model preset: paper, small, tiny or tiny96"),
    fusion: str | None = typer.Option(
        None, help="concat, concat_ln, concat_um, add or lf (default: the preset's)"
    ),
    modality: str | None = typer.Option(None, help="av, video or audio (default: av)"),
    model: Path | None = typer.Option(
        None, help="describe this model file instead (its id, config and metadata)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Parameter counts and GFLOPs per clip of a model, per part, to size a GPU fleet.

    Example: avrl info --preset paper --fusion lf --json
    """
    from avrl_batch.config import preset as get_preset

    header = {}
    if model is not None:
        from avrl_batch.modelfile import load_model

        loaded = load_model(model)
        cfg = loaded.cfg
        header = {
            "model_file": str(model),
            "model_id": loaded.model_id,
            "classes": list(cfg.class_names),
            "normal_classes": list(cfg.normal_classes),
            "lineage": loaded.meta.get("lineage", []),  # parent first
            "meta": loaded.meta,
        }
    else:
        cfg = get_preset(preset, fusion=fusion, modality=modality)
    from avrl_batch.model.summary import PARTS, model_summary  # torch: after option checks

    summary = {**header, **model_summary(cfg)}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(  # Text: the preset comes from the model file
        title=Text(
            f"AVRL {cfg.preset}: depth {cfg.depth}, fusion {cfg.fusion}, modality {cfg.modality}"
        )
    )
    table.add_column("part")
    table.add_column("parameters", justify="right")
    table.add_column("GFLOPs / clip", justify="right")
    for part in (*PARTS, "total"):
        table.add_row(
            part, f"{summary['params'][part]:,}", f"{summary['gflops_per_clip'][part]:.3f}"
        )
    console = Console()
    if header:
        meta = header["meta"]
        console.print(  # Text: a path or metadata with [brackets] is not rich markup
            Text(f"{header['model_file']}: {header['model_id']}  meta {meta}")
        )
        classes = cfg.classes
        console.print(Text(
            f"classes: {', '.join(classes.names)} (normal: {', '.join(sorted(classes.normal))})"
        ))
        if meta.get("lineage"):
            console.print(Text("fine-tuned from: " + " <- ".join(meta["lineage"])))
    console.print(table)
    console.print(
        f"inputs per clip: video {summary['inputs']['video']}, audio {summary['inputs']['audio']}"
        " (GFLOPs = 2 x MACs of conv/matmul, torch FLOP counter, batch 1)"
    )


@app.command("import-weights")
def import_weights(
    out: Path = typer.Option(..., help="model file to write"),
    vggish: Path | None = typer.Option(None, help="torchvggish vggish-10086976.pth"),
    r3d: Path | None = typer.Option(None, help="3D-ResNets-PyTorch checkpoint (r3d34_K_200ep.pth)"),
    preset: str = typer.Option("paper", help="model preset the weights fit: paper, small, tiny"),
    fusion: str | None = typer.Option(None, help="fusion of the model to build"),
    modality: str | None = typer.Option(None, help="av, video or audio"),
    seed: int = typer.Option(0, help="seed of the (untrained) head and fusion initialisation"),
) -> None:
    """Build a model file from pretrained trunks: the head starts random (seeded), for training.

    Example: avrl import-weights --vggish vggish-10086976.pth --r3d r3d34_K_200ep.pth
    --out paper.avrl
    """
    from avrl_batch.config import preset as get_preset
    from avrl_batch.errors import ConfigError

    if vggish is None and r3d is None:
        raise ConfigError("give --vggish FILE, --r3d FILE or both")
    cfg = get_preset(preset, fusion=fusion, modality=modality)

    import torch  # after the option checks: a typo answers instantly

    from avrl_batch.model import build_model
    from avrl_batch.model.weights import apply_pretrained
    from avrl_batch.modelfile import load_weights_only, save_model
    torch.manual_seed(seed)
    model = build_model(cfg)
    vggish_sd = load_weights_only(vggish, str(vggish)) if vggish else None
    r3d_ckpt = load_weights_only(r3d, str(r3d)) if r3d else None
    filled = apply_pretrained(
        model, vggish=vggish_sd, r3d=r3d_ckpt, vggish_source=str(vggish), r3d_source=str(r3d)
    )
    meta = {
        "source": "import-weights",
        "vggish": vggish.name if vggish else None,
        "r3d": r3d.name if r3d else None,
        "seed": seed,
    }
    model_id = save_model(out, model, cfg, meta)
    typer.echo(f"wrote {out} ({model_id}): {len(filled)} pretrained tensors, head random")
