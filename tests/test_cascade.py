"""The cascade scan: a screen calibrated from labelled recordings, screened-out windows kept in
the windows table, the full model run only on candidates (real PyAV media, real local Ray)."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avrl_batch.errors import ConfigError, WeightsError
from avrl_batch.scan import screen as scr
from tests.scanhelp import tiny_model


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The `ci` synth recordings (two cameras with audio, one without) and a model file
    whose screen was calibrated on their ground truth."""
    from avrl_batch.data.synth import generate
    from avrl_batch.train.calibrate import calibrate

    root = tmp_path_factory.mktemp("cascade")
    generate(root / "data", preset="ci", seed=0, clips=False, recordings=True)
    plain = root / "model.avrl"
    tiny_model(plain)
    screened = root / "model-screen.avrl"
    calibrate(str(plain), str(root / "data" / "ground_truth.parquet"), str(screened),
              recall=0.97, margin_windows=1)
    return {"root": root, "data": root / "data", "plain": plain, "model": screened}


def _windows(out: Path) -> dict[str, pa.Table]:
    from avrl_batch.schema import WINDOWS

    tables = [pq.read_table(f, schema=WINDOWS, partitioning=None)
              for f in glob.glob(str(out / "windows" / "**" / "*.parquet"), recursive=True)]
    by = {}
    for t in tables:
        by[t["source_uri"][0].as_py()] = t.sort_by("window_index")
    return by


def _scan(src: Path, model: Path, out: Path, *, cascade: bool):
    from avrl_batch.scan import ScanConfig, run_scan

    return run_scan(ScanConfig(source=str(src), model=str(model), out=str(out), cascade=cascade))


def test_cascade_scan_covers_recordings_and_agrees_with_full(
    ray_local: None, footage: dict[str, Path], tmp_path: Path
) -> None:
    from avrl_batch.media import probe
    from avrl_batch.modelfile import load_model

    screen = load_model(footage["model"]).screen
    full = _scan(footage["data"] / "recordings", footage["model"], tmp_path / "full",
                 cascade=False)
    casc = _scan(footage["data"] / "recordings", footage["model"], tmp_path / "casc",
                 cascade=True)
    assert full.sources_ok == casc.sources_ok == 3 and not casc.errors
    fw, cw = _windows(tmp_path / "full"), _windows(tmp_path / "casc")
    assert set(fw) == set(cw)
    inferred_total = 0
    for uri, c in cw.items():
        f = fw[uri]
        # coverage: every window of the recording, with the full scan's spans
        n = scr.n_windows(probe(uri).duration_s, 2.0)
        assert c["window_index"].to_pylist() == list(range(n)) == f["window_index"].to_pylist()
        assert np.allclose(c["start_s"].to_numpy(), f["start_s"].to_numpy())
        assert np.allclose(c["end_s"].to_numpy(), f["end_s"].to_numpy())
        assert c["screen_score"].null_count == 0 and f["screen_score"].null_count == n
        assert all(f["inferred"].to_pylist())
        seen = np.array(c["inferred"].to_pylist())
        inferred_total += int(seen.sum())
        # a window the cascade inferred got exactly the full scan's probabilities
        cp, fp = np.array(c["probs"].to_pylist()), np.array(f["probs"].to_pylist())
        assert np.allclose(cp[seen], fp[seen], atol=1e-4)
        # a screened-out one is calm: the first normal class, score 0, no probability
        assert set(np.array(c["label"].to_pylist())[~seen]) <= {"normal1"}
        assert not cp[~seen].any() and not np.array(c["is_anomaly"].to_pylist())[~seen].any()
    assert 0 < inferred_total < sum(len(t) for t in cw.values())  # it screened something out
    assert casc.cascade["windows_inferred"] == inferred_total

    # ground truth: the candidates hold the calibrated recall of anomaly events (one is seen
    # when the full model inferred one of its positive windows)
    assert screen.recall_of == "events"
    gt = pq.read_table(footage["data"] / "ground_truth.parquet").to_pylist()
    covered = events = 0
    for uri, c in cw.items():
        spans = [(r["start_s"], r["end_s"]) for r in gt if uri.endswith(r["source_uri"])]
        owner = scr.window_events(c["start_s"].to_numpy(), c["end_s"].to_numpy(), spans)
        seen = np.array(c["inferred"].to_pylist())
        for e in np.unique(owner[owner > 0]):
            events += 1
            covered += bool(seen[owner == e].any())
    assert events > 0 and covered >= screen.target_recall * events

    manifest = json.loads(Path(casc.manifest).read_text())
    assert manifest["cascade"]["screen"]["thresholds"] == {
        "video": screen.video.threshold, "av": screen.av.threshold
    }

    # query and report tell the fully inferred windows from the screened-out ones
    from avrl_batch.query import QueryFilters, run_query
    from avrl_batch.report import build_report

    out = str(tmp_path / "casc")
    every = run_query(out, table="windows")
    only = run_query(out, table="windows", filters=QueryFilters(inferred_only=True))
    assert every.num_rows == sum(len(t) for t in cw.values())
    assert only.num_rows == inferred_total and all(only["inferred"].to_pylist())
    html = build_report(out).html
    assert f"{inferred_total:,}</b>windows inferred (the rest screened out)" in html
    assert "inferred, " in html and "screened out)" in html  # the recordings' timeline tips
    assert "windows inferred" not in build_report(str(tmp_path / "full")).html


