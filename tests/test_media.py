"""Media decoding on files made here: exact frame sampling (CFR, VFR, a seek into a 10-minute
file), every supported format, audio alignment, and typed errors for broken files."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from mediagen import (
    delay_audio,
    expected_indices,
    make_indexed,
    make_rotated,
    read_index,
    read_indices,
    tone_audio,
)

from avrl_batch.errors import AvrlError
from avrl_batch.media import (
    DecodeStats,
    EmptyFile,
    ExceedsCaps,
    MediaCaps,
    MediaError,
    NotMedia,
    NoVideoStream,
    Truncated,
    decode_audio,
    decode_frames,
    examples_for_duration,
    iter_windows,
    probe,
    sample_times,
    window_logmel,
)
from avrl_batch.media.encode import encode_av
from avrl_batch.media.logmel import log_mel_examples_16k_fixed, to_mono_16k
from avrl_batch.media.video import AUDIO_LAG_S


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def cfr_mp4(media_dir: Path) -> Path:
    """20 s, 10 fps H.264 with B-frames and a 2 s GOP, AAC 44.1 kHz."""
    return make_indexed(
        media_dir / "cfr.mp4", n_frames=200, fps=10, audio_rate=44_100, gop=20, bframes=2
    )


def test_sample_times_fixed_step() -> None:
    np.testing.assert_allclose(sample_times(2.0, 6.0, 4), [2.0, 3.0, 4.0, 5.0])
    assert sample_times(0.0, 1.0, 1).tolist() == [0.0]
    with pytest.raises(ValueError):
        sample_times(0.0, 1.0, 0)


def test_cfr_frames_are_exact(cfr_mp4: Path) -> None:
    stats = DecodeStats()
    frames = decode_frames(cfr_mp4, 3.0, 7.0, 8, 64, stats=stats)
    assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
    # t_i = 3 + 0.5 i -> frame floor(10 t_i)
    assert read_indices(frames) == [30, 35, 40, 45, 50, 55, 60, 65]
    assert stats.frames_converted == 8  # only sampled frames are converted
    # resized (stretched) to another size, the code still reads back
    assert read_indices(decode_frames(cfr_mp4, 3.0, 7.0, 8, 32)) == read_indices(frames)
    # more samples than frames in the span: repeats, never a frame outside the rule
    assert read_indices(decode_frames(cfr_mp4, 0.0, 0.5, 10, 32)) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_vfr_frames_are_exact(media_dir: Path, ext: str) -> None:
    rng = np.random.default_rng(7)
    gaps = rng.choice([0.04, 0.1, 0.25, 0.5], size=80)  # s between frames, irregular
    pts = np.round(np.concatenate([[0.0], np.cumsum(gaps)[:-1]]), 3)
    path = make_indexed(media_dir / f"vfr.{ext}", n_frames=80, fps=25, pts_s=list(pts), gop=12)
    for start, end, T in ((1.0, 5.0, 16), (pts[40] - 0.3, pts[60], 9), (0.0, 2.0, 7)):
        frames = decode_frames(path, start, end, T, 32)
        assert read_indices(frames) == expected_indices(pts, sample_times(start, end, T))


@pytest.fixture(scope="module")
def long_mp4(media_dir: Path) -> Path:
    """10 min at 5 fps, 64x64, GOP 10 s, no audio: encodes in about a second."""
    return make_indexed(
        media_dir / "long.mp4", n_frames=3000, fps=5, gop=50, video_options={"preset": "ultrafast"}
    )


def test_seek_into_ten_minute_file(long_mp4: Path) -> None:
    path = long_mp4
    assert probe(path).duration_s == pytest.approx(600.0)
    stats = DecodeStats()
    frames = decode_frames(path, 300.0, 304.0, 8, 64, stats=stats)
    assert read_indices(frames) == [1500, 1502, 1505, 1507, 1510, 1512, 1515, 1517]
    # reached by seeking: decoding began at the keyframe before 300 s (290 s, GOP 10 s) and
    # decoded at most a GOP plus the span, never the 1500 frames before it
    assert stats.seek_s is not None and stats.first_frame_s is not None
    assert 289.0 < stats.first_frame_s <= 300.0
    assert stats.frames_decoded <= 50 + 4 * 5 + 5
    # windows over a mid-file segment: one seek, every window exact
    got = list(
        iter_windows(path, 420.0, 430.0, window_s=4.0, stride_s=2.0, frames=4, size=32, stats=stats)
    )
    assert [w.index for w in got] == [0, 1, 2, 3, 4]
    for w in got:
        assert read_indices(w.frames) == [
            int(round(t * 5)) for t in sample_times(w.start_s, w.end_s, 4)
        ]
        assert w.logmel is None and not w.has_audio


def test_windows_of_a_segment(cfr_mp4: Path) -> None:
    got = list(iter_windows(cfr_mp4, 10.0, 20.0, window_s=4.0, stride_s=2.0, frames=4, size=32))
    assert [(w.index, w.start_s) for w in got] == [(k, 10.0 + 2 * k) for k in range(5)]
    full = got[:3]
    for w in full:
        assert w.end_s == w.start_s + 4.0
        assert read_indices(w.frames) == [int(10 * w.start_s) + 10 * i for i in range(4)]
        assert w.logmel is not None and w.logmel.shape == (4, 96, 64)
        assert w.logmel.dtype == np.float32 and w.has_audio
    # windows starting within 4 s of the end are cut at the file's end (20 s): T frames are
    # spread over what exists, the log-mel keeps E = 4 examples (zero-padded) so they stack
    last = got[-1]
    assert (last.start_s, last.end_s) == (18.0, 20.0)
    assert read_indices(last.frames) == [180, 185, 190, 195]
    assert last.logmel is not None and last.logmel.shape == (4, 96, 64)
    np.stack([w.logmel for w in got])  # stackable


def test_window_audio_is_time_aligned(media_dir: Path) -> None:
    # lossless PCM in MOV (audio timestamps in samples): a decoded span must equal the
    # source's span resampled as a whole, wherever the seek lands
    sr = 44_100
    wave = tone_audio(12.0, sr, seed=3)
    ref16 = to_mono_16k(wave, sr)  # the whole signal resampled once
    mov = make_indexed(
        media_dir / "pcm.mov", n_frames=120, fps=10, audio=wave, audio_rate=sr, acodec="pcm_s16le"
    )
    for start in (0.0, 5.0, 7.5, 9.9):
        got = decode_audio(mov, start, start + 2.0)
        assert got is not None and got.shape == (32_000,) and got.dtype == np.float32
        want = ref16[int(start * 16_000) : int(start * 16_000) + 32_000]
        assert np.abs(got - want).max() < 1e-4  # s16 quantisation only
        lm = window_logmel(mov, start, start + 2.0)
        assert lm is not None and np.abs(lm - log_mel_examples_16k_fixed(want, 2)).max() < 0.01
    # the same through iter_windows (one pass, audio interleaved with video)
    (w,) = iter_windows(mov, 5.0, 5.5, window_s=2.0, stride_s=2.0, frames=4, size=32)
    assert np.abs(w.logmel - window_logmel(mov, 5.0, 7.0)).max() < 1e-4
    # Matroska stores millisecond timestamps: after a seek the audio is placed within 0.5 ms
    # (8 samples at 16 kHz) of its true position
    mkv = make_indexed(
        media_dir / "pcm.mkv", n_frames=120, fps=10, audio=wave, audio_rate=sr, acodec="pcm_s16le"
    )
    for start in (5.0, 7.5, 9.9):
        got = decode_audio(mkv, start, start + 2.0)
        assert got is not None
        want = ref16[int(start * 16_000) : int(start * 16_000) + 32_000]
        errors = [
            np.abs(got[100 + lag : 31_000 + lag] - want[100:31_000]).max() for lag in range(-8, 9)
        ]
        assert min(errors) < 0.2  # within a fraction of a 16 kHz sample of a lag <= 8


# audio 15.5 s long under 40 s of video: MP4 declares each track's duration, Matroska a
# DURATION tag per track, FLV nothing (the audio-lag rule finds the end)
EARLY_AUDIO_END = {"mp4": {}, "mkv": {}, "flv": {"vcodec": "libx264", "acodec": "aac"}}


@pytest.mark.parametrize("ext", EARLY_AUDIO_END)
def test_windows_past_the_audio_end_have_no_audio_and_no_segment_waits_for_it(
    media_dir: Path, ext: str
) -> None:
    path = make_indexed(
        media_dir / f"early.{ext}", n_frames=400, fps=10, audio=tone_audio(15.5, 16_000),
        audio_rate=16_000, **EARLY_AUDIO_END[ext],
    )
    stats = DecodeStats()
    got = list(
        iter_windows(path, 10.0, 20.0, window_s=2.0, stride_s=2.0, frames=4, size=32, stats=stats)
    )
    # [14, 16) has 1.5 s of audio (>= half): audio, zero-padded past 15.5 s; later windows none
    assert [w.has_audio for w in got] == [True, True, True, False, False]
    for w in got:
        assert (w.logmel is not None) == w.has_audio
        assert read_indices(w.frames) == [int(10 * w.start_s) + 5 * i for i in range(4)]
    assert got[0].logmel is not None and got[0].logmel.mean() > np.log(0.01) + 1.0
    # the pass ends near the segment's end instead of demuxing to 40 s for audio
    assert stats.last_packet_s is not None and stats.last_packet_s < 20.0 + AUDIO_LAG_S + 1.0
    # a segment wholly past the audio's end: no audio, and no wait for it either
    late = DecodeStats()
    tail = list(
        iter_windows(path, 24.0, 30.0, window_s=2.0, stride_s=2.0, frames=4, size=32, stats=late)
    )
    assert len(tail) == 3 and not any(w.has_audio or w.logmel is not None for w in tail)
    assert late.last_packet_s is not None and late.last_packet_s < 30.0 + AUDIO_LAG_S + 1.0


def test_an_mkv_whose_audio_outlasts_its_video_is_scanned_over_its_video(media_dir: Path) -> None:
    # Matroska declares no stream durations, only the container's (the longest stream) and a
    # DURATION tag per track: the video's is what a scan covers, so the last window is whole
    path = make_indexed(
        media_dir / "long_audio.mkv", n_frames=100, fps=10, audio=tone_audio(13.0, 16_000),
        audio_rate=16_000,
    )
    assert probe(path).duration_s == pytest.approx(10.0, abs=0.05)
    got = list(iter_windows(path, 8.0, 10.0, window_s=2.0, stride_s=2.0, frames=4, size=32))
    assert [(w.start_s, w.end_s, w.has_audio) for w in got] == [(8.0, 10.0, True)]
    assert read_indices(got[0].frames) == [80, 85, 90, 95]


def test_windows_before_a_late_audio_start_have_no_audio(media_dir: Path) -> None:
    full = make_indexed(media_dir / "full.mp4", n_frames=200, fps=10, audio_rate=16_000)
    path = delay_audio(full, media_dir / "late.mp4", 6.0)
    got = list(iter_windows(path, 0.0, 12.0, window_s=2.0, stride_s=2.0, frames=4, size=32))
    assert [w.has_audio for w in got] == [False, False, False, True, True, True]
    assert all((w.logmel is not None) == w.has_audio for w in got)
    assert [w.index for w in got] == list(range(6))


FORMATS = {
    # name: (file name, encode_av options, video codec, audio codec or None)
    "h264_aac_mp4": ("a.mp4", {}, "h264", "aac"),
    "hevc_aac_mp4": ("b.mp4", {"vcodec": "libx265"}, "hevc", "aac"),
    "mjpeg_alaw_avi": ("c.avi", {}, "mjpeg", "pcm_alaw"),
    "vp9_opus_webm": ("d.webm", {}, "vp9", "opus"),
    "h264_aac_mkv": ("e.mkv", {}, "h264", "aac"),
    "h264_no_audio_mp4": ("f.mp4", {}, "h264", None),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_formats_decode(media_dir: Path, fmt: str) -> None:
    name, opts, vcodec, acodec = FORMATS[fmt]
    rate = 48_000 if acodec else None
    path = make_indexed(media_dir / name, n_frames=40, fps=10, audio_rate=rate, **opts)
    info = probe(path)
    assert (info.video_codec, info.audio_codec, info.has_audio) == (vcodec, acodec, bool(acodec))
    assert (info.width, info.height, info.fps) == (64, 64, 10.0)
    assert info.duration_s == pytest.approx(4.0, abs=0.05)
    windows = list(iter_windows(path, 0.0, 4.0, window_s=2.0, stride_s=2.0, frames=4, size=32))
    assert len(windows) == 2
    for w in windows:
        assert w.frames.shape == (4, 32, 32, 3) and w.frames.dtype == np.uint8
        assert read_indices(w.frames) == [int(10 * w.start_s) + 5 * i for i in range(4)]
        assert w.has_audio == bool(acodec)
        if acodec:
            assert w.logmel is not None
            assert w.logmel.shape == (examples_for_duration(2.0), 96, 64)
            assert np.isfinite(w.logmel).all()
            # real sound, not the log(0.01) silence floor
            assert w.logmel.mean() > np.log(0.01) + 1.0
        else:
            assert w.logmel is None
    if not acodec:
        assert decode_audio(path, 0.0, 1.0) is None
    # a binary file object (what storage gives for S3) decodes to the same arrays
    with open(path, "rb") as f:
        same = decode_frames(f, 2.0, 4.0, 4, 32)
    np.testing.assert_array_equal(same, windows[1].frames)


def test_probe_metadata(media_dir: Path) -> None:
    path = make_indexed(
        media_dir / "meta.mp4",
        n_frames=10,
        fps=5,
        metadata={"creation_time": "2024-05-01T12:30:00.000000Z"},
    )
    info = probe(path)
    assert info.creation_time == datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
    assert info.rotation == 0 and info.n_frames == 10
    assert info.container_format.startswith("mov,mp4")


def _broken_files(media_dir: Path) -> dict[str, tuple[Path, type[MediaError], str]]:
    good_mp4 = make_indexed(media_dir / "good.mp4", n_frames=30, fps=10, audio_rate=16_000)
    good_mkv = make_indexed(media_dir / "good.mkv", n_frames=30, fps=10, audio_rate=16_000)
    empty = media_dir / "empty.mp4"
    empty.write_bytes(b"")
    noise = media_dir / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).bytes(20_000))
    cut_mp4 = media_dir / "cut.mp4"  # the index (moov) sits at the end: gone
    cut_mp4.write_bytes(good_mp4.read_bytes()[: good_mp4.stat().st_size // 2])
    cut_mkv = media_dir / "cut.mkv"  # header intact, data stops halfway
    cut_mkv.write_bytes(good_mkv.read_bytes()[: good_mkv.stat().st_size // 2])
    audio_only = media_dir / "voice.m4a"
    encode_av(
        audio_only,
        [],
        fps=10,
        audio=tone_audio(1.0, 16_000),
        sample_rate=16_000,
        container_format="mp4",
    )
    return {
        "empty": (empty, EmptyFile, "empty"),
        "random": (noise, NotMedia, "not a media file"),
        "cut_mp4": (cut_mp4, Truncated, "cut off"),
        "cut_mkv": (cut_mkv, Truncated, "cut short"),
        "audio_only": (audio_only, NoVideoStream, "no video stream"),
    }


def test_broken_files_raise_typed_errors(media_dir: Path) -> None:
    for label, (path, error, words) in _broken_files(media_dir).items():
        calls = [
            lambda p=path: list(
                iter_windows(p, 0.0, 3.0, window_s=1.0, stride_s=1.0, frames=4, size=32)
            ),
            lambda p=path: decode_frames(io.BytesIO(p.read_bytes()), 1.0, 3.0, 4, 32),
        ]
        if label != "cut_mkv":  # its header is intact: probe succeeds, decoding fails
            calls.append(lambda p=path: probe(p))
        for call in calls:
            with pytest.raises(error) as info:
                call()
            msg = str(info.value)
            assert words in msg, (label, msg)
            assert "\n" not in msg and isinstance(info.value, AvrlError)
            assert str(path) in msg or "BytesIO" in msg  # the source is named


def test_caps(cfr_mp4: Path) -> None:
    with pytest.raises(ExceedsCaps, match="pixels"):
        probe(cfr_mp4, caps=MediaCaps(max_pixels=32 * 32))
    with pytest.raises(ExceedsCaps, match="duration"):
        decode_frames(cfr_mp4, 0.0, 1.0, 2, 16, caps=MediaCaps(max_duration_s=10.0))
    with pytest.raises(ExceedsCaps, match="streams"):
        list(
            iter_windows(
                cfr_mp4,
                0.0,
                1.0,
                window_s=1.0,
                stride_s=1.0,
                frames=2,
                size=16,
                caps=MediaCaps(max_streams=1),
            )
        )


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_rotation_is_applied(media_dir: Path, degrees: int) -> None:
    path = make_rotated(media_dir / f"rot{degrees}.mp4", n_frames=20, fps=10, degrees=degrees)
    assert probe(path).rotation == degrees % 360
    frames = decode_frames(path, 0.5, 1.5, 4, 32)
    # the display matrix says: turn the coded picture counter-clockwise by `degrees`;
    # undoing that turn gives back the coded index pattern
    unturned = [np.rot90(f, k=-(degrees % 360) // 90) for f in frames]
    assert [read_index(f) for f in unturned] == [5, 7, 10, 12]
    assert read_indices(frames) != [5, 7, 10, 12]  # the turn did change the picture


def test_cli_probe(cfr_mp4: Path, media_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from avrl_batch.cli import main

    main(["probe", str(cfr_mp4), "--json"])
    row = json.loads(capsys.readouterr().out)
    assert (row["video_codec"], row["has_audio"], row["duration_s"]) == ("h264", True, 20.0)
    bad = media_dir / "cli_noise.mp4"
    bad.write_bytes(b"hello, not a video" * 100)
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not a media file" in err and "\n" not in err


def test_storage_reader_source(media_dir: Path) -> None:
    # storage.open_source's reader (what S3 objects come as) decodes like the path and,
    # seeking, reads a small part of the file for a 4 s span of 60 s
    from avrl_batch.storage import open_source

    rng = np.random.default_rng(5)
    noisy = media_dir / "noisy.mp4"  # incompressible frames: bytes spread over the file
    encode_av(
        noisy,
        (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(600)),
        fps=10,
        gop=20,
        video_options={"preset": "ultrafast"},
    )
    with open_source(str(noisy)) as f:
        frames = decode_frames(f, 30.0, 34.0, 8, 32)
        size = noisy.stat().st_size
        assert f.bytes_read < 0.2 * size, (f.bytes_read, size)  # span + GOP = 6/60 of it
    np.testing.assert_array_equal(frames, decode_frames(noisy, 30.0, 34.0, 8, 32))
