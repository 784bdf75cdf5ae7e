"""Audio of a time span: 16 kHz mono float32 and its VGGish log-mel examples.

PyAV decodes at the native rate; resampling to 16 kHz goes through logmel.to_mono_16k
(resampy's kaiser_best filter, what VGGish was trained with, computed as a polyphase
matrix product) rather than FFmpeg's swresample, so that decoded audio and the reference
front end see the same filter. A span is cut from
audio decoded with a margin on both sides, so the resampling filter has real neighbours at
the span's edges instead of zeros.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from avrl_batch.media import logmel
from avrl_batch.media.errors import source_name, wrap_errors
from avrl_batch.media.probe import MediaCaps, Source, inspect, open_container, time_origin
from avrl_batch.media.probe import audio_extent as declared_audio_extent

_ANCHOR_FRAMES = 32  # audio frames whose timestamps anchor the buffer in time
RESAMPLE_MARGIN_S = 0.05  # s of real audio kept beyond each span edge (filter is < 10 ms)

# packed/planar sample formats -> scale to [-1, 1]
_INT_SCALE = {"s16": 32768.0, "s32": 2147483648.0, "u8": 128.0, "s64": 9.223372036854776e18}


_DTYPES = {
    "flt": np.float32,
    "dbl": np.float64,
    "s16": np.int16,
    "s32": np.int32,
    "s64": np.int64,
    "u8": np.uint8,
}


def frame_to_mono(frame: Any) -> np.ndarray:
    """A decoded av.AudioFrame as mono float32 (n,) at its native rate (channel mean).

    Reads the frame's planes as arrays in place: ``AudioFrame.to_ndarray`` stacks them with
    ``np.vstack`` first, which cost more than the rest of the audio path put together
    (0.15 of 0.3 CPU-s per minute of AAC, profiled).
    """
    fmt = frame.format
    base = fmt.name.rstrip("p")
    channels = frame.layout.nb_channels
    n = frame.samples
    if base not in _DTYPES:  # pragma: no cover - every FFmpeg sample format is listed
        raise ValueError(f"unsupported sample format {fmt.name}")
    dtype = _DTYPES[base]
    if fmt.is_planar:
        rows = [np.frombuffer(p, dtype, count=n) for p in frame.planes[:channels]]  # C x (n,)
    else:
        packed = np.frombuffer(frame.planes[0], dtype, count=n * channels)
        rows = [packed[c::channels] for c in range(channels)]  # (n*C,) interleaved -> C x (n,)

    def as_float(r: np.ndarray) -> np.ndarray:
        if base in ("flt", "dbl"):
            return r.astype(np.float32, copy=False)
        if base == "u8":
            return (r.astype(np.float32) - 128.0) / 128.0
        return r.astype(np.float32) / _INT_SCALE[base]

    if channels == 1:
        return as_float(rows[0]).copy()  # (n,), owning its memory (the frame is reused)
    total = as_float(rows[0]) + as_float(rows[1])
    for r in rows[2:]:
        total += as_float(r)
    return total / np.float32(channels)  # (n,): the mean of the channels


class AudioBuffer:
    """Native-rate mono samples of a stretch of the timeline, anchored at the first frame.

    Samples are appended contiguously (container timestamps only anchor the start), the
    front is dropped with :meth:`trim` so memory stays bounded by the windows in flight.
    """

    def __init__(self, sample_rate: int, origin_s: float) -> None:
        self.rate = sample_rate
        self.origin = origin_s
        self.t0: float | None = None  # timeline time of the first buffered sample
        self.chunks: list[np.ndarray] = []
        self.n = 0  # samples buffered
        self._appended = 0  # samples ever appended (trimmed ones included)
        # bounds on the time of the first sample ever appended, from frame timestamps
        self._lo, self._hi = -np.inf, np.inf
        self._n_anchors = 0

    @property
    def end_s(self) -> float:
        return -np.inf if self.t0 is None else self.t0 + self.n / self.rate

    @property
    def first_s(self) -> float:
        """Timeline time of the first sample ever appended (trimmed ones included): where
        this buffer's audio begins (inf while empty)."""
        if self.t0 is None:
            return np.inf
        return self.t0 - (self._appended - self.n) / self.rate

    def coverage(self, start_s: float, end_s: float) -> float:
        """Seconds of [start_s, end_s) that the audio appended so far covers."""
        return max(0.0, min(end_s, self.end_s) - max(start_s, self.first_s))

    def append(self, frame: Any) -> None:
        x = frame_to_mono(frame)
        if frame.time is not None and self._n_anchors < _ANCHOR_FRAMES:
            # a timestamp is rounded to its time base (Matroska: 1 ms, i.e. +-8 samples at
            # 16 kHz), so each frame only bounds where sample 0 of the buffer sits; the
            # intersection of a few frames' bounds pins it down to a fraction of a sample
            tick = float(frame.time_base) / 2 if frame.time_base else 0.0
            est = float(frame.time) - self.origin - self._appended / self.rate
            lo, hi = max(self._lo, est - tick), min(self._hi, est + tick)
            if lo <= hi:  # consistent (no gap in the stream): narrow the interval
                self._lo, self._hi = lo, hi
            elif self._n_anchors == 0:
                self._lo, self._hi = est - tick, est + tick
            self._n_anchors += 1
            self.t0 = (self._lo + self._hi) / 2 + (self._appended - self.n) / self.rate
        elif self.t0 is None:
            self.t0 = 0.0
        self._appended += x.size
        self.chunks.append(x)
        self.n += x.size

    def append_silence(self, seconds: float) -> None:
        """Zeros for audio that could not be decoded (a rejected packet): the samples after
        it keep their place on the timeline. Nothing before the first frame (no anchor)."""
        if self.t0 is None or seconds <= 0:
            return
        x = np.zeros(int(round(seconds * self.rate)), np.float32)
        self._appended += x.size
        self.chunks.append(x)
        self.n += x.size

    def trim(self, before_s: float) -> None:
        """Drop samples before timeline time ``before_s``."""
        if self.t0 is None:
            return
        drop = int(np.floor((before_s - self.t0) * self.rate))
        if drop <= 0:
            return
        data = self._data()[drop:]
        self.chunks, self.n = [data], data.size
        self.t0 += drop / self.rate

    def _data(self) -> np.ndarray:
        if len(self.chunks) > 1:
            self.chunks = [np.concatenate(self.chunks)]  # (n,)
        return self.chunks[0] if self.chunks else np.zeros(0, np.float32)

    def span_16k(self, start_s: float, end_s: float) -> np.ndarray:
        """16 kHz mono float32 for [start_s, end_s); zeros where nothing was decoded."""
        n_out = int(round((end_s - start_s) * logmel.SAMPLE_RATE))
        if self.t0 is None or n_out <= 0:
            return np.zeros(max(n_out, 0), np.float32)
        # cut the native-rate slice at a sample that falls exactly on the 16 kHz grid
        # (every 441th sample at 44.1 kHz, every 3rd at 48 kHz): a slice starting between
        # two 16 kHz instants would come out shifted by a fraction of a sample, which for a
        # 2 kHz tone is an error of ~0.2
        step = self.rate // math.gcd(self.rate, logmel.SAMPLE_RATE)
        m0 = int(round(self.t0 * self.rate))  # timeline sample index of data[0]
        m_lo = (int(np.floor((start_s - RESAMPLE_MARGIN_S) * self.rate)) // step) * step
        m_hi = int(np.ceil((end_s + RESAMPLE_MARGIN_S) * self.rate))
        i0, i1 = m_lo - m0, m_hi - m0
        data = self._data()
        seg = data[max(i0, 0) : max(min(i1, data.size), 0)]
        pad_front = min(max(-i0, 0), i1 - i0)
        seg = np.concatenate([np.zeros(pad_front, np.float32), seg])  # starts at sample m_lo
        x16 = logmel.to_mono_16k(seg, self.rate)
        # the resampled slice starts at 16 kHz sample m_lo * 16000 / rate (an integer)
        skip = int(round(start_s * logmel.SAMPLE_RATE)) - m_lo * logmel.SAMPLE_RATE // self.rate
        out = x16[skip : skip + n_out]
        if out.size < n_out:  # audio ends before the span does
            out = np.concatenate([out, np.zeros(n_out - out.size, np.float32)])  # (n_out,)
        return out


def decode_audio(
    src: Source, start_s: float, end_s: float, *, caps: MediaCaps = MediaCaps()
) -> np.ndarray | None:
    """Audio of [start_s, end_s) as 16 kHz mono float32 (N,), N = round(len * 16000).

    Seeks to the span (never decodes from the file's start for a mid-file span). Returns
    None when the source has no audio stream. Times are seconds on the video timeline
    (see probe.MediaInfo); where the file has no audio for part of the span, zeros.
    """
    name = source_name(src)
    with wrap_errors(name, stage="decoding audio"):
        container = open_container(src, name)
        try:
            inspect(container, name, caps)
            if not container.streams.audio:
                return None
            astream = container.streams.audio[0]
            origin = time_origin(container, container.streams.video[0])
            buf = AudioBuffer(astream.codec_context.sample_rate, origin)
            seek_s = start_s - 2 * RESAMPLE_MARGIN_S
            if seek_s > 0:
                container.seek(int((seek_s + origin) / astream.time_base), stream=astream)
            need_until = end_s + RESAMPLE_MARGIN_S
            audio_until_s = declared_audio_extent(astream, origin)[1]
            if audio_until_s is not None:  # audio that ends early: no reading on for it
                need_until = min(need_until, audio_until_s)
            for packet in container.demux(astream):
                for frame in packet.decode():
                    buf.append(frame)
                if buf.end_s >= need_until:
                    break
            return buf.span_16k(start_s, end_s)
        finally:
            container.close()


def window_logmel(
    src: Source,
    start_s: float,
    end_s: float,
    *,
    n_examples: int | None = None,
    caps: MediaCaps = MediaCaps(),
) -> np.ndarray | None:
    """VGGish log-mel of a span: float32 (E, 96, 64), E = n_examples or
    logmel.examples_for_duration(end_s - start_s); None when the source has no audio."""
    wave = decode_audio(src, start_s, end_s, caps=caps)
    if wave is None:
        return None
    e = n_examples or logmel.examples_for_duration(end_s - start_s)
    return logmel.log_mel_examples_16k_fixed(wave, e)