def test_screen_threshold_comes_from_the_model_file(
    ray_local: None, footage: dict[str, Path], tmp_path: Path
) -> None:
    from avrl_batch.modelfile import load_model, with_screen

    data = footage["model"].read_bytes()
    base = load_model(footage["model"]).screen.to_dict()
    src = footage["data"] / "recordings" / "cam01"
    for thr, expect in ((2.0, "none"), (0.0, "all")):  # scores lie in [0, 1]
        d = json.loads(json.dumps(base))
        d["video"]["threshold"] = d["av"]["threshold"] = thr
        model = tmp_path / f"model-{thr}.avrl"
        model.write_bytes(with_screen(data, d))
        s = _scan(src, model, tmp_path / f"out-{thr}", cascade=True)
        (table,) = _windows(tmp_path / f"out-{thr}").values()
        seen = table["inferred"].to_pylist()
        assert len(seen) == s.windows == s.cascade["windows_screened"] > 0
        assert all(seen) if expect == "all" else not any(seen)
        assert s.cascade["screen"]["thresholds"]["av"] == thr


def test_model_file_screen_is_checked(footage: dict[str, Path], tmp_path: Path) -> None:
    from avrl_batch.modelfile import load_model, model_from_bytes, with_screen
    from avrl_batch.scan import ScanConfig, run_scan

    data = footage["model"].read_bytes()
    good = load_model(footage["model"]).screen.to_dict()
    for broken in (
        lambda d: d["av"]["weights"].__setitem__(0, float("nan")),
        lambda d: d["video"]["features"].pop(),
        lambda d: d.pop("target_recall"),
        lambda d: d.__setitem__("format", 99),
        lambda d: d.__setitem__("per_class", "yes"),
        lambda d: d.__setitem__("recall_of", "frames"),
        lambda d: d["video"].__setitem__("val_events", -2),
        lambda d: d["positives_by_class"].__setitem__("arrest", -1),
        lambda d: d["av"]["val_recall_by_class"].__setitem__("arrest", float("inf")),
    ):
        d = json.loads(json.dumps(good))
        broken(d)
        with pytest.raises(WeightsError, match="screen"):
            with_screen(data, d)
    # a file carrying a bad screen is refused on load too (not only when written)
    import io

    import torch

    payload = torch.load(io.BytesIO(data), weights_only=True)
    payload["screen"]["threshold_extra"] = 1
    buf = io.BytesIO()
    torch.save(payload, buf)
    with pytest.raises(WeightsError, match="screen is invalid"):
        model_from_bytes(buf.getvalue())
    # a screen an older version calibrated: the model loads without it (a full scan runs),
    # and --cascade asks for a new calibration
    payload["screen"] = {**good, "format": 1, "per_class": None}
    buf = io.BytesIO()
    torch.save(payload, buf)
    old = tmp_path / "older-screen.avrl"
    old.write_bytes(buf.getvalue())
    loaded = model_from_bytes(buf.getvalue())
    assert loaded.screen is None and loaded.model_id == load_model(footage["model"]).model_id
    with pytest.raises(ConfigError, match="older version calibrated"):
        run_scan(ScanConfig(source=str(tmp_path), model=str(old), out=str(tmp_path / "o"),
                            cascade=True))
    with pytest.raises(ConfigError, match="avrl calibrate"):
        run_scan(ScanConfig(source=str(footage["data"] / "recordings"),
                            model=str(footage["plain"]), out=str(tmp_path / "o"), cascade=True))


