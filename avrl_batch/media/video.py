"""Frames (and audio) of time spans: T frames evenly spaced by presentation time.

Sampling rule: sample i of a span [start, end) is at t_i = start + i * (end - start) / T
(a fixed step, like the paper's floor(l / T) frame step but in time, so variable frame rate
is handled), and the frame chosen for t_i is the last frame whose presentation time is
<= t_i (the frame on screen at t_i; 1 us tolerance for float rounding). A t_i before the
first decoded frame takes the first frame after it.

Times are seconds from the video stream's first timestamp. Frames are resized to
size x size by stretching (the paper resizes to 240 x 240 regardless of aspect ratio) with
one shared swscale context (FAST_BILINEAR, 1 thread), and only sampled frames are
converted to RGB: converting every decoded frame costs as much as decoding it
(PERF_NOTES). The display-matrix rotation of each frame is applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avrl_batch.media import logmel
from avrl_batch.media.audio import RESAMPLE_MARGIN_S, AudioBuffer
from avrl_batch.media.errors import ExceedsCaps, Truncated, source_name, wrap_errors
from avrl_batch.media.probe import MediaCaps, Source, inspect, open_container, time_origin

_EPS_S = 1e-6  # a frame at t_i - 1 us still counts as "at or before t_i"
# video ending this long before a planned sample time means the file is shorter than it
# declares (cut off), not a normal last frame held to the end
_TRUNCATED_GAP_S = 1.0


def sample_times(start_s: float, end_s: float, T: int) -> np.ndarray:
    """T presentation times, float64 (T,), evenly spaced from start_s with step (end-start)/T."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if end_s < start_s:
        raise ValueError(f"end_s ({end_s}) < start_s ({start_s})")
    return start_s + (end_s - start_s) * np.arange(T, dtype=np.float64) / T


@dataclass
class Window:
    """One window of a segment."""

    index: int  # k: the window starts at segment start + k * stride_s
    start_s: float
    end_s: float  # start_s + window_s, or the file's end for a last, shorter window
    frames: np.ndarray  # uint8 (T, size, size, 3) RGB
    frame_times: np.ndarray  # float64 (T,): presentation time of each chosen frame
    logmel: np.ndarray | None  # float32 (E, 96, 64); None when audio is off or absent
    has_audio: bool


@dataclass
class DecodeStats:
    """What a decode did (for tests and benchmarks)."""

    seek_s: float | None = None  # where the container was seeked to, None if not
    frames_decoded: int = 0
    frames_converted: int = 0  # frames resized to RGB (sampled frames only)
    audio_frames_decoded: int = 0
    first_frame_s: float | None = None  # time of the first decoded video frame
    extra: dict[str, Any] = field(default_factory=dict)


def decode_frames(
    src: Source,
    start_s: float,
    end_s: float,
    T: int,
    size: int,
    *,
    caps: MediaCaps = MediaCaps(),
    stats: DecodeStats | None = None,
) -> np.ndarray:
    """T frames of [start_s, end_s) as uint8 (T, size, size, 3); seeks to start_s."""
    span = end_s - start_s
    if span <= 0:
        raise ValueError(f"empty span [{start_s}, {end_s})")
    for window in iter_windows(
        src,
        start_s,
        start_s + span * 0.5,  # one window: it starts in [start, start + span/2)
        window_s=span,
        stride_s=span,
        frames=T,
        size=size,
        audio=False,
        caps=caps,
        stats=stats,
    ):
        return window.frames
    raise Truncated(
        source_name(src), f"the span starts at {start_s:.2f} s, after the file's last frame"
    )


