"""Test media whose frames encode their own index, made with encode_av.

Each frame shows its index as a 4 x 4 grid of black/white blocks (16 bits, least
significant bit top-left). Blocks are a quarter of the frame wide, so the code survives
H.264/HEVC/VP9/MJPEG loss and resizing; :func:`read_index` reads it back from the centre of
each block.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from avrl_batch.media.encode import encode_av

GRID = 4  # blocks per side -> 16 bits
LOW, HIGH = 16, 235  # video-range black / white


def index_frame(i: int, size: int = 64) -> np.ndarray:
    """uint8 (size, size, 3) showing ``i`` as a 4 x 4 binary block code."""
    bits = (i >> np.arange(GRID * GRID)) & 1  # (16,)
    grid = bits.reshape(GRID, GRID).astype(np.uint8) * (HIGH - LOW) + LOW  # (4, 4)
    block = size // GRID
    img = np.kron(grid, np.ones((block, block), np.uint8))  # (size, size)
    return np.repeat(img[:, :, None], 3, axis=2)  # (size, size, 3)


def read_index(img: np.ndarray) -> int:
    """The index a frame from :func:`index_frame` shows, after decoding and resizing."""
    gray = np.asarray(img, np.float32).mean(axis=2)  # (H, W)
    h, w = gray.shape
    bits = 0
    for r in range(GRID):
        for c in range(GRID):
            # centre half of the block: away from edge blur and chroma bleed
            y0, y1 = (4 * r + 1) * h // (4 * GRID), (4 * r + 3) * h // (4 * GRID)
            x0, x1 = (4 * c + 1) * w // (4 * GRID), (4 * c + 3) * w // (4 * GRID)
            if gray[y0:y1, x0:x1].mean() > (LOW + HIGH) / 2:
                bits |= 1 << (r * GRID + c)
    return bits


def read_indices(frames: np.ndarray) -> list[int]:
    """Indices of a (T, H, W, 3) stack."""
    return [read_index(f) for f in frames]


def tone_audio(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """float32 (N,): quiet noise plus tones that change every second (time-aligned content)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    freq = 300.0 + 200.0 * (np.floor(t) % 10)  # Hz, a step per second
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate
    return (0.4 * np.sin(phase) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def make_indexed(
    dest: str | Path,
    *,
    n_frames: int,
    fps: float,
    size: int = 64,
    pts_s: Sequence[float] | None = None,
    audio_rate: int | None = None,
    audio: np.ndarray | None = None,
    **encode_kwargs: object,
) -> Path:
    """Encode ``n_frames`` index frames (CFR at ``fps`` or VFR at ``pts_s``), with optional
    test audio covering the same duration."""
    dest = Path(dest)
    frames: Iterator[np.ndarray] = (index_frame(i, size) for i in range(n_frames))
    duration = (pts_s[-1] + 1.0 / fps) if pts_s is not None else n_frames / fps
    if audio is None and audio_rate is not None:
        audio = tone_audio(duration, audio_rate)
    encode_av(
        dest,
        frames,
        fps=fps,
        audio=audio,
        sample_rate=audio_rate or 48_000,
        pts_s=pts_s,
        **encode_kwargs,  # type: ignore[arg-type]
    )
    return dest


def expected_indices(pts_s: Sequence[float], times: np.ndarray) -> list[int]:
    """The index of the last frame with pts <= t for each t (the first frame before it)."""
    pts = np.asarray(pts_s)
    idx = np.searchsorted(pts, np.asarray(times) + 1e-6, side="right") - 1
    return [int(max(i, 0)) for i in idx]


def make_rotated(dest: str | Path, *, n_frames: int, fps: int, degrees: int) -> Path:
    """H.264 MP4 of index frames with a display matrix (a phone held sideways).

    encode_av has no rotation option, so this writes the stream with PyAV directly.
    """
    import av

    dest = Path(dest)
    with av.open(str(dest), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.set_display_rotation(degrees)  # counter-clockwise, as VideoFrame.rotation
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(index_frame(i), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return dest



def delay_audio(src: str | Path, dest: str | Path, offset_s: float) -> Path:
    """A copy of ``src`` whose audio starts ``offset_s`` later (packets copied)."""
    from avrl_batch.media.encode import remux_audio

    return remux_audio(src, dest, shift_s=offset_s)
