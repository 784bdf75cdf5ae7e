"""Encode frames and a waveform into a container with PyAV (synthetic footage and tests).

PyAV wheels ship FFmpeg with libx264, libx265, AAC and Opus, so no system ffmpeg is needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

# container format -> default (video codec, audio codec, pixel format)
DEFAULT_CODECS: dict[str, tuple[str, str | None, str]] = {
    "mp4": ("libx264", "aac", "yuv420p"),
    "mov": ("libx264", "aac", "yuv420p"),
    "mkv": ("libx264", "aac", "yuv420p"),
    "matroska": ("libx264", "aac", "yuv420p"),
    "webm": ("libvpx-vp9", "libopus", "yuv420p"),
    "avi": ("mjpeg", "pcm_alaw", "yuvj420p"),
}


def encode_av(
    dest: str | Path,
    frames: Iterable[np.ndarray],
    *,
    fps: float | Fraction,
    audio: np.ndarray | Iterable[np.ndarray] | None = None,
    sample_rate: int = 48_000,
    vcodec: str | None = None,
    acodec: str | None = None,
    pix_fmt: str | None = None,
    gop: int = 50,
    bframes: int | None = None,
    crf: int | None = None,
    video_options: dict[str, str] | None = None,
    pts_s: Sequence[float] | None = None,
    metadata: dict[str, str] | None = None,
    container_format: str | None = None,
    threads: int | None = None,
) -> None:
    """Write ``frames`` (each (H, W, 3) uint8 RGB) and an optional mono/multichannel waveform.

    ``audio`` is float32 in [-1, 1] at ``sample_rate``: one array, shape (N,) or
    (channels, N), or an iterable of such chunks (long recordings, generated lazily).
    ``pts_s`` gives each frame's presentation time in seconds (variable frame rate); by
    default frame i is shown at i / fps. ``threads`` sets the encoder's thread count (PyAV's
    RGB->YUV conversion uses it too); for byte-reproducible x264 output use ``threads=1``
    and ``bframes=0`` (measured: with B-frames a few percent of small clips differ between
    runs even single-threaded).
    """
    import av

    dest = str(dest)
    fmt = container_format or Path(dest).suffix.lstrip(".").lower()
    d_v, d_a, d_pix = DEFAULT_CODECS.get(fmt, DEFAULT_CODECS["mp4"])
    rate = Fraction(fps).limit_denominator(1001)
    settings = _VideoSettings(
        vcodec or d_v, pix_fmt or d_pix, gop, bframes, crf, video_options, threads, pts_s
    )
    with av.open(dest, mode="w", format=container_format) as out:
        if metadata:
            out.metadata.update(metadata)
        frame_iter = iter(frames)
        first = next(frame_iter, None)
        vs = _add_video_stream(out, first, rate, settings) if first is not None else None
        audio_writer, audio_iter = _add_audio_stream(out, audio, acodec or d_a, sample_rate)
        if vs is not None:
            _write_video(out, vs, _chain(first, frame_iter), rate, pts_s, audio_writer, audio_iter)
        if audio_writer is not None:
            for chunk in audio_iter:
                audio_writer.write(chunk)
            audio_writer.close()


@dataclass(frozen=True)
class _VideoSettings:
    """The video options of ``encode_av``, with the container's defaults filled in."""

    vcodec: str
    pix_fmt: str
    gop: int
    bframes: int | None
    crf: int | None
    video_options: dict[str, str] | None
    threads: int | None
    pts_s: Sequence[float] | None


def _add_video_stream(out: Any, first: np.ndarray, rate: Fraction, v: _VideoSettings) -> Any:
    """The video stream, sized from the first frame, with the codec's options set."""
    vs = out.add_stream(v.vcodec, rate=rate)
    vs.height, vs.width = first.shape[:2]
    vs.pix_fmt = v.pix_fmt
    opts: dict[str, Any] = {}
    if v.vcodec in ("libx264", "libx265", "h264", "hevc"):
        vs.gop_size = v.gop
        if v.bframes is not None:
            vs.codec_context.max_b_frames = v.bframes
        if v.crf is not None:
            opts["crf"] = str(v.crf)
        opts.setdefault("preset", "veryfast")
        if v.vcodec == "libx265":
            opts["x265-params"] = "log-level=error"
    elif v.vcodec == "libvpx-vp9":
        vs.gop_size = v.gop
        opts.update({"deadline": "realtime", "cpu-used": "8"})
    opts.update(v.video_options or {})
    vs.options = opts
    if v.threads is not None:
        vs.codec_context.thread_count = v.threads
    if v.pts_s is not None:
        # millisecond time base so arbitrary presentation times are representable
        vs.time_base = Fraction(1, 1000)
        vs.codec_context.time_base = Fraction(1, 1000)
    return vs