def test_threshold_for_recall_counts_the_margin() -> None:
    scores = [np.array([0.1, 0.9, 0.2, 0.1, 0.1, 0.3, 0.1])]
    labels = [np.array([0, 1, 1, 0, 0, 1, 0], float)]
    # margin 1: 0.9 alone covers windows 0-2 (two positives of three); 0.3 adds window 5
    assert scr.threshold_for_recall(scores, labels, 0.6, 1) == 0.9
    assert scr.threshold_for_recall(scores, labels, 1.0, 1) == 0.3
    assert scr.threshold_for_recall(scores, labels, 1.0, 0) == 0.2
    assert scr.runs(scr.candidates(scores[0], 0.3, 1)) == [(0, 2), (4, 6)]


def test_bench_cascade_truth_follows_the_linked_recordings(tmp_path: Path) -> None:
    """`avrl bench cascade` scans folders of links to the footage: each group's ground truth
    names the links (what the scan lists), every event of the footage lands in exactly one
    group, and matching a scan that listed other files is refused, not a recall of 1.0."""
    from avrl_batch.bench import cascade
    from avrl_batch.data.synth import get_preset, recording_plan

    footage = tmp_path / "footage"
    plan = recording_plan(get_preset("cascade"), 0)
    rows = []
    for camera, uri, _, _, _ in plan:
        (footage / uri).parent.mkdir(parents=True, exist_ok=True)
        (footage / uri).write_bytes(b"x")
        rows.append({"source_uri": uri, "camera": camera, "label": "fight",
                     "start_s": 10.0, "end_s": 14.0})
    pq.write_table(pa.Table.from_pylist(rows), footage / "ground_truth.parquet")
    groups = cascade._camera_folders(footage, tmp_path / "work", 0)
    assert set(groups) == {"audio", "silent"}
    seen = []
    for folder, truth in groups.values():
        uris = pq.read_table(truth)["source_uri"].to_pylist()
        assert uris and all(u.startswith(str(folder) + "/") and Path(u).is_symlink()
                            for u in uris)
        seen += uris
    assert len(seen) == len(rows) == len(set(seen))
    with pytest.raises(RuntimeError, match="no ground-truth event"):
        cascade._match(tmp_path / "no-out", groups["audio"][1],
                       {"model_id": "m", "sources": ["/elsewhere/a.mp4"]})


