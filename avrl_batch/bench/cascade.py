"""``avrl bench cascade``: the full scan and the cascade scan of the same footage, side by
side in one run, against its ground truth.

Footage: the ``cascade`` synth preset (720p 25 fps H.264, a keyframe every 2 s, sensor noise,
~5 % of the time in events; two cameras with audio, one without) at ``seed``, each recording
``minutes`` long (per-scan and per-source costs are amortised over longer files); the screen
is calibrated on the same preset at other seeds (``calib_seeds``: other recordings, other
events, ``calib_minutes`` each), so no figure is measured on the data the screen was fitted
to. The cameras with audio and the silent camera are scanned separately (each full, then
cascade, interleaved over ``runs``), so each has its own CPU figure.

Figures: footage per CPU-second of each scan (CPU of every Ray worker and its decoder
children, plus the driver), ``speedup_cpu`` = cascade / full of that; event recall and
precision of each scan against the ground truth (temporal IoU 0.3); ``recall_vs_full`` =
cascade recall / full recall; ``precision_vs_full`` = cascade precision − full precision.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from avrl_batch.bench.report import envelope, load_average, median

GOAL = {"speedup_cpu": 3.0, "recall_vs_full": 0.95, "precision_drop_max": 0.05}
GOAL_SILENT = {"speedup_cpu": 2.0, "recall_vs_full": 0.90, "precision_drop_max": 0.05}


def footage_name(seed: int, minutes: float) -> str:
    return f"seed{seed}-{minutes:g}min"


def ensure_footage(work: Path, seed: int, minutes: float, *, workers: int = 1) -> tuple[Path,
                                                                                     float]:
    """The cascade preset's recordings (``minutes`` each) and ground truth at ``seed`` under
    ``work``, made once; (folder, seconds it took to make now: 0 when it was there)."""
    import time

    from avrl_batch.data.synth import generate

    folder = work / f"footage-{footage_name(seed, minutes)}"
    if (folder / "ground_truth.parquet").exists():
        return folder, 0.0
    t0 = time.perf_counter()
    generate(folder, preset="cascade", seed=seed, clips=False, recordings=True,
             minutes=minutes, workers=workers)
    return folder, time.perf_counter() - t0


def _camera_folders(
    footage: Path, work: Path, seed: int, minutes: float | None = None
) -> dict[str, tuple[Path, Path]]:
    """``audio``: a folder linking the recordings with audio; ``silent``: the one without;
    each with its ground truth under the linked URIs (what the scan lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from avrl_batch.data.synth import get_preset, recording_plan
    from avrl_batch.scan.matching import truth_events

    preset = get_preset("cascade")
    name = footage_name(seed, preset.recording_minutes if minutes is None else minutes)
    folders: dict[str, Path] = {}
    links: dict[str, tuple[str, str]] = {}  # a recording's canonical URI -> (group, link)
    for camera, uri, _, has_audio, _ in recording_plan(preset, seed, minutes):
        group = "audio" if has_audio else "silent"
        dest = work / f"cams-{name}-{group}" / camera
        dest.mkdir(parents=True, exist_ok=True)
        link = dest / Path(uri).name
        if not link.exists():
            link.symlink_to((footage / uri).resolve())
        folders[group] = dest.parent
        links[str((footage / uri).resolve())] = (group, str(link.absolute()))
    gt = truth_events(str(footage / "ground_truth.parquet"), None, sources=list(links))
    rows = [links[u] for u in gt["source_uri"].to_pylist()]
    groups = {}
    for group, folder in folders.items():
        keep = [i for i, (g, _) in enumerate(rows) if g == group]
        table = gt.take(keep)
        table = table.set_column(table.schema.get_field_index("source_uri"), "source_uri",
                                 pa.array([rows[i][1] for i in keep], pa.string()))
        truth = work / f"truth-{name}-{group}.parquet"
        pq.write_table(table, truth)
        groups[group] = (folder, truth)
    return groups


def _match(out: Path, truth: Path, run: dict[str, Any]) -> dict[str, Any]:
    from avrl_batch.scan.matching import match_output

    m = match_output(str(out), str(truth), model_id=run["model_id"], sources=run["sources"])
    if m["tp"] + m["fn"] == 0:  # recall would read 1.0 over nothing
        raise RuntimeError(f"no ground-truth event of {truth} is on the scanned sources")
    return m


DEFAULT_MINUTES = 3.0  # the preset's length: ~1 minute to make a set on this machine
DEFAULT_CALIB_SEEDS = (4, 5, 6, 7)  # 1-3: the training footage of scripts/cascade_model.sh


def bench_cascade(
    model: str | Path,
    *,
    work: str | Path = "/tmp/avrl-bench/cascade",
    seed: int = 0,
    minutes: float = DEFAULT_MINUTES,
    calib_seeds: tuple[int, ...] = DEFAULT_CALIB_SEEDS,
    calib_minutes: float = DEFAULT_MINUTES,
    recall: float = 0.97,
    margin: int = 1,
    per_class: bool = True,
    recall_of: str = "events",
    workers: int = 2,
    runs: int = 1,
) -> dict[str, Any]:
    """Calibrate ``model``'s screen, then scan the footage full and cascade; the figures."""
    from avrl_batch.bench.scan import scan_once
    from avrl_batch.errors import ConfigError
    from avrl_batch.train.calibrate import calibrate, summary

    if seed in calib_seeds or not calib_seeds:
        raise ConfigError(f"the calibration seeds ({calib_seeds}) must be some, and not the "
                          f"measured footage's seed {seed}")
    for what, value in (("--minutes", minutes), ("--calib-minutes", calib_minutes)):
        if not value > 0:
            raise ConfigError(f"{what} must be a positive number of minutes, got {value:g}")
    load0 = load_average()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    made: dict[str, float] = {}
    footage, made[footage_name(seed, minutes)] = ensure_footage(work, seed, minutes,
                                                                workers=workers)
    calib = []
    for s in calib_seeds:
        folder, made[footage_name(s, calib_minutes)] = ensure_footage(
            work, s, calib_minutes, workers=workers)
        calib.append(str(folder / "ground_truth.parquet"))
    screened_model = work / "model-screen.avrl"
    screen = calibrate(str(model), calib, str(screened_model), recall=recall,
                       margin_windows=margin, per_class=per_class, recall_of=recall_of)
    groups = _camera_folders(footage, work, seed, minutes)
    figures: dict[str, Any] = {}
    for group, (folder, truth) in groups.items():
        per: dict[str, list[dict[str, Any]]] = {"full": [], "cascade": []}
        for _ in range(runs):
            for variant in ("full", "cascade"):
                out = work / f"out-{group}-{variant}"
                r = scan_once(folder, screened_model, out, workers=workers,
                              cascade=variant == "cascade", keep_out=True)
                r["match"] = _match(out, truth, r)
                shutil.rmtree(out, ignore_errors=True)
                per[variant].append(r)
        figures[group] = _compare(per)
    doc: dict[str, Any] = {
        "footage": {
            "preset": "cascade", "seed": seed, "minutes": minutes,
            "calibration_seeds": list(calib_seeds), "calibration_minutes": calib_minutes,
            "event_share": _event_share(footage / "ground_truth.parquet", seed, minutes),
            "made_s": {k: round(v, 1) for k, v in made.items() if v},  # sets made in this run
        },
        "workers": workers,
        "runs": runs,
        "calibration": summary(screen),
        **{k: figures["audio"][k] for k in ("speedup_cpu", "recall_vs_full",
                                            "precision_vs_full")},
        "cameras_with_audio": figures["audio"],
        "silent": figures.get("silent"),
        "goal": GOAL,
        "goal_silent": GOAL_SILENT,
    }
    doc["goal_met"] = _met(figures["audio"], GOAL)
    if figures.get("silent"):
        doc["goal_silent_met"] = _met(figures["silent"], GOAL_SILENT)
    return envelope("cascade", doc, load_before=load0)


def _compare(per: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def variant(rs: list[dict[str, Any]]) -> dict[str, Any]:
        m = rs[0]["match"]
        return {
            "footage_s": round(rs[0]["footage_s"], 1),
            "windows": rs[0]["windows"],
            "cpu_s": round(median([r["cpu_s"] for r in rs]), 2),
            "cpu_s_runs": [round(r["cpu_s"], 2) for r in rs],
            "driver_cpu_s": round(median([r["driver_cpu_s"] for r in rs]), 2),
            "workers_cpu_s": round(median([r["workers_cpu_s"] for r in rs]), 2),
            "scan_wall_s": round(median([r["scan_wall_s"] for r in rs]), 2),
            "footage_s_per_cpu_s": round(rs[0]["footage_s"] / median([r["cpu_s"] for r in rs]),
                                         3),
            "recall": m["recall"], "precision": m["precision"],
            "tp": m["tp"], "fp": m["fp"], "fn": m["fn"],
            "cascade": rs[0]["cascade"] or None,
        }

    full, casc = variant(per["full"]), variant(per["cascade"])
    return {
        "full": full,
        "cascade": casc,
        "speedup_cpu": round(casc["footage_s_per_cpu_s"] / full["footage_s_per_cpu_s"], 3),
        "recall_vs_full": (
            round(casc["recall"] / full["recall"], 3) if full["tp"] else None
        ),
        "precision_vs_full": round(casc["precision"] - full["precision"], 3),
    }


def _met(f: dict[str, Any], goal: dict[str, float]) -> bool:
    return bool(
        f["speedup_cpu"] >= goal["speedup_cpu"]
        and f["recall_vs_full"] is not None
        and f["recall_vs_full"] >= goal["recall_vs_full"]
        and f["precision_vs_full"] >= -goal["precision_drop_max"]
    )


def _event_share(truth: Path, seed: int, minutes: float) -> float:
    import pyarrow.parquet as pq

    from avrl_batch.data.synth import get_preset, recording_plan

    gt = pq.read_table(truth).to_pylist()
    total = sum(r[2] for r in recording_plan(get_preset("cascade"), seed, minutes))
    return round(sum(r["end_s"] - r["start_s"] for r in gt) / total, 4)


def table(doc: dict[str, Any]) -> list[str]:
    from avrl_batch.bench.report import markdown_table

    rows = []
    for group in ("cameras_with_audio", "silent"):
        f = doc.get(group)
        if not f:
            continue
        for v in ("full", "cascade"):
            x = f[v]
            rows.append([group, v, f"{x['footage_s']:.0f}", f"{x['cpu_s']:.1f}",
                         f"{x['footage_s_per_cpu_s']:.2f}", f"{x['recall']:.2f}",
                         f"{x['precision']:.2f}"])
        rows.append([group, "cascade / full", "", "", f"{f['speedup_cpu']:.2f}x",
                     "n/a" if f["recall_vs_full"] is None else f"{f['recall_vs_full']:.2f}",
                     f"{f['precision_vs_full']:+.2f}"])
    return markdown_table(
        ["cameras", "scan", "footage s", "CPU s", "footage s / CPU s", "recall", "precision"],
        rows,
    )
