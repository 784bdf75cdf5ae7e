"""Deterministic synthetic surveillance footage: a labelled clip set and long camera recordings.

Layout written under ``out_dir`` (all URIs in the tables are relative to the folder of the
table, so the folder can be moved or uploaded to S3 as a whole; see ``resolve_uri``)::

    manifest.parquet, manifest.csv          CLIPS schema: uri, label, split, dark, seed
    clips/<split>/<label>/<label>_<split>_<nnnn>.mp4
    ground_truth.parquet, ground_truth.csv  GROUND_TRUTH schema, one row per embedded event
    recordings/<camera>/<camera>_<YYYYmmddTHHMMSSZ>.mp4

Everything is a pure function of (preset, seed): the tables are byte-identical between runs,
and so are the media files (encoder and RGB->YUV conversion run single-threaded).
What each class looks and sounds like is in ``scenes.CLASS_CUES``.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from avrl_batch.classes import SHADE
from avrl_batch.data import sounds
from avrl_batch.data.scenes import (
    Episode,
    Lighting,
    Passersby,
    draw_tracks,
    make_background,
    make_episode,
    passersby_tracks,
)
from avrl_batch.errors import ConfigError
from avrl_batch.schema import CLIPS, GROUND_TRUTH

SPLITS = ("train", "test")
RECORDINGS_START = datetime(2026, 3, 1, 8, 0, 0, tzinfo=timezone.utc)
AUDIO_CHUNK_S = 1.0  # recordings' audio is made and encoded one chunk at a time
CROSSFADE_S = 0.1  # ... with this much overlap between consecutive chunks' babble
# cue level over the babble, dB: low values bury the cue, so audio alone is not perfect
CUE_SNR_DB = (-6.0, 10.0)
BABBLE_RMS = (0.02, 0.06)
HISS_RMS = (0.002, 0.008)
PASSERSBY = (2, 6)  # people wandering through every clip and recording: 2 to 5


@dataclass(frozen=True)
class SynthPreset:
    """Geometry and amounts of one synthetic data set."""

    name: str
    width: int
    height: int
    fps: int
    clip_s: float  # clip length = the model preset's window
    train_per_class: int
    test_per_class: int
    dark_fraction: float  # share of each class and split rendered at night
    cameras: int  # cameras with audio, one recording each
    recording_minutes: float
    events_per_recording: int
    silent_minutes: float  # one more camera whose recording has no audio stream (0 = none)
    sample_rate: int
    max_event_s: float = 20.0  # longest anomaly event of a recording (run, chase, fight, arrest)
    # > 0: the recordings' sensor noise is drawn from this many noise frames made ahead, one
    # picked at random per frame (0: fresh noise per frame, as the small presets have)
    noise_bank: int = 0


SYNTH_PRESETS: dict[str, SynthPreset] = {
    # seconds on 2 cores; 2.0 s clips = the `tiny` model window
    "ci": SynthPreset("ci", 64, 64, 10, 2.0, 6, 3, 0.34, 2, 1.5, 3, 1.0, 16_000),
    # `avrl demo`: enough clips for the tiny96 model to learn in a few minutes on 2 cores
    "demo": SynthPreset("demo", 96, 96, 10, 2.0, 30, 8, 0.3, 2, 3.0, 6, 1.0, 16_000),
    # enough clips for training to show the fusion effect; 3 x 10 min of recordings. 200 training
    # clips a class: with 50 the tiny96 AV model never learnt the one visual cue that tells a
    # chase (two runners) from a run (one) among the passers-by (AV 78% of mean per-class
    # accuracy, chase mostly called run); with 200 it reached 92% (plain loop, 15 epochs)
    "bench": SynthPreset("bench", 96, 96, 10, 2.0, 200, 20, 0.3, 3, 10.0, 12, 3.0, 16_000),
    # paper-like geometry (docs/design.md §2: 4 s windows), fewer clips
    "paper-size": SynthPreset("paper-size", 320, 240, 25, 4.0, 10, 5, 0.3, 2, 5.0, 6, 2.0, 48_000),
    # `avrl bench cascade`: recordings only (no clips), 720p 25 fps, a keyframe every 2 s,
    # sensor noise, ~5 % of the time inside events (2 events of <= 6 s per 3 minutes); two
    # cameras with audio and one without. 3 minutes a camera (`--minutes` for longer): a 720p
    # frame takes ~15 ms to make and encode on one core here (x264 most of it), so a set is
    # ~2.5 minutes to write on one core, less with `--workers 2`
    "cascade": SynthPreset(
        "cascade", 1280, 720, 25, 2.0, 0, 0, 0.0, 2, 3.0, 2, 3.0, 48_000, max_event_s=6.0,
        noise_bank=25,
    ),
}


@dataclass(frozen=True)
class SynthResult:
    manifest_path: Path | None
    ground_truth_path: Path | None
    n_clips: int
    n_recordings: int
    seconds: float  # wall time of the generation


Progress = Callable[[str, float, float], None]  # (stage, done, total)


def get_preset(name: str) -> SynthPreset:
    if name not in SYNTH_PRESETS:
        raise ConfigError(
            f"unknown synth preset {name!r}; choose one of {', '.join(SYNTH_PRESETS)}"
        )
    return SYNTH_PRESETS[name]


def resolve_uri(table_path: str | Path, uri: str) -> str:
    """A URI from a manifest or ground-truth table, resolved against the table's folder
    (absolute paths and scheme URIs such as s3:// are returned unchanged)."""
    if "://" in uri or Path(uri).is_absolute():
        return uri
    base = str(table_path)
    if "://" in base:
        return base.rsplit("/", 1)[0] + "/" + uri
    return str(Path(base).parent / uri)


def clip_seed(seed: int, label: str, split: str, index: int) -> int:
    ss = np.random.SeedSequence([seed, SHADE.names.index(label), SPLITS.index(split), index])
    return int(ss.generate_state(1, np.uint32)[0])


# ---------------------------------------------------------------------------------------
# clips


def _mix(rng: np.random.Generator, n: int, sr: int, cue: np.ndarray | None) -> np.ndarray:
    level = rng.uniform(*BABBLE_RMS)
    audio = sounds.babble(rng, n, sr, int(rng.integers(2, 7))) * level
    audio += rng.normal(0, rng.uniform(*HISS_RMS), n)
    if cue is not None:
        audio += cue[:n] * level * 10 ** (rng.uniform(*CUE_SNR_DB) / 20)
    peak = float(np.abs(audio).max())
    if peak > 0.95:  # gunshots at high SNR: scale down rather than clip
        audio *= 0.95 / peak
    return audio.astype(np.float32)


def render_clip(
    label: str, seed: int, preset: SynthPreset, dark: bool
) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames ((H, W, 3) uint8 each) and mono audio (N,) float32 of one labelled clip."""
    rng = np.random.default_rng(seed)
    fps, sr, dur = preset.fps, preset.sample_rate, preset.clip_s
    bg = make_background(rng, preset.height, preset.width)
    ep = make_episode(label, rng, dur, fps, sr)
    # passers-by in every clip, as many as wander through a recording (write_recording), so
    # that neither a figure count nor a clip-vs-recording difference gives the class away: with
    # fewer of them, a model learnt "few people = knockdown" and saw knockdowns all over the
    # recordings' calm stretches
    tracks = passersby_tracks(rng, ep.n_frames, fps, int(rng.integers(*PASSERSBY))) + ep.tracks
    light = Lighting.draw(rng, dark)
    frames = []
    for i in range(ep.n_frames):
        img = bg.copy()
        draw_tracks(img, tracks, i)
        frames.append(light.expose(rng, img))
    audio = _mix(rng, int(round(dur * sr)), sr, ep.audio)
    return frames, audio


def write_clip(path: Path, label: str, seed: int, preset: SynthPreset, dark: bool) -> None:
    frames, audio = render_clip(label, seed, preset, dark)
    _encode(path, frames, audio, preset)


def _encode(
    path: Path,
    frames: Iterable[np.ndarray],
    audio: np.ndarray | Iterable[np.ndarray] | None,
    preset: SynthPreset,
) -> None:
    """Encode a clip or recording byte-reproducibly (see the module doc)."""
    from avrl_batch.media.encode import encode_av

    path.parent.mkdir(parents=True, exist_ok=True)
    encode_av(
        path,
        frames,
        fps=preset.fps,
        audio=audio,
        sample_rate=preset.sample_rate,
        gop=preset.fps * 2,
        threads=1,
        bframes=0,  # x264 B-frame decisions differ between runs; P-only output is reproducible
    )


def clip_rows(preset: SynthPreset, seed: int) -> list[dict]:
    """The manifest rows of a preset, in file order (split, class, index)."""
    rows = []
    for split in SPLITS:
        n = preset.train_per_class if split == "train" else preset.test_per_class
        n_dark = int(round(n * preset.dark_fraction))
        if preset.dark_fraction > 0 and n > 0:
            n_dark = max(n_dark, 1)
        for label in SHADE.names:
            for i in range(n):
                rows.append(
                    {
                        "uri": f"clips/{split}/{label}/{label}_{split}_{i:04d}.mp4",
                        "label": label,
                        "split": split,
                        # spread the dark clips over the index range
                        "dark": (i * n_dark) // n != ((i + 1) * n_dark) // n,
                        "seed": clip_seed(seed, label, split, i),
                    }
                )
    return rows


# ---------------------------------------------------------------------------------------
# recordings


@dataclass(frozen=True)
class PlannedEvent:
    label: str  # an anomaly class, or normal2 (a queue forming: not in the ground truth)
    start_s: float
    end_s: float
    seed: int


def plan_recording(
    seed: int, duration_s: float, n_events: int, fps: int, max_event_s: float = 20.0
) -> list[PlannedEvent]:
    """Anomaly events separated by normal stretches (some with a queue), in time order.

    Every anomaly class appears once before any repeats. Starts and ends lie on the frame grid.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    labels: list[str] = []
    while len(labels) < n_events:
        labels += [SHADE.anomaly[k] for k in rng.permutation(len(SHADE.anomaly))]
    slot = duration_s / max(n_events, 1)
    events: list[PlannedEvent] = []
    gap = 4.0  # at least this much normal footage before and after each event
    for k in range(n_events):
        label = labels[k]
        long_ok = label in ("run", "chase", "fight", "arrest")
        dur = rng.uniform(4.0, max(4.0, max_event_s)) if long_ok else rng.uniform(2.5, 4.5)
        dur = min(dur, slot - 2 * gap)
        if dur < 2.0:
            break  # recording too short for more events
        lo = k * slot + gap
        start = rng.uniform(lo, (k + 1) * slot - gap - dur)
        start, end = round(start * fps) / fps, round((start + dur) * fps) / fps
        if start - lo >= 10.0 and rng.random() < 0.5:
            q_start = round((lo + 1.0) * fps) / fps
            q_end = round(min(start - 2.0, q_start + 10.0) * fps) / fps
            events.append(PlannedEvent("normal2", q_start, q_end, _event_seed(seed, 2 * k)))
        events.append(PlannedEvent(label, start, end, _event_seed(seed, 2 * k + 1)))
    return events


def _event_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([seed, 1, k]).generate_state(1, np.uint32)[0])


