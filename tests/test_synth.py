"""The synthetic footage generator: determinism, manifest, media and ground truth."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from avrl_batch.classes import SHADE
from avrl_batch.cli import main
from avrl_batch.data.synth import SYNTH_PRESETS, render_clip, resolve_uri
from avrl_batch.errors import ConfigError
from avrl_batch.schema import CLIPS, GROUND_TRUTH

REC_NAME = re.compile(r"(?P<camera>[^/]+)/(?P=camera)_(?P<ts>\d{8}T\d{6}Z)\.mp4$")


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _synth_ci(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """`avrl synth OUT --preset ci --seed 1` into a fresh folder; OUT."""
    out = tmp_path_factory.mktemp(name) / "synth"
    main(["synth", str(out), "--preset", "ci", "--seed", "1"])
    return out


@pytest.fixture(scope="module")
def ci_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _synth_ci(tmp_path_factory, "a")


@pytest.mark.slow
def test_same_seed_gives_identical_tables_and_media(
    ci_synth: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    a, b = ci_synth, _synth_ci(tmp_path_factory, "b")
    for name in ("manifest.parquet", "manifest.csv", "ground_truth.parquet", "ground_truth.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    da, db = _digest(a), _digest(b)
    assert da.keys() == db.keys()
    different = sorted(k for k in da if da[k] != db[k])
    assert different == [], f"media not reproducible: {different[:5]}"


def test_manifest_has_every_class_split_and_dark(ci_synth: Path) -> None:
    root = ci_synth
    table = pq.read_table(root / "manifest.parquet")
    assert table.schema.equals(CLIPS, check_metadata=False)
    csv = pacsv.read_csv(root / "manifest.csv")
    assert csv.column("uri").to_pylist() == table.column("uri").to_pylist()
    rows = table.to_pylist()
    p = SYNTH_PRESETS["ci"]
    assert len(rows) == len(SHADE.names) * (p.train_per_class + p.test_per_class)
    for split in ("train", "test"):
        labels = {r["label"] for r in rows if r["split"] == split}
        assert labels == set(SHADE.names), split
        dark = [r for r in rows if r["split"] == split and r["dark"]]
        assert dark and len(dark) < len([r for r in rows if r["split"] == split])
    # URIs are relative to the manifest's folder, so the folder can be moved as a whole
    assert all(not r["uri"].startswith("/") for r in rows)
    assert len({r["seed"] for r in rows}) == len(rows)


def test_clips_decode_with_expected_streams(ci_synth: Path) -> None:
    import av

    root = ci_synth
    p = SYNTH_PRESETS["ci"]
    rows = pq.read_table(root / "manifest.parquet").to_pylist()
    for r in rows:
        path = resolve_uri(root / "manifest.parquet", r["uri"])
        with av.open(path) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            assert (v.width, v.height) == (p.width, p.height)
            assert a.sample_rate == p.sample_rate
            assert float(c.duration / av.time_base) == pytest.approx(p.clip_s, abs=0.2)
            n = sum(1 for _ in c.decode(video=0))
            assert n == int(p.clip_s * p.fps)


def test_recordings_names_ground_truth_and_silent_one(ci_synth: Path) -> None:
    import av

    root = ci_synth
    gt_path = root / "ground_truth.parquet"
    gt = pq.read_table(gt_path)
    assert gt.schema.equals(GROUND_TRUTH, check_metadata=False)
    recs = sorted((root / "recordings").rglob("*.mp4"))
    p = SYNTH_PRESETS["ci"]
    assert len(recs) == p.cameras + 1
    has_audio = {}
    durations = {}
    for rec in recs:
        m = REC_NAME.search(rec.as_posix())
        assert m, rec
        start = datetime.strptime(m["ts"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        assert start.year == 2026
        uri = rec.relative_to(root).as_posix()
        with av.open(str(rec)) as c:
            durations[uri] = float(c.duration / av.time_base)
            has_audio[uri] = bool(c.streams.audio)
            assert c.streams.video[0].average_rate == p.fps
    assert sorted(has_audio.values()) == [False] + [True] * p.cameras
    assert durations[next(u for u, h in has_audio.items() if not h)] == pytest.approx(
        p.silent_minutes * 60, abs=0.5
    )
    rows = gt.to_pylist()
    assert {r["source_uri"] for r in rows} == set(durations)  # every recording has events
    for r in rows:
        assert r["label"] in SHADE.anomaly
        assert r["camera"] == REC_NAME.search(r["source_uri"])["camera"]
        assert 0 < r["start_s"] < r["end_s"] <= durations[r["source_uri"]]
    by_source: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        by_source.setdefault(r["source_uri"], []).append((r["start_s"], r["end_s"]))
    for spans in by_source.values():
        spans.sort()
        # separated by normal footage
        assert all(b[0] - a[1] >= 4.0 for a, b in zip(spans, spans[1:], strict=False))


def test_cuecheck_scores_each_modality_on_the_clips(ci_synth: Path) -> None:
    """`python -m avrl_batch.data.cuecheck MANIFEST`: one accuracy row per feature set over
    the manifest's test clips, and on the ci clips audio + video beats video alone."""
    import subprocess
    import sys

    manifest = ci_synth / "manifest.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "avrl_batch.data.cuecheck", str(manifest)],
        capture_output=True, text=True, timeout=300, check=True,
    )
    rows = pq.read_table(manifest).to_pylist()
    test = [r for r in rows if r["split"] == "test"]
    n_train, n_test, n_dark = len(rows) - len(test), len(test), sum(r["dark"] for r in test)
    lines = done.stdout.splitlines()
    assert lines[0] == f"clips: {n_train} train, {n_test} test ({n_dark} dark)"
    accuracy = {}
    for line in lines:
        m = re.fullmatch(r"(audio|video|both) +([\d.]+) +([\d.]+) +([\d.]+)", line)
        if m:
            accuracy[m[1]] = [float(x) for x in m.groups()[1:]]
    assert set(accuracy) == {"audio", "video", "both"}
    assert all(0.0 <= a <= 100.0 for accs in accuracy.values() for a in accs)
    assert accuracy["both"][0] > accuracy["video"][0]
    gain = re.search(r"both - video: ([+-][\d.]+) all", done.stdout)
    both_minus_video = accuracy["both"][0] - accuracy["video"][0]
    assert gain and float(gain[1]) == pytest.approx(both_minus_video, abs=0.15)


