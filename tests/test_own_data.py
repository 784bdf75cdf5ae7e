"""Training on your own footage: a custom class set from labelled intervals of long synthetic
recordings, prepare -> train -> scan -> query/report, fine-tuning from a SHADE-class model,
splits by recording, and `avrl tune` operating points from the stored windows.

The footage is real: four PyAV-encoded recordings from the synthetic generator, each with one
episode of every anomaly class; the incident table calls the shootings `gunfire` and the
knockdowns `fall`, and `calm` clips come from the unannotated stretches (`--background`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scanhelp import tiny_model
from test_prepare import _run_error  # one error line, exit 2

from avrl_batch.cli import main
from avrl_batch.errors import DataError
from avrl_batch.schema import EVENTS, WINDOWS
from avrl_batch.train.intervals import Interval, IntervalOptions, cut_clips, recording_splits

CLASSES = ("gunfire", "fall", "calm")
RENAME = {"shoot": "gunfire", "knockdown": "fall"}  # the synthetic episode -> the user's label
N_RECORDINGS = 4
RECORDING_S = 84.0  # room for all seven anomaly episodes (12-s slots)


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Four recordings and their incident table (source_uri,label,start_s,end_s: the same
    columns as `avrl scan --truth`), URIs relative to the table's folder."""
    from avrl_batch.data.synth import get_preset, write_recording

    root = tmp_path_factory.mktemp("own")
    rows = []
    for k in range(1, N_RECORDINGS + 1):
        rel = f"recordings/cam0{k}/cam0{k}_20260301T0{k}0000Z.mp4"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        events = write_recording(
            root / rel, get_preset("ci"), seed=10 + k, duration_s=RECORDING_S, n_events=7
        )
        rows += [
            {"source_uri": rel, "label": RENAME[e.label], "start_s": e.start_s, "end_s": e.end_s}
            for e in events
            if e.label in RENAME
        ]
    table = root / "incidents.csv"
    with table.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["source_uri", "label", "start_s", "end_s"])
        w.writeheader()
        w.writerows(rows)
    return {"root": root, "incidents": str(table), "rows": rows}


@pytest.fixture(scope="module")
def prepared(footage: dict) -> str:
    out = footage["root"] / "prepared"
    main(["prepare", footage["incidents"], "--out", str(out), "--preset", "tiny",
          "--classes", ",".join(CLASSES), "--normal", "calm", "--background", "calm",
          "--clip-stride", "1", "--val-fraction", "0.25", "--test-fraction", "0.25"])  # fmt: skip
    return str(out)


@pytest.mark.slow
def test_splits_by_recording_and_classes_from_the_data(footage: dict, prepared: str) -> None:
    from avrl_batch.train.prepare import load_prepared, read_split

    data = load_prepared(prepared)
    assert data.class_names == CLASSES and data.classes.normal == {"calm"}
    assert data.classes.anomaly == ("gunfire", "fall")
    recordings: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        clips = read_split(data, split)
        names = {CLASSES[i] for i in clips["label"]}
        assert names == set(CLASSES), split  # every split has both incidents and calm
        recordings[split] = {u.split("#t=")[0] for u in clips["uri"]}
        assert clips["frames"].shape[1:] == (8, 48, 48, 3) and clips["frames"].std() > 0
    # no recording in two splits; every recording in one (2 train, 1 val, 1 test)
    assert not (recordings["train"] & recordings["val"])
    assert not (recordings["train"] & recordings["test"])
    assert not (recordings["val"] & recordings["test"])
    assert sorted(len(r) for r in recordings.values()) == [1, 1, 2]
    assert set().union(*recordings.values()) == {r["source_uri"] for r in footage["rows"]}


def test_intervals_cut_window_clips_and_background_off_the_incidents() -> None:
    ivs = [
        Interval("a.mp4", "/x/a.mp4", "fall", 10.0, 14.5, None, False),
        Interval("a.mp4", "/x/a.mp4", "gunfire", 30.0, 31.0, None, False),  # shorter than a window
        Interval("b.mp4", "/x/b.mp4", "fall", 5.0, 8.0, "test", True),
    ]
    opts = IntervalOptions(window_s=2.0, clip_stride_s=1.0, background="calm", seed=3)
    rows = cut_clips(ivs, opts, duration_of=lambda src: 60.0)
    assert rows == cut_clips(ivs, opts, duration_of=lambda src: 60.0)  # deterministic
    fall_a = [r["start_s"] for r in rows if r["recording"] == "a.mp4" and r["label"] == "fall"]
    assert fall_a == [10.0, 11.0, 12.0]  # every 1 s while a whole 2-s window fits
    assert [r["start_s"] for r in rows if r["label"] == "gunfire"] == [29.5]  # centred
    calm_a = [r["start_s"] for r in rows if r["recording"] == "a.mp4" and r["label"] == "calm"]
    assert len(calm_a) == 4  # ratio 1: as many as the recording's annotated clips
    assert all(not (t < 14.5 and 10.0 < t + 2) and not (t < 31.0 and 30.0 < t + 2)
               for t in calm_a)  # fmt: skip
    b = [r for r in rows if r["recording"] == "b.mp4"]
    assert {r["split"] for r in b} == {"test"} and all(r["dark"] for r in b if r["label"] == "fall")
    # splits by recording: ten recordings -> 2 test, 1 val, 7 train, fixed by the seed
    names = [f"r{i}.mp4" for i in range(10)]
    splits = recording_splits(names, IntervalOptions(window_s=2.0))
    assert sorted(splits.values()).count("test") == 2 and list(splits.values()).count("val") == 1
    assert splits == recording_splits(list(reversed(names)), IntervalOptions(window_s=2.0))
    with pytest.raises(DataError, match="--clip-stride must be > 0"):
        IntervalOptions(window_s=2.0, clip_stride_s=0)