class _EventCache:
    """Episodes made on first use and forgotten soon after: the frame and audio writers
    advance together, so a handful of live episodes bounds memory for any length."""

    def __init__(self, events: list[PlannedEvent], fps: int, sr: int, keep: int = 4) -> None:
        self.events, self.fps, self.sr, self.keep = events, fps, sr, keep
        self.live: dict[int, tuple[Episode, float]] = {}
        self.starts = [e.start_s for e in events]

    def get(self, k: int) -> tuple[Episode, float]:
        if k not in self.live:
            ev = self.events[k]
            rng = np.random.default_rng(ev.seed)
            gain_db = rng.uniform(*CUE_SNR_DB)
            onset = 0.0 if ev.label == "normal2" else rng.uniform(0.0, 0.3)
            ep = make_episode(ev.label, rng, ev.end_s - ev.start_s, self.fps, self.sr, onset=onset)
            if len(self.live) >= self.keep:
                self.live.pop(min(self.live))
            self.live[k] = (ep, gain_db)
        return self.live[k]

    def overlapping(self, t0: float, t1: float) -> Iterator[int]:
        # events are sorted by start and never overlap, so only the last one starting
        # before t1 and its predecessor can reach into [t0, t1) (a 24-hour file has ~1,700)
        k = bisect.bisect_left(self.starts, t1) - 1
        for j in (k - 1, k):
            if j >= 0 and self.events[j].end_s > t0:
                yield j