def test_cue_design_dark_hides_video_and_keeps_audio() -> None:
    """Same seed, dark vs light: the frames lose most of their contrast, the audio is equal;
    shoot and scatter share their motion but not their sound."""
    p = SYNTH_PRESETS["ci"]
    light_f, light_a = render_clip("fight", 7, p, dark=False)
    dark_f, dark_a = render_clip("fight", 7, p, dark=True)
    assert np.array_equal(light_a, dark_a)
    assert np.mean(dark_f) < 0.3 * np.mean(light_f)

    def crest(a: np.ndarray) -> float:
        return float(np.abs(a).max() / np.sqrt(np.mean(a**2)))

    shots = [crest(render_clip("shoot", s, p, False)[1]) for s in range(6)]
    screams = [crest(render_clip("scatter", s, p, False)[1]) for s in range(6)]
    assert np.median(shots) > np.median(screams)  # impulses vs sustained tones


def test_unknown_preset_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["synth", str(tmp_path / "x"), "--preset", "huge"])
    assert exc.value.code == 2
    assert "unknown synth preset 'huge'" in capsys.readouterr().err


def test_day_long_plan_and_event_lookup_match_brute_force() -> None:
    """A 24-hour recording plan: events in order, separated, and the streaming writer's
    bisect lookup finds exactly the events a full scan finds."""
    from avrl_batch.data.synth import _EventCache, plan_recording

    events = plan_recording(3, 24 * 3600.0, 24 * 60, fps=10)
    anomalies = [e for e in events if e.label in SHADE.anomaly]
    assert len(anomalies) == 24 * 60
    assert {e.label for e in anomalies} == set(SHADE.anomaly)
    assert all(a.end_s <= b.start_s for a, b in zip(events, events[1:], strict=False))
    cache = _EventCache(events, fps=10, sr=16_000)
    rng = np.random.default_rng(0)
    for t0 in rng.uniform(0, 24 * 3600.0, 2000):
        brute = [k for k, e in enumerate(events) if e.start_s < t0 + 1.0 and e.end_s > t0]
        assert list(cache.overlapping(t0, t0 + 1.0)) == brute


