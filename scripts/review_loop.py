"""The review loop, measured: scan -> verdicts -> feedback -> fine-tune -> rescan.

    python scripts/review_loop.py BASE_MODEL WORK [--review-seed 1] [--measure-seed 2]

BASE_MODEL is a SHADE-class model (e.g. the one `avrl demo` trains: WORK/run/model.avrl).
The analyst is played by the ground truth: an event that matches a true event (same source
and label, temporal IoU >= 0.3) is confirmed, one that overlaps a true event of another label
gets that label ("other"), any other event is a false alarm. Every step is the real command:

    avrl synth R --preset bench --seed S --no-clips          (footage to review, and to measure on)
    avrl scan R/recordings --model BASE --out SCAN --stride 1 --truth R/ground_truth.parquet
    avrl feedback SCAN verdicts.csv --out feedback.csv --normal-label normal1
    avrl prepare feedback.csv --out PREP --preset P --classes <the base's> --normal normal1
        --normal normal2 --background normal2
    avrl train PREP --init BASE --freeze trunks --epochs 8 --schedule cosine --out RUN
    avrl scan M/recordings --model BASE|RUN/model.avrl --stride 1 --truth M/ground_truth.parquet

and the figure is false alarms per camera-hour and event recall on the measuring footage
(other recordings than the reviewed ones), before and after. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

AVRL = [sys.executable, "-m", "avrl_batch"]


def avrl(*args: str) -> str:
    print("$ avrl " + " ".join(args), file=sys.stderr, flush=True)
    res = subprocess.run([*AVRL, *args], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"avrl {args[0]} failed:\n{res.stderr[-3000:]}")
    return res.stdout


def scan(recordings: Path, model: Path, out: Path, truth: Path) -> dict:
    from avrl_batch.query import run_query
    from avrl_batch.scan.tune import footage_hours

    got = json.loads(avrl("scan", str(recordings), "--model", str(model), "--out", str(out),
                          "--stride", "1", "--truth", str(truth), "--json"))
    # from the stored windows, so a rerun of the script (a scan with nothing left to do)
    # counts the same footage
    hours = footage_hours(run_query(str(out), table="windows"))
    m = got["match"]
    return {"events": m["tp"] + m["fp"], "tp": m["tp"], "fp": m["fp"], "fn": m["fn"],
            "recall": m["recall"], "precision": m["precision"], "f1": m["f1"],
            "camera_hours": round(hours, 4), "false_alarms_per_camera_hour":
            round(m["fp"] / hours, 2) if hours else None}


def verdicts_from_truth(scan_out: Path, truth: Path, dest: Path) -> dict[str, int]:
    """What an analyst with the ground truth in mind would mark."""
    import pyarrow.parquet as pq

    from avrl_batch.query import run_query
    from avrl_batch.scan.matching import match_events, temporal_iou

    events = run_query(str(scan_out), table="events")
    gt = pq.read_table(truth).to_pylist()
    base = truth.parent
    for g in gt:  # ground-truth URIs are relative to the table's folder
        g["source_uri"] = str((base / g["source_uri"]).resolve())
    ev = events.to_pylist()
    matched = {i for i, _ in match_events(events, gt).pairs}
    counts = {"confirmed": 0, "other": 0, "false_alarm": 0}
    with dest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["event_id", "verdict", "label"])
        for i, e in enumerate(ev):
            if i in matched:
                verdict, label = "confirmed", e["label"]
            else:
                best = max(
                    (g for g in gt if g["source_uri"] == e["source_uri"]),
                    key=lambda g: temporal_iou(e["start_s"], e["end_s"], g["start_s"],
                                               g["end_s"]),
                    default=None,
                )
                if best is not None and temporal_iou(
                    e["start_s"], e["end_s"], best["start_s"], best["end_s"]
                ) >= 0.3:
                    verdict, label = "other", best["label"]
                else:
                    verdict, label = "false_alarm", ""
            counts[verdict] += 1
            w.writerow([e["event_id"], verdict, label])
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base_model", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--review-seed", type=int, default=1)
    ap.add_argument("--measure-seed", type=int, default=2)
    ap.add_argument("--preset", default="bench", help="synth preset of both footage sets")
    ap.add_argument("--epochs", type=int, default=8)
    a = ap.parse_args()
    t0 = time.monotonic()
    w = a.work
    w.mkdir(parents=True, exist_ok=True)
    info = json.loads(avrl("info", "--model", str(a.base_model), "--json"))
    classes = info["classes"]
    review, measure = w / "review", w / "measure"
    for d, seed in ((review, a.review_seed), (measure, a.measure_seed)):
        if not (d / "ground_truth.parquet").exists():
            avrl("synth", str(d), "--preset", a.preset, "--seed", str(seed), "--no-clips")
    reviewed = scan(review / "recordings", a.base_model, w / "scan_review",
                    review / "ground_truth.parquet")
    marks = verdicts_from_truth(w / "scan_review", review / "ground_truth.parquet",
                                w / "verdicts.csv")
    avrl("feedback", str(w / "scan_review"), str(w / "verdicts.csv"), "--out",
         str(w / "feedback.csv"), "--normal-label", "normal1")
    prep = [str(w / "feedback.csv"), "--out", str(w / "prepared"), "--preset", info["preset"],
            "--normal", "normal1", "--normal", "normal2", "--background", "normal2"]
    prep += ["--classes", ",".join(classes)]  # the base's order: its head is reused
    tuned = w / "run" / "model.avrl"
    if not tuned.exists():  # a rerun of the script measures again without retraining
        avrl("prepare", *prep)
        avrl("train", str(w / "prepared"), "--init", str(a.base_model), "--freeze", "trunks",
             "--epochs", str(a.epochs), "--schedule", "cosine", "--out", str(w / "run"))
    before = scan(measure / "recordings", a.base_model, w / "scan_before",
                  measure / "ground_truth.parquet")
    after = scan(measure / "recordings", tuned, w / "scan_after",
                 measure / "ground_truth.parquet")
    print(json.dumps({
        "base_model": str(a.base_model), "preset": a.preset, "review_seed": a.review_seed,
        "measure_seed": a.measure_seed, "epochs": a.epochs, "verdicts": marks,
        "reviewed_scan": reviewed, "before": before, "after": after,
        "wall_s": round(time.monotonic() - t0, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