def test_background_must_be_normal(footage: dict, capsys: pytest.CaptureFixture[str]) -> None:
    err = _run_error(["prepare", footage["incidents"], "--out", str(footage["root"] / "x"),
                      "--normal", "calm", "--background", "fall",
                      "--classes", ",".join(CLASSES)], capsys)  # fmt: skip
    assert err == "error: --background 'fall' must be a normal class: add --normal fall"
    err = _run_error(["prepare", footage["incidents"], "--out", str(footage["root"] / "x")],
                     capsys)
    assert err == (
        "error: which of fall, gunfire are normal (calm footage)? name them with --normal LABEL"
    )
    clips = footage["root"] / "clips.csv"
    clips.write_text("uri,label\na.mp4,fall\nb.mp4,calm\n")
    err = _run_error(["prepare", str(clips), "--out", str(footage["root"] / "x"), "--normal",
                      "calm", "--background", "calm"], capsys)  # fmt: skip
    assert err.endswith("--background samples the unannotated stretches of recordings; it "
                        "needs an interval manifest (columns start_s, end_s)")  # fmt: skip


@pytest.fixture(scope="module")
def scanned(footage: dict, prepared: str) -> dict:
    """A tiny model trained 3 epochs on the custom classes, and its scan of the recordings
    with low thresholds (so that a barely trained model still opens events)."""
    run = footage["root"] / "run"
    main(["train", prepared, "--out", str(run), "--preset", "tiny", "--epochs", "3",
          "--batch-size", "8"])  # fmt: skip
    out = footage["root"] / "scan"
    main(["scan", str(footage["root"] / "recordings"), "--model", str(run / "model.avrl"),
          "--out", str(out), "--enter", "0.2", "--exit", "0.2"])  # fmt: skip
    return {"model": str(run / "model.avrl"), "out": str(out)}