def test_per_class_threshold_keeps_a_quiet_class() -> None:
    """Pooled, a class whose windows all score low is given up while the loud class keeps the
    pooled recall; per class, the threshold drops until the quiet class is covered too."""
    loud = np.r_[np.full(30, 0.9), np.zeros(10)]  # 30 loud positive windows, 10 calm ones
    quiet = np.array([0.0, 0.2, 0.0, 0.0, 0.0])  # one quiet positive window among calm ones
    scores = [loud, quiet]
    labels = [np.r_[np.ones(30), np.zeros(10)], np.array([0, 2, 0, 0, 0])]
    assert scr.threshold_for_recall(scores, labels, 0.95, 0) == 0.9  # 30 of 31 = 0.968
    assert scr.threshold_for_recall(scores, labels, 0.95, 0, per_class=True) == 0.2
    # per class balanced weights: each class counts half of the positives' half
    w = scr._balanced_weights(np.r_[labels[0], labels[1]])
    y = np.r_[labels[0], labels[1]]
    assert w[y == 0].sum() == pytest.approx(len(y) / 2)
    assert w[y == 1].sum() == pytest.approx(w[y == 2].sum()) == pytest.approx(len(y) / 4)


def test_event_recall_counts_an_event_once_any_window_is_a_candidate() -> None:
    """Of events, a threshold need only reach each event's best window: an event whose
    other windows carry no cue (a knockdown lying still after the thud) is still seen."""
    scores = [np.array([0.0, 0.8, 0.05, 0.0, 0.0, 0.0, 0.6, 0.1, 0.0, 0.0])]
    labels = [np.array([0, 1, 1, 0, 0, 0, 2, 2, 0, 0])]
    events = [np.array([0, 1, 1, 0, 0, 0, 2, 2, 0, 0])]
    assert scr.threshold_for_recall(scores, labels, 1.0, 0) == 0.05  # every window
    assert scr.threshold_for_recall(scores, labels, 1.0, 0, events=events) == 0.6
    assert scr.threshold_for_recall(scores, labels, 1.0, 0, events=events,
                                    per_class=True) == 0.6
    head = scr.train_head([np.c_[scores[0]]], labels, ("f",), 1.0, 0, events=events,
                          recall_of_events=True, class_names=("a", "b"))
    assert head.val_events == 2 and set(head.val_positives_by_class.values()) == {1}


def test_window_classes_take_the_most_overlapping_interval() -> None:
    starts = np.arange(6) * 2.0
    ends = starts + 2.0
    # class 3 covers window 1 whole; window 2 is 0.5 class 3 + 0.25 class 5 (positive, 3);
    # window 3 is 0.75 class 5; window 4 is 0.25 class 5 (negative)
    got = scr.window_classes(starts, ends, [(2.0, 5.0, 3), (5.5, 8.5, 5)])
    assert got.tolist() == [0, 3, 3, 5, 0, 0]
    assert scr.window_events(starts, ends, [(2.0, 5.0), (5.5, 8.5)]).tolist() == [
        0, 1, 1, 2, 0, 0]
    assert ((got > 0) == (scr.window_labels(starts, ends, [(2.0, 5.0), (5.5, 8.5)]) > 0)).all()


def test_calibrate_on_several_tables_records_what_it_learnt_from(
    footage: dict[str, Path], tmp_path: Path
) -> None:
    """Two interval tables (the ci ground truth split by camera) make one screen; the model
    file records both tables, the positive windows of each class, and per head the held-out
    recall of each class, each at least the target (per class)."""
    from avrl_batch.data.synth import resolve_uri
    from avrl_batch.modelfile import load_model
    from avrl_batch.train.calibrate import calibrate, summary

    gt_path = footage["data"] / "ground_truth.parquet"
    rows = pq.read_table(gt_path).to_pylist()
    for r in rows:  # absolute: the tables are written elsewhere
        r["source_uri"] = resolve_uri(gt_path, r["source_uri"])
    tables = []
    for name, keep in (("a", lambda r: r["camera"] == "cam01"),
                       ("b", lambda r: r["camera"] != "cam01")):
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.Table.from_pylist([r for r in rows if keep(r)]), path)
        tables.append(str(path))
    out = tmp_path / "m.avrl"
    screen = calibrate(str(footage["plain"]), tables, str(out), recall=0.9, margin_windows=1)
    # a table listed twice adds no event and no positive window
    twice = calibrate(str(footage["plain"]), [*tables, tables[0]], str(tmp_path / "m2.avrl"),
                      recall=0.9, margin_windows=1)
    assert (twice.positives, twice.events_by_class) == (screen.positives, screen.events_by_class)
    stored = load_model(out).screen
    assert stored == screen and stored.per_class and stored.recall_of == "events"
    assert sum(stored.events_by_class.values()) == len(rows)  # one event per table row
    assert stored.trained_on == ", ".join(tables) and stored.recordings == 3
    labels = {r["label"] for r in rows}
    assert set(stored.positives_by_class) <= labels
    assert sum(stored.positives_by_class.values()) == stored.positives > 0
    for head in (stored.video, stored.av):
        assert set(head.val_recall_by_class) == set(head.val_positives_by_class)
        assert all(v >= 0.9 for v in head.val_recall_by_class.values())
    assert summary(stored)["heads"]["av"]["val_recall_by_class"].keys() == \
        stored.av.val_recall_by_class.keys()


