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

Damage: given an ``unreadable`` list, :func:`iter_windows` decodes past corrupt packets (the
decoder resyncs at the next decodable frame) and records each stretch without decodable
frames as an :class:`UnreadableSpan`, and a video that ends well before the container's
declared end as one span from its last frame to that end; without the list, the first
damage raises (DecodeFailed, Truncated). The windows of the segment are all yielded either
way: those that overlap a span hold the frames around it and are the caller's to drop.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avrl_batch.media import logmel
from avrl_batch.media.audio import RESAMPLE_MARGIN_S, AudioBuffer
from avrl_batch.media.errors import (
    ExceedsCaps,
    Truncated,
    corrupt_data,
    source_name,
    wrap_errors,
)
from avrl_batch.media.probe import (
    MediaCaps,
    Source,
    audio_extent,
    inspect,
    open_container,
    time_origin,
)

_EPS_S = 1e-6  # a frame at t_i - 1 us still counts as "at or before t_i"
# video ending this long before a planned sample time means the file is shorter than it
# declares (cut off), not a normal last frame held to the end
_TRUNCATED_GAP_S = 1.0
# a muxer interleaves streams by time, so once video packets run this far (s of packet time)
# ahead of the last audio, the audio has ended (or pauses): a segment stops waiting for it
# instead of demuxing to the end of the file. Generous: a badly interleaved file costs a
# few seconds of packets demuxed (not decoded), never audio taken for missing
AUDIO_LAG_S = 4.0
# a window has audio when the audio stream covers at least this share of it; otherwise it
# takes the model's missing-audio path rather than hearing zeros
AUDIO_COVER_SHARE = 0.5
# consecutive demux errors with no packet between them after which the rest of the file is
# taken as unreadable: FFmpeg's demuxers resync on their own, so this is a demuxer stuck on
# one spot, not one that skips a damaged stretch
MAX_DEMUX_ERRORS = 16


@dataclass(frozen=True)
class UnreadableSpan:
    """A stretch of a source without decodable video: seconds from the video's first
    timestamp, [start_s, end_s), and why (``reason``: an error type, e.g. DecodeFailed,
    Truncated; ``message``: one line)."""

    start_s: float
    end_s: float
    reason: str
    message: str


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
    last_packet_s: float | None = None  # time of the last video packet demuxed
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
    unreadable: list[UnreadableSpan] | None = None,
) -> Iterator[Window]:
    """Every window that starts in the segment [start_s, end_s), in one forward pass.

    Window k covers [start_s + k * stride_s, + window_s) and may extend past end_s (a
    window is decoded whole; segments overlap by the caller's choice). Windows start only
    before the file's end; the last one is cut at the file's end and then has a shorter
    end_s, its T frames spread over what exists and its log-mel zero-padded to the same E
    (n_examples, default examples_for_duration(window_s)) so windows stack. A window that
    the audio stream covers for less than AUDIO_COVER_SHARE (audio that ends early or
    starts late) has no audio: ``has_audio`` False, ``logmel`` None. The container is
    opened once and seeked once; the pass ends when the segment's frames are in and the
    audio reached the last window, its declared end, or fell AUDIO_LAG_S behind the video;
    memory holds only windows in flight. ``unreadable``: damage is appended there as spans
    (module docstring) instead of raised.
    """
    if window_s <= 0 or stride_s <= 0:
        raise ValueError("window_s and stride_s must be > 0")
    name = source_name(src)
    stats = stats if stats is not None else DecodeStats()
    with wrap_errors(name, stage="decoding"):
        container = open_container(src, name)
        try:
            file_end_s = inspect(container, name, caps).duration_s
            pending = _plan_windows(start_s, end_s, file_end_s, window_s, stride_s, frames)
            if pending:
                examples = n_examples or logmel.examples_for_duration(window_s)
                scan = _SegmentScan(
                    container, name, caps, pending, size, audio, examples, stats, unreadable
                )
                scan.seek(start_s)
                yield from scan.run(start_s, file_end_s)
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


def _plan_windows(
    start_s: float, end_s: float, file_end_s: float, window_s: float, stride_s: float,
    frames: int,
) -> list[_Pending]:
    """The windows that start in [start_s, min(end_s, file end)), each cut at the file's end,
    with their T sample times."""
    stop = min(end_s, file_end_s)
    n_windows = max(0, int(np.ceil((stop - start_s) / stride_s - 1e-9)))
    pending = []
    for k in range(n_windows):
        ws = start_s + k * stride_s
        we = min(ws + window_s, file_end_s)
        times = sample_times(ws, we, frames)
        pending.append(_Pending(k, ws, we, times, [None] * frames, np.zeros(frames, np.float64)))
    return pending


