"""``avrl demo``: the whole chain on embedded defaults (local Ray, local folder).

Each step runs the real CLI command with the arguments a user would type, so the demo
shows exactly the commands to reuse on your own footage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from avrl_batch.cli import app

if TYPE_CHECKING:
    from rich.console import Console


@app.command("demo")
def demo(
    workdir: Path = typer.Option(Path("avrl-demo"), help="where footage, model and scan go"),
    epochs: int = typer.Option(20, help="training epochs of the tiny model"),
    workers: int = typer.Option(2, help="Ray Train workers"),
    seed: int = typer.Option(1, help="seed of the synthetic footage"),
) -> None:
    """Synthetic footage -> prepare -> train (tiny) -> evaluate -> scan -> query -> report.

    Example: avrl demo --workdir /tmp/avrl-demo
    """
    from rich.console import Console

    console = Console(stderr=True)
    where = _Places.under(workdir.resolve())
    steps = _steps(where, epochs=epochs, workers=workers, seed=seed)
    if where.model.exists():
        # a previous demo trained here already: reuse its model (delete WORKDIR to retrain)
        steps = [s for s in steps if s[1][0] not in ("prepare", "train")]
    t_all = time.perf_counter()
    timings = _run_steps(console, steps)
    _print_summary(console, where, timings, time.perf_counter() - t_all)


@dataclass(frozen=True)
class _Places:
    """Where each step of the demo writes, under WORKDIR."""

    data: Path  # footage + ground truth
    prepared: Path
    run: Path
    model: Path
    scans: Path
    html: Path

    @classmethod
    def under(cls, workdir: Path) -> _Places:
        run = workdir / "run"
        return cls(
            workdir / "footage", workdir / "prepared", run, run / "model.avrl",
            workdir / "scans", workdir / "report.html",
        )


def _steps(where: _Places, *, epochs: int, workers: int, seed: int) -> list[tuple[str, list[str]]]:
    """(title, avrl arguments) of each step, as a user would type them."""
    data, prepared, run, scans, model = (
        where.data, where.prepared, where.run, where.scans, where.model
    )
    return [
        ("synthesise footage", ["synth", str(data), "--preset", "demo", "--seed", str(seed)]),
        # tiny96: the tiny network on the demo footage's own 96x96 frames (at tiny's 48x48 a
        # person is 2-4 px wide, and the model took calm footage for knockdowns: event F1 0.1-0.3)
        (
            "prepare clips",
            ["prepare", str(data / "manifest.parquet"), "--out", str(prepared),
             "--preset", "tiny96"],
        ),
        (
            "train the tiny model",
            ["train", str(prepared), "--out", str(run), "--preset", "tiny96",
             "--workers", str(workers), "--epochs", str(epochs), "--audio-dropout", "0.3",
             "--schedule", "cosine"],
        ),
        ("evaluate (Table II layout)", ["evaluate", str(model), "--data", str(prepared)]),
        (
            "scan the recordings",
            # windows every second (half the 2-s window): finer event edges, more looks
            ["scan", str(data / "recordings"), "--model", str(model), "--out", str(scans),
             "--stride", "1", "--truth", str(data / "ground_truth.parquet")],
        ),
        (
            "query the events",
            ["query", str(scans), "--format", "table", "--sql",
             "SELECT camera, label, strftime(start_time, '%H:%M:%S') AS start, "
             "round(end_s - start_s, 1) AS seconds, round(peak_score, 2) AS peak "
             "FROM events ORDER BY camera, start_time LIMIT 20"],
        ),
        ("write the HTML report", ["report", str(scans), "--html", str(where.html)]),
    ]


def _run_steps(console: Console, steps: list[tuple[str, list[str]]]) -> list[tuple[str, float]]:
    """Run each step through the real CLI; (title, seconds) of each."""
    timings: list[tuple[str, float]] = []
    for i, (title, argv) in enumerate(steps, 1):
        console.rule(f"[bold]{i}/{len(steps)} {title}[/bold]")
        console.print(f"$ avrl {' '.join(argv)}", style="dim", markup=False, highlight=False)
        t0 = time.perf_counter()
        rv = app(args=argv, standalone_mode=False)
        if isinstance(rv, int) and rv:
            raise typer.Exit(rv)
        timings.append((title, time.perf_counter() - t0))
    return timings


def _print_summary(
    console: Console, where: _Places, timings: list[tuple[str, float]], seconds: float
) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"avrl demo finished in {seconds:.0f} s")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for title, sec in timings:
        table.add_row(title, f"{sec:.1f}")
    console.print(table)
    places = Table(title="where everything is", show_header=False)
    for name, path in [
        ("footage + ground truth", where.data),
        ("prepared shards", where.prepared),
        ("model", where.model),
        ("scan output", where.scans),
        ("HTML report", where.html),
    ]:
        places.add_row(name, Text(str(path)))  # a path is text, not rich markup
    console.print(places)
    console.print(
        f"next: avrl query {where.scans} --label fight --format csv", markup=False, highlight=False
    )