def iter_windows(
    src: Source,
    start_s: float,
    end_s: float,
    *,
    window_s: float,
    stride_s: float,
    frames: int,
    size: int,
    audio: bool = True,
    n_examples: int | None = None,
    caps: MediaCaps = MediaCaps(),
    stats: DecodeStats | None = None,
) -> Iterator[Window]:
    """Every window that starts in the segment [start_s, end_s), in one forward pass.

    Window k covers [start_s + k * stride_s, + window_s) and may extend past end_s (a
    window is decoded whole; segments overlap by the caller's choice). Windows start only
    before the file's end; the last one is cut at the file's end and then has a shorter
    end_s, its T frames spread over what exists and its log-mel zero-padded to the same E
    (n_examples, default examples_for_duration(window_s)) so windows stack. The container
    is opened once and seeked once; memory holds only windows in flight.
    """
    if window_s <= 0 or stride_s <= 0:
        raise ValueError("window_s and stride_s must be > 0")
    name = source_name(src)
    stats = stats if stats is not None else DecodeStats()
    with wrap_errors(name, stage="decoding"):
        container = open_container(src, name)
        try:
            info = inspect(container, name, caps)
            yield from _scan(
                container,
                name,
                caps,
                file_end_s=info.duration_s,
                start_s=start_s,
                end_s=end_s,
                window_s=window_s,
                stride_s=stride_s,
                frames=frames,
                size=size,
                audio=audio,
                n_examples=n_examples or logmel.examples_for_duration(window_s),
                stats=stats,
            )
        finally:
            container.close()