class _SegmentScan:
    """One forward pass over a segment's packets: each sample time takes its frame (the last
    one at or before it), and a window is yielded once all its frames (and audio) are in."""

    def __init__(
        self,
        container: Any,
        name: str,
        caps: MediaCaps,
        pending: list[_Pending],
        size: int,
        audio: bool,
        n_examples: int,
        stats: DecodeStats,
        unreadable: list[UnreadableSpan] | None = None,
    ) -> None:
        self.container, self.name, self.stats = container, name, stats
        self.damage = _Damage(name, unreadable)
        self.vs = container.streams.video[0]
        self.vs.thread_type = "AUTO"  # frame threading: ~1.6x on H.264 (PERF_NOTES)
        self.origin = time_origin(container, self.vs)
        self.astream = (
            container.streams.audio[0] if (audio and container.streams.audio) else None
        )
        self.pending: list[_Pending | None] = list(pending)
        # (time, window k, slot) of every sample, in time order
        self.targets = sorted(
            (float(t), w.index, i) for w in pending for i, t in enumerate(w.times)
        )
        self.last_needed_s = pending[-1].end_s
        self.frames, self.audio, self.n_examples = len(pending[0].times), audio, n_examples
        self.convert = _Converter(size, caps, name, stats)
        self.abuf = (
            AudioBuffer(self.astream.codec_context.sample_rate, self.origin)
            if self.astream is not None
            else None
        )
        # where the audio stream declares it starts and ends: a segment waits for audio only
        # up to that end (a microphone that died early), and not at all past it
        self.audio_from_s, audio_until_s = (
            audio_extent(self.astream, self.origin) if self.astream is not None else (0.0, None)
        )
        self.need_audio_s = self.last_needed_s + RESAMPLE_MARGIN_S
        if audio_until_s is not None:
            self.need_audio_s = min(self.need_audio_s, audio_until_s)
        self.audio_done = self.abuf is None or (
            audio_until_s is not None and audio_until_s <= pending[0].start_s
        )
        self.first_packet_s: float | None = None  # time of the first video packet demuxed
        self.next_target = 0
        self.next_emit = 0
        self.prev: Any = None  # the last decoded video frame, and its time
        self.prev_t = 0.0
        self.step = 0.0  # the frame interval (shortest between good frames), 0: unknown

    def seek(self, start_s: float) -> None:
        """One seek to the keyframe before the first sample (and the audio margin before it)."""
        seek_s = start_s - 2 * RESAMPLE_MARGIN_S
        if seek_s > 0:
            self.container.seek(
                int((seek_s + self.origin) / self.vs.time_base), stream=self.vs, backward=True
            )
            self.stats.seek_s = seek_s

    def run(self, start_s: float, file_end_s: float) -> Iterator[Window]:
        streams = [self.vs] + ([self.astream] if self.astream is not None else [])
        video_done = False
        for packet in self._packets(streams):
            if packet.stream.type == "audio":
                if self.audio_done:
                    continue
                self._audio_packet(packet)
            else:
                t = None
                if packet.pts is not None and packet.time_base is not None:
                    t = float(packet.pts * packet.time_base) - self.origin
                    self.stats.last_packet_s = t
                    self._watch_audio_lag(t)
                    if not video_done and packet.size:
                        self.damage.packet(t)
                if not video_done:
                    for vframe in self._decode(packet, t):
                        self._video_frame(vframe, record_first=True)
                    video_done = self.next_target == len(self.targets)
            yield from self._ready()
            if video_done and self.audio_done:
                return
        # end of file: flush the decoder, then the remaining targets take the last frame
        if not video_done:
            for vframe in _drain(self.vs):
                self._video_frame(vframe, record_first=False)
        self._check_not_truncated(start_s, file_end_s, drained=not video_done)
        while self.next_target < len(self.targets):
            self._assign(self.prev, self.prev_t)
        self.audio_done = True
        yield from self._ready()

    def _packets(self, streams: list[Any]) -> Iterator[Any]:
        """The container's packets; a demux error is damage (recorded) and demuxing goes on
        from where the demuxer stands, up to MAX_DEMUX_ERRORS in a row."""
        import av

        errors = 0
        while True:
            try:
                for packet in self.container.demux(*streams):
                    errors = 0
                    yield packet
                return
            except av.error.EOFError:
                return
            except av.error.FFmpegError as exc:
                errors += 1
                self.damage.seen(exc, what="demuxing")
                if errors >= MAX_DEMUX_ERRORS:
                    return  # the rest is unreadable: the end-of-file checks say so

    def _decode(self, packet: Any, t: float | None) -> list[Any]:
        """The frames of a video packet; a packet the decoder rejects is damage (recorded,
        no frames) and the decoder resyncs at the next decodable frame."""
        import av

        try:
            return list(packet.decode())
        except av.error.FFmpegError as exc:
            if isinstance(exc, av.error.EOFError) and self.damage.out is not None:
                return []  # the decoder was flushed: nothing more comes from it
            self.damage.seen(exc, what="decoding")  # raises when decoding strictly
            return []

    def _audio_packet(self, packet: Any) -> None:
        import av

        assert self.abuf is not None
        try:
            aframes = list(packet.decode())
        except av.error.FFmpegError as exc:
            if isinstance(exc, av.error.EOFError):
                raise
            if self.damage.out is None:  # strict decoding: a rejected packet ends it
                raise corrupt_data(self.damage.name, "decoding", exc) from exc
            # a rejected audio packet: silence in its place keeps the later audio in sync
            # (a window left with little audio is judged by coverage like any other)
            dur = packet.duration * packet.time_base if packet.duration and packet.time_base else 0
            self.abuf.append_silence(float(dur))
            aframes = []
        for aframe in aframes:
            self.abuf.append(aframe)
            self.stats.audio_frames_decoded += 1
        if self.abuf.end_s >= self.need_audio_s:
            self.audio_done = True

    def _watch_audio_lag(self, t: float) -> None:
        """Audio is done once video packets (at ``t`` s now) run AUDIO_LAG_S ahead of the last
        audio (or of where the audio declares it starts, or of where this segment began
        demuxing): the stream ended early or starts later, and waiting would read to the end
        of the file."""
        if self.audio_done:
            return
        if self.first_packet_s is None:
            self.first_packet_s = t
        assert self.abuf is not None
        if t > max(self.abuf.end_s, self.audio_from_s, self.first_packet_s) + AUDIO_LAG_S:
            self.audio_done = True

    def _video_frame(self, vframe: Any, *, record_first: bool) -> None:
        """Every sample time before this frame takes the last frame at or before it (this one
        if none was)."""
        self.stats.frames_decoded += 1
        t = float(vframe.time) - self.origin if vframe.time is not None else self.prev_t
        if vframe.is_corrupt and self.damage.out is not None:
            # decoded with errors (concealed): its packet stays unaccounted for, damage
            self.damage.seen(None, what="decoding")
            return
        if record_first and self.stats.first_frame_s is None:
            self.stats.first_frame_s = t
        n_spans = len(self.damage.out) if self.damage.out is not None else 0
        self.damage.frame(self.prev_t if self.prev is not None else None, self.step, t)
        damaged = self.damage.out is not None and len(self.damage.out) > n_spans
        if self.prev is not None and t > self.prev_t and not damaged:
            # the frame interval: the shortest one between good frames with none missing
            gap = t - self.prev_t
            self.step = gap if self.step == 0.0 else min(self.step, gap)
        while (
            self.next_target < len(self.targets) and self.targets[self.next_target][0] < t - _EPS_S
        ):
            if self.prev is not None:
                self._assign(self.prev, self.prev_t)
            else:
                self._assign(vframe, t)
        self.prev, self.prev_t = vframe, t

    def _assign(self, frame: Any, t: float) -> None:
        _, k, slot = self.targets[self.next_target]
        w = self.pending[k]
        assert w is not None
        w.frames[slot] = (
            np.zeros((self.convert.size, self.convert.size, 3), np.uint8)
            if frame is _NO_FRAME
            else self.convert(frame)
        )
        w.frame_times[slot] = t
        w.filled += 1
        self.next_target += 1

    def _check_not_truncated(self, start_s: float, file_end_s: float, *, drained: bool) -> None:
        """At the end of the file: video that stops well before the declared end (or never
        starts in this segment) is a Truncated span to that end (raised when no
        ``unreadable`` list was given); frames missing after the last good one are a
        DecodeFailed span (only once the decoder was ``drained``: until then frames still
        in it are not missing)."""
        if self.prev is None:
            err = Truncated(
                self.name,
                f"no video frames from {start_s:.2f} s on although the file declares "
                f"{file_end_s:.2f} s; the file is probably cut short — re-copy it",
            )
            if self.damage.out is None:
                raise err
            self.damage.span(start_s, max(file_end_s, start_s), "Truncated", err.reason)
            self.prev, self.prev_t = _NO_FRAME, start_s
            return
        due = self.prev_t + self.step  # where the frame after the last one was due
        if self.next_target < len(self.targets) and (
            self.targets[self.next_target][0] > self.prev_t + _TRUNCATED_GAP_S
            # frames are still wanted and the header promised over a second more video
            or file_end_s > self.prev_t + _TRUNCATED_GAP_S
        ):
            err = Truncated(
                self.name,
                f"video ends at {self.prev_t:.2f} s but the file declares {file_end_s:.2f} s; "
                "the file is probably cut short — re-copy it",
            )
            if self.damage.out is None:
                raise err
            self.damage.span(due, file_end_s, "Truncated", err.reason)
            return
        missing_until = self.damage.end(self.prev_t, self.step) if drained else None
        if missing_until is not None:
            self.damage.span(due, missing_until, "DecodeFailed", self.damage.describe(
                len(self.damage.pts)))

    def _ready(self) -> Iterator[Window]:
        """The windows now complete, in order; each one's frames are freed once yielded."""
        abuf = self.abuf
        while self.next_emit < len(self.pending):
            w = self.pending[self.next_emit]
            assert w is not None
            if w.filled < self.frames:
                return
            audio_short = abuf is not None and abuf.end_s < w.end_s + RESAMPLE_MARGIN_S
            if not self.audio_done and audio_short:
                return
            yield _finish(w, abuf, self.n_examples, self.audio)
            self.pending[self.next_emit] = None  # free its frames
            self.next_emit += 1
            nxt = self.pending[self.next_emit] if self.next_emit < len(self.pending) else None
            if abuf is not None and nxt is not None:
                abuf.trim(nxt.start_s - 2 * RESAMPLE_MARGIN_S)