def write_recording(
    path: str | Path,
    preset: SynthPreset,
    *,
    seed: int,
    duration_s: float,
    n_events: int,
    with_audio: bool = True,
    progress: Callable[[float], None] | None = None,
) -> list[PlannedEvent]:
    """Write one long recording in the geometry and sample rate of ``preset``, streaming
    (memory does not grow with ``duration_s``).

    Returns the planned episodes; the anomaly ones are the ground truth.
    ``progress`` is called with the seconds of footage written since the last call.
    """
    events = plan_recording(seed, duration_s, n_events, preset.fps, preset.max_event_s)
    cache = _EventCache(events, preset.fps, preset.sample_rate)
    frames = _recording_frames(preset, seed, duration_s, cache, progress)
    audio = _recording_audio(preset.sample_rate, seed, duration_s, cache) if with_audio else None
    _encode(Path(path), frames, audio, preset)
    return events


def _recording_frames(
    preset: SynthPreset,
    seed: int,
    duration_s: float,
    cache: _EventCache,
    progress: Callable[[float], None] | None,
) -> Iterator[np.ndarray]:
    """The frames of a recording: the plaza, its passers-by and each event's figures."""
    fps = preset.fps
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    bg = make_background(rng, preset.height, preset.width)
    light = Lighting.draw(rng, dark=False)
    crowd = Passersby(rng, int(rng.integers(*PASSERSBY)), fps)
    noise_rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    shape = (preset.height, preset.width, 3)
    bank = [
        noise_rng.standard_normal(shape, dtype=np.float32) for _ in range(preset.noise_bank)
    ]
    # with a noise bank, the empty plaza is exposed once under each noise frame; a frame is
    # a copy of one of those with only the boxes the figures were drawn into exposed again
    # (the same arithmetic per pixel as exposing the whole frame, so the same bytes, at a
    # fraction of the cost: at 720p the figures cover a few per cent of the picture)
    calm = [light.expose_with(bg, noise) for noise in bank]
    scene = bg.copy()  # figures are drawn here, and the plaza restored under them after
    for i in range(int(round(duration_s * fps))):
        t = i / fps
        img = scene if bank else bg.copy()
        boxes = crowd.step_and_draw(img)
        for k in cache.overlapping(t, t + 1e-9):
            ep, _ = cache.get(k)
            j = i - int(round(cache.events[k].start_s * fps))
            if 0 <= j < ep.n_frames:
                boxes += draw_tracks(img, ep.tracks, j)
        if progress is not None and i % fps == fps - 1:
            progress(1.0)
        if not bank:
            yield light.expose(noise_rng, img)
            continue
        k = int(noise_rng.integers(len(bank)))
        frame = calm[k].copy()  # (H, W, 3) uint8
        for y0, y1, x0, x1 in boxes:
            frame[y0:y1, x0:x1] = light.expose_with(scene[y0:y1, x0:x1],
                                                    bank[k][y0:y1, x0:x1])
        for y0, y1, x0, x1 in boxes:
            scene[y0:y1, x0:x1] = bg[y0:y1, x0:x1]
        yield frame