def test_noise_bank_frames_are_the_whole_frame_exposure() -> None:
    """With a noise bank, a recording's frames are the calm plaza exposed once per noise
    frame with only the figures' boxes exposed again: byte for byte what exposing every
    whole frame gives (passers-by, an event's figures, the plaza restored after them)."""
    from dataclasses import replace

    from avrl_batch.data.scenes import Lighting, Passersby, draw_tracks, make_background
    from avrl_batch.data.synth import (
        PASSERSBY,
        _EventCache,
        _recording_frames,
        get_preset,
        plan_recording,
    )

    p = replace(get_preset("cascade"), width=192, height=108, noise_bank=3)
    seed, duration = 11, 12.0
    events = plan_recording(seed, duration, 1, p.fps, p.max_event_s)
    assert any(e.label in SHADE.anomaly for e in events)
    fast = list(_recording_frames(p, seed, duration, _EventCache(events, p.fps, 16_000), None))

    # the whole-frame reference: the same draws from the same generators
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    bg = make_background(rng, p.height, p.width)
    light = Lighting.draw(rng, dark=False)
    crowd = Passersby(rng, int(rng.integers(*PASSERSBY)), p.fps)
    noise_rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    bank = [noise_rng.standard_normal((p.height, p.width, 3), dtype=np.float32)
            for _ in range(p.noise_bank)]
    cache = _EventCache(events, p.fps, 16_000)
    drawn_event = 0
    assert len(fast) == int(duration * p.fps)
    for i, frame in enumerate(fast):
        img = bg.copy()
        crowd.step_and_draw(img)
        for k in cache.overlapping(i / p.fps, i / p.fps + 1e-9):
            ep, _ = cache.get(k)
            j = i - int(round(events[k].start_s * p.fps))
            if 0 <= j < ep.n_frames:
                drawn_event += bool(draw_tracks(img, ep.tracks, j))
        want = light.expose_with(img, bank[int(noise_rng.integers(len(bank)))])
        assert frame.dtype == np.uint8 and np.array_equal(frame, want), i
    assert drawn_event > p.fps  # the event's figures were on screen for over a second


def test_minutes_and_workers_make_the_same_longer_recordings(tmp_path: Path) -> None:
    """`generate(minutes=...)`: every recording that long, with the preset's events per
    minute; written in two processes, the files are the same bytes as in one."""
    import av

    from avrl_batch.data.synth import generate, get_preset

    p = get_preset("ci")
    one = generate(tmp_path / "one", "ci", seed=2, clips=False, minutes=3.0)
    two = generate(tmp_path / "two", "ci", seed=2, clips=False, minutes=3.0, workers=2)
    assert one.n_recordings == two.n_recordings == p.cameras + 1
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")
    for rec in (tmp_path / "one" / "recordings").rglob("*.mp4"):
        with av.open(str(rec)) as c:
            assert float(c.duration / av.time_base) == pytest.approx(180.0, abs=0.5)
    gt = pq.read_table(tmp_path / "one" / "ground_truth.parquet").to_pylist()
    per_rec = round(p.events_per_recording * 3.0 / p.recording_minutes)  # 3 per 1.5 min -> 6
    counts = {}
    for r in gt:
        counts[r["source_uri"]] = counts.get(r["source_uri"], 0) + 1
    assert sorted(counts.values()) == [per_rec] * (p.cameras + 1)
    with pytest.raises(ConfigError, match="--minutes must be a positive"):
        generate(tmp_path / "bad", "ci", clips=False, minutes=0.0)


def test_synth_cli_writes_recordings_in_worker_processes(tmp_path: Path) -> None:
    """`python -m avrl_batch synth --workers 2`: the spawned writers import the CLI's
    ``__main__`` module without running the command again."""
    import subprocess
    import sys

    out = tmp_path / "s"
    done = subprocess.run(
        [sys.executable, "-m", "avrl_batch", "synth", str(out), "--preset", "ci", "--no-clips",
         "--minutes", "0.25", "--workers", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("recordings: 3") == 1  # printed once: by the parent only
    assert len(list((out / "recordings").rglob("*.mp4"))) == 3