_NO_FRAME = object()  # what the samples of a segment without any video frame take


class _Damage:
    """The damaged stretches of one pass. Every video packet demuxed is noted by its time;
    each good frame accounts for the packets up to it. Packets between two good frames that
    gave no frame (the decoder rejected them, flagged their frames corrupt, or dropped them
    while it resynced) are a span: from where the frame after the last good one was due (its
    time + the frame interval) to the next good frame. A gap without packets is no damage
    (variable frame rate). Without an ``out`` list a rejected packet raises instead."""

    def __init__(self, name: str, out: list[UnreadableSpan] | None) -> None:
        self.name, self.out = name, out
        self.pts: list[float] = []  # times of video packets not yet accounted for, sorted
        self.errors = 0  # packets rejected since the last span
        self.first = ""  # the first error's text since the last span

    def packet(self, t: float) -> None:
        bisect.insort(self.pts, t)

    def seen(self, exc: Exception | None, *, what: str) -> None:
        """A packet rejected (``exc``) or a frame flagged corrupt (None)."""
        if self.out is None:
            if exc is None:
                return  # strict decoding takes a concealed frame as it always did
            import av

            if isinstance(exc, av.error.EOFError):
                with wrap_errors(self.name, stage=what):
                    raise exc
            raise corrupt_data(self.name, what, exc) from exc
        if exc is not None:
            self.errors += 1
            self.first = self.first or getattr(exc, "strerror", None) or type(exc).__name__
        else:
            self.first = self.first or "frames decoded with errors"

    def frame(self, prev_t: float | None, step: float, t: float) -> None:
        """A good frame at ``t``; ``prev_t`` is the last good frame's time (None: the first
        of the pass, when packets before it count as damage only after an error)."""
        cut = bisect.bisect_left(self.pts, t - _EPS_S)
        if prev_t is None:
            missing = cut if (self.errors or self.first) else 0
            start = self.pts[0] if missing else t
        else:
            missing = cut - bisect.bisect_right(self.pts, prev_t + _EPS_S)
            start = min(prev_t + step, t)
        del self.pts[: bisect.bisect_right(self.pts, t + _EPS_S)]
        if missing and t > start and self.out is not None:
            self.out.append(UnreadableSpan(start, t, "DecodeFailed", self.describe(missing)))
            self.errors, self.first = 0, ""

    def end(self, prev_t: float, step: float) -> float | None:
        """At the end of the file (decoder drained): the end of the frames that never came
        after the last good one (None: none are missing)."""
        after = self.pts[bisect.bisect_right(self.pts, prev_t + _EPS_S):]
        return after[-1] + step if after else None

    def span(self, start_s: float, end_s: float, reason: str, message: str) -> None:
        if self.out is not None and end_s > start_s:
            self.out.append(UnreadableSpan(start_s, end_s, reason, message))

    def describe(self, missing: int) -> str:
        why = f" ({self.first}; {self.errors} packet(s) rejected)" if self.first else ""
        return f"corrupt data: {missing} frame(s) could not be decoded{why}"


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
    # audio that ended early or starts late leaves windows without audio: those take the
    # model's missing-audio path (has_audio False) instead of zero-filled "audio"
    has_audio = abuf is not None and (
        abuf.coverage(w.start_s, w.end_s) >= AUDIO_COVER_SHARE * (w.end_s - w.start_s)
    )
    if has_audio:
        assert abuf is not None
        wave = abuf.span_16k(w.start_s, w.end_s)  # (N,) 16 kHz, zeros where the audio stops
        lm = logmel.log_mel_examples_16k_fixed(wave, n_examples)  # (E, 96, 64)
    return Window(
        index=w.index,
        start_s=w.start_s,
        end_s=w.end_s,
        frames=frames,
        frame_times=w.frame_times,
        logmel=lm,
        has_audio=has_audio,
    )
