"""``avrl demo``: the whole chain on embedded defaults (local Ray, local folder).

Each step runs the real CLI command with the arguments a user would type, so the demo
shows exactly the commands to reuse on your own footage.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from avrl_batch.cli import app


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
    from rich.table import Table
    from rich.text import Text

    console = Console(stderr=True)
    workdir = workdir.resolve()
    data, prepared, run = workdir / "footage", workdir / "prepared", workdir / "run"
    scans, html = workdir / "scans", workdir / "report.html"
    model = run / "model.avrl"
    steps: list[tuple[str, list[str]]] = [
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
        ("write the HTML report", ["report", str(scans), "--html", str(html)]),
    ]
    if model.exists():
        # a previous demo trained here already: reuse its model (delete WORKDIR to retrain)
        steps = [s for s in steps if s[1][0] not in ("prepare", "train")]
    timings: list[tuple[str, float]] = []
    t_all = time.perf_counter()
    for i, (title, argv) in enumerate(steps, 1):
        console.rule(f"[bold]{i}/{len(steps)} {title}[/bold]")
        console.print(f"$ avrl {' '.join(argv)}", style="dim", markup=False, highlight=False)
        t0 = time.perf_counter()
        rv = app(args=argv, standalone_mode=False)
        if isinstance(rv, int) and rv:
            raise typer.Exit(rv)
        timings.append((title, time.perf_counter() - t0))

    table = Table(title=f"avrl demo finished in {time.perf_counter() - t_all:.0f} s")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for title, sec in timings:
        table.add_row(title, f"{sec:.1f}")
    console.print(table)
    where = Table(title="where everything is", show_header=False)
    for name, path in [
        ("footage + ground truth", data),
        ("prepared shards", prepared),
        ("model", model),
        ("scan output", scans),
        ("HTML report", html),
    ]:
        where.add_row(name, Text(str(path)))  # a path is text, not rich markup
    console.print(where)
    console.print(
        f"next: avrl query {scans} --label fight --format csv", markup=False, highlight=False
    )
