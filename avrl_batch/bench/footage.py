"""Benchmark footage: camera-like recordings at realistic sizes, made quickly.

A static plaza (the synthetic generator's background), people walking across it and
per-frame sensor noise, at 25 fps with a keyframe every 2 s (GOP 50) (H.264/HEVC with B-frames, or
MJPEG), and crowd babble as AAC 48 kHz. Noise matters: decoding cost grows with the
bitrate, and clean synthetic frames would compress to almost nothing and decode unrealistically
fast. To stay fast (a minute of 720p in well under a minute of CPU on top of the encoder),
noise comes from a small bank of precomputed fields cycled with random shifts instead of a
fresh Gaussian draw per pixel and frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avrl_batch.errors import ConfigError

FPS = 25
AUDIO_RATE = 48_000
_NOISE_BANK = 6  # distinct noise fields; cycled with random rolls so no two frames match


@dataclass(frozen=True)
class FootageKind:
    """One codec x resolution of benchmark footage."""

    name: str
    width: int
    height: int
    vcodec: str
    container: str  # file extension
    pix_fmt: str | None = None
    bframes: int | None = None
    video_options: tuple[tuple[str, str], ...] = ()
    fps: int = FPS
    acodec: str = "aac"
    audio_rate: int = AUDIO_RATE
    babble: bool = True  # crowd babble (realistic, ~1 ms/s to make) or cheap noise + tone

    @property
    def gop(self) -> int:
        return 2 * self.fps  # a keyframe every 2 s, like GOP 50 at 25 fps


KINDS: dict[str, FootageKind] = {
    k.name: k
    for k in (
        FootageKind("h264-360p", 640, 360, "libx264", "mp4", bframes=2),
        FootageKind("h264-720p", 1280, 720, "libx264", "mp4", bframes=2),
        FootageKind("h264-1080p", 1920, 1080, "libx264", "mp4", bframes=2),
        FootageKind("hevc-1080p", 1920, 1080, "libx265", "mp4", bframes=2),
        FootageKind("hevc-720p", 1280, 720, "libx265", "mp4", bframes=2),
        # MJPEG: every frame is a keyframe; q 5 is a typical camera quality
        FootageKind(
            "mjpeg-720p",
            1280,
            720,
            "mjpeg",
            "mkv",
            pix_fmt="yuvj420p",
            video_options=(("q:v", "5"),),
        ),
        # long recordings for the memory figures: low resolution and frame rate and PCM
        # audio, so that hours of footage take seconds to make (AAC encoding of 24 h alone
        # takes a quarter of an hour on 2 cores); memory behaviour does not depend on them
        FootageKind(
            "h264-96p",
            96,
            96,
            "libx264",
            "mkv",
            bframes=2,
            fps=5,
            acodec="pcm_s16le",
            audio_rate=8_000,
            babble=False,
        ),
        # the damaged-recording figure: an hour of small H.264 + AAC in MP4 (the index at
        # the end survives damage in the middle), made and scanned in minutes on 2 cores
        FootageKind(
            "h264-120p",
            160,
            120,
            "libx264",
            "mp4",
            bframes=2,
            fps=10,
            audio_rate=16_000,
            babble=False,
        ),
        FootageKind(
            "h264-32p",
            32,
            32,
            "libx264",
            "mkv",
            bframes=0,
            fps=1,
            acodec="pcm_s16le",
            audio_rate=8_000,
            babble=False,
        ),
    )
}
DECODE_KINDS = ("h264-720p", "h264-1080p", "hevc-1080p", "mjpeg-720p")


def kind(name: str) -> FootageKind:
    if name not in KINDS:
        raise ConfigError(f"unknown footage kind {name!r}; choose one of {', '.join(KINDS)}")
    return KINDS[name]


def footage_path(folder: str | Path, name: str, seconds: float) -> Path:
    k = kind(name)
    return Path(folder) / f"{name}_{seconds:g}s.{k.container}"


def _frames(k: FootageKind, n: int, seed: int) -> Iterator[np.ndarray]:
    from avrl_batch.data.scenes import Passersby, make_background

    rng = np.random.default_rng(seed)
    bg = make_background(rng, k.height, k.width)  # (H, W, 3) float32 0-1
    crowd = Passersby(rng, 8, k.fps)
    # int16 noise fields, sigma ~ 3 levels of 255: typical daylight sensor noise
    bank = [rng.normal(0, 3.0, (k.height, k.width, 3)).astype(np.int16) for _ in range(_NOISE_BANK)]
    for i in range(n):
        img = bg.copy()
        crowd.step_and_draw(img)
        noise = np.roll(bank[i % _NOISE_BANK], int(rng.integers(0, k.width)), axis=1)
        out = (img * 255.0).astype(np.int16) + noise  # (H, W, 3)
        yield np.clip(out, 0, 255).astype(np.uint8)


def _audio(k: FootageKind, seconds: float, seed: int) -> Iterator[np.ndarray]:
    from avrl_batch.data.sounds import babble

    rng = np.random.default_rng(seed + 1)
    sr = k.audio_rate
    total = int(round(seconds * sr))
    tone = 0.1 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr)  # (sr,)
    for s0 in range(0, total, sr):  # one second at a time
        n = min(sr, total - s0)
        if k.babble:
            block = babble(rng, n, sr, 4) * 0.05 + rng.normal(0, 0.004, n)
        else:
            block = tone[:n] + rng.normal(0, 0.02, n)
        yield np.clip(block, -1, 1).astype(np.float32)


def make_footage(
    folder: str | Path,
    name: str,
    seconds: float,
    *,
    seed: int = 0,
    audio: bool = True,
    force: bool = False,
) -> Path:
    """Write (or reuse) ``seconds`` of footage of kind ``name`` under ``folder``; its path.

    The file is written under a temporary name and renamed, so an interrupted run never
    leaves a half file that a later run would reuse.
    """
    from avrl_batch.media.encode import encode_av

    k = kind(name)
    if seconds <= 0:
        raise ConfigError(f"footage length must be positive, got {seconds} s")
    path = footage_path(folder, name, seconds)
    if path.exists() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.part.{k.container}")
    encode_av(
        tmp,
        _frames(k, int(round(seconds * k.fps)), seed),
        fps=k.fps,
        audio=_audio(k, seconds, seed) if audio else None,
        sample_rate=k.audio_rate,
        vcodec=k.vcodec,
        acodec=k.acodec,
        pix_fmt=k.pix_fmt,
        gop=k.gop,
        bframes=k.bframes,
        video_options=dict(k.video_options) or None,
    )
    tmp.rename(path)
    return path