def _recording_audio(
    sr: int, seed: int, duration_s: float, cache: _EventCache
) -> Iterator[np.ndarray]:
    """The audio of a recording, one AUDIO_CHUNK_S chunk at a time: babble, hiss, the cues."""
    chunk = int(AUDIO_CHUNK_S * sr)
    total = int(round(duration_s * sr))
    level_rng = np.random.default_rng(np.random.SeedSequence([seed, 5]))
    level = level_rng.uniform(*BABBLE_RMS)
    voices = int(level_rng.integers(3, 7))
    # Each chunk's babble is made a little longer than the chunk and the overhang is
    # cross-faded (equal power) into the next chunk's start. Butted end to end, independent
    # chunks click once a second (a level jump plus the FFT band-pass's edge) — a sound no
    # clip has, which a model hears as a knockdown's thud.
    ov = int(CROSSFADE_S * sr)
    ramp = np.sin(np.linspace(0.0, np.pi / 2, ov)) if ov else np.zeros(0)  # (ov,) 0 -> 1
    tail = None
    for c, s0 in enumerate(range(0, total, chunk)):
        n = min(chunk, total - s0)
        crng = np.random.default_rng(np.random.SeedSequence([seed, 6, c]))
        long = sounds.babble(crng, n + ov, sr, voices) * level  # (n + ov,)
        block = long[:n].copy()
        if tail is not None:
            k = min(ov, n)
            block[:k] = tail[:k] * ramp[::-1][:k] + block[:k] * ramp[:k]
        tail = long[n:]
        block += crng.normal(0, HISS_RMS[0] * 2, n)
        for k in cache.overlapping(s0 / sr, (s0 + n) / sr):
            ep, gain_db = cache.get(k)
            if ep.audio is None:
                continue
            e0 = int(round(cache.events[k].start_s * sr))
            lo, hi = max(s0, e0), min(s0 + n, e0 + ep.audio.shape[0])
            if lo < hi:
                block[lo - s0 : hi - s0] += (
                    ep.audio[lo - e0 : hi - e0] * level * 10 ** (gain_db / 20)
                )
        yield np.clip(block, -1, 1).astype(np.float32)