class _Converter:
    """Resizes chosen frames to RGB size x size with one reused swscale context."""

    def __init__(self, size: int, caps: MediaCaps, name: str, stats: DecodeStats) -> None:
        from av.video.reformatter import Interpolation, VideoReformatter

        self.size, self.caps, self.name, self.stats = size, caps, name, stats
        self.reformatter = VideoReformatter()
        self.interp = Interpolation.FAST_BILINEAR
        self._last: tuple[Any, np.ndarray] | None = None

    def __call__(self, frame: Any) -> np.ndarray:
        if self._last is not None and self._last[0] is frame:
            return self._last[1]  # several sample times on one frame (T > frames in span)
        if frame.width * frame.height > self.caps.max_pixels:
            raise ExceedsCaps(self.name, f"a {frame.width}x{frame.height} frame exceeds the cap")
        rgb = self.reformatter.reformat(
            frame,
            width=self.size,
            height=self.size,
            format="rgb24",
            interpolation=self.interp,
            threads=1,
        ).to_ndarray()  # (size, size, 3)
        rot = int(frame.rotation) % 360
        if rot:
            # display matrix angle is counter-clockwise, as np.rot90 with k > 0
            rgb = np.ascontiguousarray(np.rot90(rgb, k=rot // 90))
        self.stats.frames_converted += 1
        self._last = (frame, rgb)
        return rgb


@dataclass
class _Pending:
    index: int
    start_s: float
    end_s: float
    times: np.ndarray  # (T,)
    frames: list[np.ndarray | None]
    frame_times: np.ndarray  # (T,)
    filled: int = 0


def _scan(
    container: Any,
    name: str,
    caps: MediaCaps,
    *,
    file_end_s: float,
    start_s: float,
    end_s: float,
    window_s: float,
    stride_s: float,
    frames: int,
    size: int,
    audio: bool,
    n_examples: int,
    stats: DecodeStats,
) -> Iterator[Window]:
    vs = container.streams.video[0]
    vs.thread_type = "AUTO"  # frame threading: ~1.6x on H.264 (PERF_NOTES)
    origin = time_origin(container, vs)
    astream = container.streams.audio[0] if (audio and container.streams.audio) else None

    # plan: window starts in [start_s, min(end_s, file end))
    stop = min(end_s, file_end_s)
    n_windows = max(0, int(np.ceil((stop - start_s) / stride_s - 1e-9)))
    if n_windows == 0:
        return
    pending: list[_Pending] = []
    targets: list[tuple[float, int, int]] = []  # (time, window k, slot), sorted below
    for k in range(n_windows):
        ws = start_s + k * stride_s
        we = min(ws + window_s, file_end_s)
        times = sample_times(ws, we, frames)
        pending.append(_Pending(k, ws, we, times, [None] * frames, np.zeros(frames, np.float64)))
        targets.extend((float(t), k, i) for i, t in enumerate(times))
    targets.sort()
    last_needed_s = pending[-1].end_s

    convert = _Converter(size, caps, name, stats)
    abuf = AudioBuffer(astream.codec_context.sample_rate, origin) if astream is not None else None
    audio_done = abuf is None

    # one seek to the keyframe before the first sample (and the audio margin before it)
    seek_s = start_s - 2 * RESAMPLE_MARGIN_S
    if seek_s > 0:
        container.seek(int((seek_s + origin) / vs.time_base), stream=vs, backward=True)
        stats.seek_s = seek_s

    next_target = 0
    next_emit = 0
    prev: Any = None
    prev_t = 0.0

    def assign(frame: Any, t: float) -> None:
        nonlocal next_target
        _, k, slot = targets[next_target]
        w = pending[k]
        w.frames[slot] = convert(frame)
        w.frame_times[slot] = t
        w.filled += 1
        next_target += 1

    def ready() -> Iterator[Window]:
        nonlocal next_emit
        while next_emit < len(pending):
            w = pending[next_emit]
            if w.filled < frames:
                return
            if not audio_done and abuf is not None and abuf.end_s < w.end_s + RESAMPLE_MARGIN_S:
                return
            yield _finish(w, abuf, n_examples, audio)
            pending[next_emit] = None  # type: ignore[call-overload]  # free its frames
            next_emit += 1
            if abuf is not None and next_emit < len(pending):
                abuf.trim(pending[next_emit].start_s - 2 * RESAMPLE_MARGIN_S)

    streams = [vs] + ([astream] if astream is not None else [])
    video_done = False
    for packet in container.demux(*streams):
        if packet.stream.type == "audio":
            if audio_done:
                continue
            for aframe in packet.decode():
                abuf.append(aframe)  # type: ignore[union-attr]
                stats.audio_frames_decoded += 1
            if abuf.end_s >= last_needed_s + RESAMPLE_MARGIN_S:  # type: ignore[union-attr]
                audio_done = True
        elif not video_done:
            for vframe in packet.decode():
                stats.frames_decoded += 1
                t = float(vframe.time) - origin if vframe.time is not None else prev_t
                if stats.first_frame_s is None:
                    stats.first_frame_s = t
                while next_target < len(targets) and targets[next_target][0] < t - _EPS_S:
                    # the last frame at or before the target, or this one if none was
                    if prev is not None:
                        assign(prev, prev_t)
                    else:
                        assign(vframe, t)
                prev, prev_t = vframe, t
            if next_target == len(targets):
                video_done = True
        yield from ready()
        if video_done and audio_done:
            break
    else:
        # end of file: flush the decoder, then the remaining targets take the last frame
        if not video_done:
            for vframe in _drain(vs):
                stats.frames_decoded += 1
                t = float(vframe.time) - origin if vframe.time is not None else prev_t
                while next_target < len(targets) and targets[next_target][0] < t - _EPS_S:
                    assign(prev if prev is not None else vframe, prev_t if prev is not None else t)
                prev, prev_t = vframe, t
        if prev is None:
            raise Truncated(
                name,
                f"no video frames from {start_s:.2f} s on although the file declares "
                f"{file_end_s:.2f} s; the file is probably cut short — re-copy it",
            )
        if next_target < len(targets) and (
            targets[next_target][0] > prev_t + _TRUNCATED_GAP_S
            # frames are still wanted and the header promised over a second more video
            or file_end_s > prev_t + _TRUNCATED_GAP_S
        ):
            raise Truncated(
                name,
                f"video ends at {prev_t:.2f} s but the file declares {file_end_s:.2f} s; "
                "the file is probably cut short — re-copy it",
            )
        while next_target < len(targets):
            assign(prev, prev_t)
        audio_done = True
        yield from ready()


def _drain(vs: Any) -> Iterator[Any]:
    """Frames still buffered in the decoder at the end of the file. demux() ends with an
    empty packet per stream whose decode already drained the decoder; a second flush then
    raises EOFError (seen on MJPEG in Matroska), which means "nothing left", not damage."""
    import av

    try:
        yield from vs.decode(None)
    except av.error.EOFError:
        return


def _finish(w: _Pending, abuf: AudioBuffer | None, n_examples: int, audio: bool) -> Window:
    frames = np.stack(w.frames)  # (T, size, size, 3)
    lm = None
    if abuf is not None:
        wave = abuf.span_16k(w.start_s, w.end_s)  # (N,) 16 kHz
        lm = logmel.log_mel_examples_16k_fixed(wave, n_examples)  # (E, 96, 64)
    return Window(
        index=w.index,
        start_s=w.start_s,
        end_s=w.end_s,
        frames=frames,
        frame_times=w.frame_times,
        logmel=lm,
        has_audio=abuf is not None,
    )