def _add_audio_stream(
    out: Any, audio: np.ndarray | Iterable[np.ndarray] | None, acodec: str | None, sample_rate: int
) -> tuple[_AudioWriter | None, Iterator[np.ndarray]]:
    """The audio stream's writer (None without audio or an audio codec) and the chunks to
    write, (C, n) or (n,) each."""
    if audio is None or not acodec:
        return None, iter(())
    if isinstance(audio, np.ndarray):
        wave = np.atleast_2d(np.asarray(audio, dtype=np.float32))  # (C, N)
        chunks: Iterable[np.ndarray] = (
            wave[:, i : i + 4096] for i in range(0, wave.shape[1], 4096)
        )
        channels = wave.shape[0]
    else:
        chunks, peek = _peek(iter(audio))
        channels = np.atleast_2d(peek).shape[0] if peek is not None else 1
    stream = out.add_stream(acodec, rate=sample_rate)
    stream.layout = "mono" if channels == 1 else "stereo"
    return _AudioWriter(out, stream, sample_rate, channels), iter(chunks)


def _write_video(
    out: Any,
    vs: Any,
    frames: Iterable[np.ndarray],
    rate: Fraction,
    pts_s: Sequence[float] | None,
    audio_writer: _AudioWriter | None,
    audio_iter: Iterator[np.ndarray],
) -> None:
    """Encode every frame, with the audio written up to each frame's time, then flush."""
    import av

    for i, img in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        if pts_s is not None:
            t = pts_s[i]
            frame.pts = int(round(t * 1000))
            frame.time_base = Fraction(1, 1000)
        else:
            t = i / float(rate)
            frame.pts = i
            frame.time_base = 1 / rate
        for packet in vs.encode(frame):
            out.mux(packet)
        # interleave: keep the audio up to this frame's time so the muxer never has
        # to buffer a whole stream (long recordings stay bounded in memory)
        if audio_writer is not None:
            while audio_writer.seconds <= t:
                chunk = next(audio_iter, None)
                if chunk is None:
                    break
                audio_writer.write(chunk)
    for packet in vs.encode():
        out.mux(packet)


def _chain(first: np.ndarray, rest: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    yield first
    yield from rest


def _peek(it: Any) -> tuple[Iterable[np.ndarray], np.ndarray | None]:
    first = next(it, None)
    if first is None:
        return iter(()), None
    return _chain(first, it), first


class _AudioWriter:
    """Feeds float chunks to an audio encoder, converting to the encoder's sample format."""

    def __init__(self, out: Any, stream: Any, sample_rate: int, channels: int) -> None:
        import av

        self.out, self.stream, self.rate = out, stream, sample_rate
        self.layout = "mono" if channels == 1 else "stereo"
        fmt = stream.codec_context.format.name if stream.codec_context.format else "fltp"
        self.resampler = av.AudioResampler(format=fmt, layout=self.layout, rate=sample_rate)
        self.samples = 0

    @property
    def seconds(self) -> float:
        return self.samples / self.rate

    def write(self, chunk: np.ndarray) -> None:
        import av

        block = np.ascontiguousarray(np.atleast_2d(chunk).astype(np.float32)[:2])
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=self.layout)
        frame.sample_rate = self.rate
        frame.pts = self.samples
        frame.time_base = Fraction(1, self.rate)
        self.samples += block.shape[1]
        self._encode(self.resampler.resample(frame))

    def close(self) -> None:
        self._encode(self.resampler.resample(None))
        for packet in self.stream.encode():
            self.out.mux(packet)

    def _encode(self, frames: Any) -> None:
        for rframe in frames:
            for packet in self.stream.encode(rframe):
                self.out.mux(packet)


def remux_audio(
    src: str | Path,
    dest: str | Path,
    *,
    shift_s: float = 0.0,
    until_s: float | None = None,
) -> Path:
    """Copy ``src``'s packets (nothing re-encoded) into ``dest`` with its audio moved
    ``shift_s`` later and stopped at ``until_s`` (source time): footage whose microphone
    starts after the camera or dies before it. Written under a temporary name, renamed."""
    import av

    dest = Path(dest)
    tmp = dest.with_name(f".{dest.stem}.part{dest.suffix}")
    with av.open(str(src)) as inp, av.open(str(tmp), mode="w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is None:  # the end-of-stream flush packets
                continue
            if packet.stream.type == "audio" and packet.pts is not None:
                if until_s is not None and float(packet.pts * packet.time_base) >= until_s:
                    continue
                shift = int(round(shift_s / packet.time_base))
                packet.pts += shift
                packet.dts += shift
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    tmp.replace(dest)
    return dest