def recording_plan(
    preset: SynthPreset, seed: int, minutes: float | None = None
) -> list[tuple[str, str, float, bool, int]]:
    """(camera, relative uri, duration_s, has_audio, seed) of each recording of a preset;
    ``minutes``: every recording (the silent one too) this long instead of the preset's."""
    out = []
    audio_min = preset.recording_minutes if minutes is None else minutes
    silent_min = preset.silent_minutes if minutes is None else minutes
    cams = [(c, audio_min, True) for c in range(1, preset.cameras + 1)]
    if preset.silent_minutes > 0:
        cams.append((preset.cameras + 1, silent_min, False))
    for c, minutes, has_audio in cams:
        camera = f"cam{c:02d}"
        # cameras started at different times of the morning, each on a whole second
        start = RECORDINGS_START + timedelta(minutes=7 * (c - 1))
        name = f"{camera}_{start.strftime('%Y%m%dT%H%M%SZ')}.mp4"
        rec_seed = int(np.random.SeedSequence([seed, 100, c]).generate_state(1, np.uint32)[0])
        out.append((camera, f"recordings/{camera}/{name}", minutes * 60.0, has_audio, rec_seed))
    return out


# ---------------------------------------------------------------------------------------
# tables and the whole set


def _write_table(rows: list[dict], schema, stem: Path) -> Path:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, stem.with_suffix(".parquet"))
    pacsv.write_csv(table, stem.with_suffix(".csv"))
    return stem.with_suffix(".parquet")


def generate(
    out_dir: str | Path,
    preset: str = "ci",
    seed: int = 0,
    clips: bool = True,
    recordings: bool = True,
    progress: Progress | None = None,
    *,
    minutes: float | None = None,
    workers: int = 1,
) -> SynthResult:
    """Write the synthetic data set of ``preset`` under ``out_dir`` (see the module doc).

    ``minutes``: each recording this long instead of the preset's lengths, with as many
    events as the preset has per minute (the same share of the time in events).
    ``workers``: recordings written in this many processes at once (the files are the same
    whatever the number)."""
    p = get_preset(preset)
    if minutes is not None and not (minutes > 0 and minutes * 60 * p.fps >= 1):
        raise ConfigError(f"--minutes must be a positive length of footage, got {minutes}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; give synth a folder to write into")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report = progress or (lambda stage, done, total: None)

    manifest_path = None
    rows = clip_rows(p, seed) if clips else []
    for k, row in enumerate(rows):
        write_clip(out / row["uri"], row["label"], row["seed"], p, row["dark"])
        report("clips", k + 1, len(rows))
    if clips:
        manifest_path = _write_table(rows, CLIPS, out / "manifest")

    gt_path = None
    plan = recording_plan(p, seed, minutes) if recordings else []
    gt_rows = []
    for (camera, uri, *_), events in zip(
        plan, _write_recordings(out, p, plan, workers, report), strict=True
    ):
        gt_rows += [
            {
                "source_uri": uri,
                "camera": camera,
                "label": e.label,
                "start_s": e.start_s,
                "end_s": e.end_s,
            }
            for e in events
            if e.label in SHADE.anomaly
        ]
    if recordings:
        gt_path = _write_table(gt_rows, GROUND_TRUTH, out / "ground_truth")
    return SynthResult(manifest_path, gt_path, len(rows), len(plan), time.perf_counter() - t_start)


def _write_recordings(
    out: Path,
    p: SynthPreset,
    plan: list[tuple[str, str, float, bool, int]],
    workers: int,
    report: Progress,
) -> list[list[PlannedEvent]]:
    """Write every recording of ``plan`` (in ``workers`` processes when more than one);
    each one's planned events, in plan order."""
    total_s = sum(r[2] for r in plan)
    done = [0.0]

    def tick(sec: float) -> None:
        done[0] += sec
        report("recordings", min(done[0], total_s), total_s)

    jobs = [
        dict(
            path=out / uri, preset=p, seed=rec_seed, duration_s=duration_s,
            # the preset's events per minute, whatever the recording's length
            n_events=max(int(round(p.events_per_recording * duration_s
                                   / (p.recording_minutes * 60))), 1),
            with_audio=has_audio,
        )
        for _, uri, duration_s, has_audio, rec_seed in plan
    ]
    if workers <= 1 or len(jobs) <= 1:
        return [write_recording(**job, progress=tick) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: the caller may hold threads (Ray, torch) that a forked child must not inherit
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
        futures = [pool.submit(write_recording, **job) for job in jobs]
        results = []
        for job, future in zip(jobs, futures, strict=True):
            results.append(future.result())
            tick(job["duration_s"])
    return results