def test_bench_cascade_refuses_calibrating_on_the_measured_footage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from avrl_batch.cli import main

    for args, msg in ((["--calib-seeds", "2,0"], "not the measured footage's seed 0"),
                      (["--minutes", "0"], "--minutes must be a positive")):
        with pytest.raises(SystemExit) as exc:
            main(["bench", "cascade", str(tmp_path / "m.avrl"), "--work", str(tmp_path / "w"),
                  *args])
        assert exc.value.code == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # refused before any footage is made


def test_audio_net_is_the_models_audio_branch(tmp_path: Path) -> None:
    """The screen's audio trunk computes exactly the model's f_a, after a pickle round trip
    (how a scan ships it to the screening tasks), and its columns join the AV features."""
    import pickle

    import torch

    from avrl_batch.modelfile import load_model

    tiny_model(tmp_path / "m.avrl", seed=3)
    loaded = load_model(tmp_path / "m.avrl")
    net = scr.AudioNet.from_model(loaded.model, loaded.cfg)
    assert net is not None and net.dim == loaded.cfg.audio_dim
    x = np.random.default_rng(0).normal(size=(5, loaded.cfg.audio_examples, 96, 64))
    with torch.inference_mode():
        want = loaded.model.audio(torch.from_numpy(x.astype(np.float32))).numpy()
    shipped = pickle.loads(pickle.dumps(net))
    assert np.allclose(net.embed(x), want, atol=1e-5)
    assert np.allclose(shipped.embed(x), want, atol=1e-5)
    assert len(scr.av_features(net.dim)) == 2 * (len(scr.PACKET_BASE) + len(scr.AUDIO_BASE)
                                                 + net.dim)


def test_a_screen_belongs_to_the_network_it_was_calibrated_for(
    footage: dict[str, Path], tmp_path: Path
) -> None:
    """A screen that names another model is refused when written and left out when read
    (its audio features are another network's), and --cascade says so."""
    import io

    import torch

    from avrl_batch.modelfile import load_model, model_from_bytes, with_screen
    from avrl_batch.scan import ScanConfig, run_scan

    data = footage["model"].read_bytes()
    screen = load_model(footage["model"]).screen
    assert screen.model_id == load_model(footage["plain"]).model_id
    other = {**screen.to_dict(), "model_id": "avrl-tiny-000000000000"}
    with pytest.raises(WeightsError, match="calibrated for model 'avrl-tiny-000000000000'"):
        with_screen(data, other)
    payload = torch.load(io.BytesIO(data), weights_only=True)
    payload["screen"] = other
    buf = io.BytesIO()
    torch.save(payload, buf)
    assert model_from_bytes(buf.getvalue()).screen is None
    stale = tmp_path / "stale.avrl"
    stale.write_bytes(buf.getvalue())
    with pytest.raises(ConfigError, match="calibrated for another network"):
        run_scan(ScanConfig(source=str(tmp_path), model=str(stale), out=str(tmp_path / "o"),
                            cascade=True))


