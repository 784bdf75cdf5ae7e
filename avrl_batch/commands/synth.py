"""`avrl synth`: write the deterministic synthetic footage set (clips + long recordings)."""

from __future__ import annotations

from pathlib import Path

import typer

from avrl_batch.cli import app


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write into (created if missing)."),
    preset: str = typer.Option("ci", "--preset", help="ci | demo | bench | paper-size | cascade"),
    seed: int = typer.Option(0, "--seed", help="Same preset + seed = identical files."),
    clips: bool = typer.Option(True, "--clips/--no-clips", help="Write the labelled clip set."),
    recordings: bool = typer.Option(
        True, "--recordings/--no-recordings", help="Write the long camera recordings."
    ),
    minutes: float = typer.Option(
        None, "--minutes", help="Each recording this long (default: the preset's lengths); "
        "events keep the preset's rate per minute."
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, help="Recordings written in this many processes at once."
    ),
) -> None:
    """Generate labelled clips (manifest.parquet/.csv) and camera recordings with ground truth.

    Example: avrl synth data/ci --preset ci --seed 1

    Example: avrl synth data/long --preset cascade --no-clips --minutes 20 --workers 2
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from avrl_batch.data.synth import generate, get_preset

    get_preset(preset)  # unknown preset: one-line error before any output
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<11}"),
        BarColumn(),
        TextColumn("{task.completed:>7.0f}/{task.total:<7.0f}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: float, total: float) -> None:
            if stage not in tasks:
                label = "clips" if stage == "clips" else "recordings"
                tasks[stage] = bar.add_task(label, total=total)
            bar.update(tasks[stage], completed=done)

        result = generate(
            out, preset=preset, seed=seed, clips=clips, recordings=recordings,
            progress=progress, minutes=minutes, workers=workers,
        )
    typer.echo(
        f"clips: {result.n_clips}  recordings: {result.n_recordings}  time: {result.seconds:.1f} s"
    )
    if result.manifest_path:
        typer.echo(f"manifest: {result.manifest_path}")
    if result.ground_truth_path:
        typer.echo(f"ground truth: {result.ground_truth_path}")