@pytest.mark.slow
def test_custom_classes_through_scan_query_and_report(
    scanned: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from avrl_batch.modelfile import load_model

    loaded = load_model(scanned["model"])
    assert loaded.cfg.class_names == CLASSES and loaded.cfg.normal_classes == ("calm",)
    out = Path(scanned["out"])
    windows = [pq.read_table(p, schema=WINDOWS, partitioning=None)
               for p in sorted((out / "windows").rglob("*.parquet"))]  # fmt: skip
    events = [pq.read_table(p, schema=EVENTS, partitioning=None)
              for p in sorted((out / "events").rglob("*.parquet"))]  # fmt: skip
    assert len(windows) == N_RECORDINGS
    for w in windows:
        assert all(len(p) == len(CLASSES) for p in w["probs"].to_pylist())
        assert set(w["label"].to_pylist()) <= set(CLASSES)
        assert w["is_anomaly"].to_pylist() == [lb != "calm" for lb in w["label"].to_pylist()]
    labels = [lb for e in events for lb in e["label"].to_pylist()]
    assert labels and set(labels) <= {"gunfire", "fall"}
    manifest = json.loads(next((out / "_scans").glob("*.json")).read_text())
    assert manifest["class_names"] == list(CLASSES) and manifest["normal_classes"] == ["calm"]

    capsys.readouterr()
    main(["query", str(out), "--label", "gunfire", "--format", "json"])
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {r["label"] for r in rows} <= {"gunfire"} and len(rows) == labels.count("gunfire")
    err = _run_error(["query", str(out), "--label", "shoot"], capsys)
    assert err == "error: unknown label 'shoot'; the scanned model's labels: gunfire, fall, calm"

    html = tmp_path / "report.html"
    main(["report", str(out), "--html", str(html)])
    page = html.read_text()
    for label in ("gunfire", "fall"):
        n = labels.count(label)
        assert f'data-label="{label}"' in page and f"{label} ({n})</button>" in page
    assert 'data-label="shoot"' not in page and 'data-label="calm"' not in page


@pytest.mark.slow
def test_tune_sweeps_the_stored_windows(
    footage: dict, scanned: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    from avrl_batch.scan.matching import match_output
    from avrl_batch.scan.tune import footage_hours

    capsys.readouterr()
    main(["tune", scanned["out"], "--truth", footage["incidents"], "--enter", "0.2",
          "--enter", "0.6", "--exit", "0.2", "--exit", "0.5", "--min-event", "0",
          "--min-event", "3", "--json"])  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    settings = [(p["enter"], p["exit"], p["min_event_s"]) for p in res["points"]]
    assert settings == [(0.2, 0.2, 0.0), (0.6, 0.2, 0.0), (0.6, 0.5, 0.0),
                        (0.2, 0.2, 3.0), (0.6, 0.2, 3.0), (0.6, 0.5, 3.0)]  # fmt: skip
    assert res["truth_events"] == len(footage["rows"]) and res["sources"] == N_RECORDINGS
    assert res["camera_hours"] == pytest.approx(N_RECORDINGS * RECORDING_S / 3600, rel=0.02)
    # the scan's own setting gives exactly the figures `avrl scan --truth` reports
    manifest = json.loads(next(Path(scanned["out"], "_scans").glob("*.json")).read_text())
    sources = manifest["sources"]["ok"]
    truth = match_output(scanned["out"], footage["incidents"], model_id=res["model_id"],
                         sources=sources)  # fmt: skip
    own = res["points"][0]
    assert (own["tp"], own["fp"], own["fn"]) == (truth["tp"], truth["fp"], truth["fn"])
    for p in res["points"]:
        assert p["tp"] + p["fn"] == res["truth_events"]
        assert p["false_alarms_per_hour"] == pytest.approx(p["fp"] / res["camera_hours"],
                                                           rel=1e-3)
    within = [p for p in res["points"] if p["false_alarms_per_hour"] <= 1.0]
    assert res["best"] == (max(within, key=lambda p: (p["recall"], p["precision"], p["enter"]))
                           if within else None)  # fmt: skip
    main(["tune", scanned["out"], "--truth", footage["incidents"]])
    text = capsys.readouterr().out
    assert "false alarms / cam-h" in text and ("best recall at <= 1" in text
                                               or "no setting keeps" in text)  # fmt: skip
    assert footage_hours(
        _windows_table([(0.0, 2.0), (1.0, 3.0), (10.0, 12.0)])
    ) == pytest.approx(5.0 / 3600)
    err = _run_error(["tune", scanned["out"], "--truth", footage["incidents"], "--model-id",
                      "avrl-tiny-000000000000"], capsys)  # fmt: skip
    assert err == (f"error: no scan of model avrl-tiny-000000000000 under {scanned['out']}; "
                   f"its scans are of {res['model_id']}")  # fmt: skip


def _windows_table(spans: list[tuple[float, float]]):  # noqa: ANN202 - a pyarrow Table
    import pyarrow as pa

    return pa.table({"source_uri": ["a"] * len(spans), "start_s": [s for s, _ in spans],
                     "end_s": [e for _, e in spans]})  # fmt: skip


@pytest.mark.slow
def test_fine_tune_from_a_shade_model(
    footage: dict, prepared: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from avrl_batch.modelfile import load_model

    parent_id = tiny_model(tmp_path / "shade.avrl", seed=5)
    parent = load_model(tmp_path / "shade.avrl")
    assert parent.cfg.classes.anomaly[0] == "arrest"  # a SHADE-class model
    run = tmp_path / "ft"
    main(["train", prepared, "--out", str(run), "--init", str(tmp_path / "shade.avrl"),
          "--freeze", "trunks", "--epochs", "1", "--batch-size", "8"])  # fmt: skip
    child = load_model(run / "model.avrl")
    assert child.cfg.class_names == CLASSES and child.meta["parent"] == parent_id
    assert child.meta["lineage"] == [parent_id]
    before = dict(parent.model.named_parameters())
    after = dict(child.model.named_parameters())
    trunk = [n for n in after if n.startswith(("video.", "audio."))]
    assert trunk and all(torch.equal(after[n], before[n]) for n in trunk)  # loaded, frozen
    assert after["head.4.weight"].shape[0] == len(CLASSES)  # a new head for the new classes
    assert not torch.equal(after["head.0.weight"], before["head.0.weight"])
    assert np.isfinite(child.meta["history"][0]["train_loss"])

    capsys.readouterr()
    main(["info", "--model", str(run / "model.avrl")])
    text = capsys.readouterr().out
    assert f"fine-tuned from: {parent_id}" in text
    assert "classes: gunfire, fall, calm (normal: calm)" in text
    err = _run_error(["train", prepared, "--out", str(tmp_path / "ft2"), "--init",
                      str(tmp_path / "shade.avrl"), "--preset", "small"], capsys)  # fmt: skip
    assert err == (f"error: --init {tmp_path / 'shade.avrl'} is a 'tiny' model: leave out "
                   "--preset small or give --preset tiny")  # fmt: skip
    err = _run_error(["train", prepared, "--out", str(tmp_path / "ft3"), "--freeze", "audio"],
                     capsys)
    assert err == "error: --freeze needs --init MODEL: a fresh trunk would never learn"