def test_video_head_keeps_keyframes_only_where_they_pay() -> None:
    """Fitted with and without the keyframe columns: kept when the held-out windows they
    spare the full model outweigh decoding them, dropped (no I-frame decoded) when they only
    add noise, or when there are so many keyframes that decoding them costs more."""
    from avrl_batch.train.calibrate import _video_head

    rng = np.random.default_rng(1)
    key_cols = [scr.VIDEO_FEATURES.index(n) for n in scr.VIDEO_FEATURES
                if n not in scr.PACKET_FEATURES]
    head = dict(recall=0.95, margin=0, class_names=("a",), per_class=False,
                recall_of_events=False)
    for keys_tell, kept in ((True, True), (False, False)):
        xs, ys = [], []
        for _ in range(3):
            y = (rng.random(400) < 0.05).astype(np.float64)
            x = rng.normal(size=(400, len(scr.VIDEO_FEATURES)))
            x[:, 0] += 1.0 * y  # the packets tell a little
            if keys_tell:
                x[:, key_cols] += 6.0 * y[:, None]  # the keyframes tell it all
            xs.append(x)
            ys.append(y)
        events = [np.where(y > 0, np.arange(1, len(y) + 1), 0) for y in ys]
        got, keyframes = _video_head(xs, ys, events, head)
        assert keyframes is kept
        assert got.features == scr.video_features(kept)
        # a keyframe in every 2 s costs KEYFRAME_COST of a window; one every 0.25 s, 8 times
        # that: more than all the windows they could spare
        assert _video_head(xs, ys, events, head, keyframes_per_window=8.0)[1] is False


@pytest.mark.parametrize("fmt", ["fltp", "s16"])
def test_decimator_keeps_the_audios_length(fmt: str) -> None:
    """48 kHz in AAC's 1,024-sample frames -> 16 kHz: every sample is kept (the remainder of
    a frame opens the next group), so the audio stays in step with the picture."""
    import av

    rng = np.random.default_rng(2)
    n_frames, size = 150, 1024  # 3.2 s; 1024 % 3 = 1 sample left over each frame
    wave = rng.uniform(-0.5, 0.5, size=(2, n_frames * size)).astype(np.float32)
    dec = scr._Decimator(3)
    got = []
    for k in range(n_frames):
        part = wave[:, k * size:(k + 1) * size]
        if fmt == "s16":
            part = (part * 32767).astype(np.int16).T.reshape(1, -1)  # packed stereo
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(part), format=fmt,
                                           layout="stereo")
        frame.sample_rate = 48_000
        out = dec.add(frame)
        if out is not None:
            got.append(out)
    got.append(dec.flush())
    y = np.concatenate(got)
    assert len(y) == n_frames * size // 3  # 51,200 samples: none dropped
    mono = wave.mean(axis=0)
    want = mono[: len(y) * 3].reshape(-1, 3).mean(axis=1)
    assert np.allclose(y, want, atol=2e-4 if fmt == "s16" else 1e-6)


def test_calibrate_command_says_what_the_screen_reads(
    footage: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from avrl_batch.cli import main
    from avrl_batch.modelfile import load_model

    out = tmp_path / "m.avrl"
    main(["calibrate", str(footage["plain"]), str(footage["data"] / "ground_truth.parquet"),
          "--out", str(out), "--recall", "0.9"])
    text = capsys.readouterr().out
    screen = load_model(out).screen
    dim = load_model(footage["plain"]).cfg.audio_dim
    assert screen.audio_net_dim == dim and screen.needs_audio_net
    assert f"audio head reads the model's audio branch: yes, {dim} values" in text
    keys = "yes" if screen.video_keyframes else "no (packets only)"
    assert f"video head decodes keyframes: {keys}" in text
    assert f"wrote {out}" in text
