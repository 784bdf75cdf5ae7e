"""Probe a media source: duration, frame rate, size, codecs, audio, rotation, creation time.

A source is a local path or a binary, seekable file object (storage.open_source gives S3
objects as such); PyAV reads both. Caps are checked on what the container declares, before
any frame is decoded, so that a hostile file cannot make a worker allocate without bound.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from avrl_batch.media.errors import (
    DecodeFailed,
    EmptyFile,
    ExceedsCaps,
    NotMedia,
    NoVideoStream,
    Truncated,
    source_name,
    wrap_errors,
)

Source = Any  # str | os.PathLike | a binary seekable file object (typing.BinaryIO)


@contextlib.contextmanager
def open_media(
    uri: str,
    *,
    endpoint_url: str | None = None,
    version: str | None = None,
    reads: Any = None,
) -> Iterator[Source]:
    """The Source of a storage URI: a local path as is (FFmpeg's own file I/O), an S3 object
    as a seekable ranged-read file object pinned to ``version`` (the listed ETag) whose
    reads follow ``reads`` (storage.S3Reads; None: its defaults)."""
    from avrl_batch import storage

    p = storage.parse_uri(uri)
    if p.scheme == "file":
        yield p.path
    else:
        with storage.open_source(
            uri, endpoint_url=endpoint_url, version=version, reads=reads or storage.S3Reads()
        ) as f:
            try:
                yield f
            except Exception as exc:
                # whatever FFmpeg made of a failed read (PyAV drops the exception raised in
                # its read callback), it was storage's failure, not the file's
                if f.failure is not None and f.failure is not exc:
                    raise f.failure from exc
                raise
            if f.failure is not None:  # a failed read FFmpeg took for the end of the file
                raise f.failure

# first bytes of containers we recognise; a file that starts like one of these but does not
# open is an incomplete copy, not "not media"
_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"),  # MP4 / MOV / 3GP
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM (EBML)
    (0, b"RIFF"),  # AVI / WAV
    (0, b"OggS"),
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # MPEG-PS
    (0, b"\x30\x26\xb2\x75"),  # ASF / WMV
)


@dataclass(frozen=True)
class MediaCaps:
    """Limits a source must stay within (a hostile or broken file cannot exhaust memory)."""

    max_pixels: int = 7680 * 4320  # per frame: 8K UHD
    max_duration_s: float = 48 * 3600.0  # 48 h of recording
    max_streams: int = 16  # streams in the container
    # the decoded audio stream: its declared rate sizes every buffer and the resampler's
    # filter bank (memory grew by 300-400 MB at 20-40 MHz); 384 kHz is the highest rate of
    # real recorders and audio interfaces
    max_audio_rate_hz: int = 384_000
    max_audio_channels: int = 32  # 22.2 surround is 24; each channel is decoded and mixed


@dataclass(frozen=True)
class MediaInfo:
    """What a source holds. Times are seconds from the video stream's first timestamp."""

    duration_s: float
    fps: float  # average frame rate (frames / duration for VFR)
    width: int  # coded size, before rotation
    height: int
    video_codec: str
    audio_codec: str | None
    has_audio: bool
    audio_sample_rate: int | None  # Hz, native rate of the first audio stream
    audio_channels: int | None
    rotation: int  # degrees counter-clockwise to rotate decoded frames for display
    creation_time: datetime | None  # UTC, from container metadata
    n_frames: int | None  # as the container declares it; None when unknown
    container_format: str  # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"


def probe(src: Source, *, caps: MediaCaps = MediaCaps()) -> MediaInfo:
    """Describe ``src``; raises a MediaError subclass (EmptyFile, NotMedia, Truncated,
    NoVideoStream, ExceedsCaps, DecodeFailed) when it cannot be scanned."""
    name = source_name(src)
    with wrap_errors(name, stage="probing"):
        container = open_container(src, name)
        try:
            info = inspect(container, name, caps)
            # rotation lives in the frames' display-matrix side data (PyAV exposes no
            # stream-level accessor), so decode the first frame; this also proves the
            # video stream decodes at all
            frame = next(container.decode(video=0), None)
            if frame is None:
                raise Truncated(name, "the video stream holds no decodable frame")
            rotation = int(frame.rotation) % 360
        finally:
            container.close()
    return replace(info, rotation=rotation)


def _size_of(src: Source) -> int | None:
    if isinstance(src, (str, bytes)) or hasattr(src, "__fspath__"):
        return os.stat(src).st_size
    try:
        pos = src.tell()
        size = src.seek(0, io.SEEK_END)
        src.seek(pos)
        return int(size)
    except (AttributeError, OSError, ValueError):
        return None


def _head(src: Source, n: int = 16) -> bytes:
    try:
        if isinstance(src, (str, bytes)) or hasattr(src, "__fspath__"):
            with open(src, "rb") as f:
                return f.read(n)
        pos = src.tell()
        src.seek(0)
        head = src.read(n)
        src.seek(pos)
        return bytes(head)
    except (AttributeError, OSError, ValueError):
        return b""


def open_container(src: Source, name: str) -> Any:
    """av.open with typed errors: EmptyFile, NotMedia, or Truncated (container recognised
    from its first bytes but its header/index is missing)."""
    import av

    if isinstance(src, (str, bytes)) or hasattr(src, "__fspath__"):
        if not os.path.exists(src):
            raise NotMedia(name, "no such file; check the path")
        if os.path.isdir(src):
            raise NotMedia(name, "is a directory, not a media file")
    if _size_of(src) == 0:
        raise EmptyFile(name, "the file is empty (0 bytes); re-copy or re-export it")
    try:
        return av.open(src if not hasattr(src, "__fspath__") else os.fspath(src), mode="r")
    except av.error.FFmpegError as exc:
        head = _head(src)
        if any(head[o : o + len(sig)] == sig for o, sig in _SIGNATURES):
            raise Truncated(
                name,
                "the container header or index is missing or cut off (incomplete upload "
                f"or copy?): {exc.strerror}; re-copy the file",
            ) from exc
        raise NotMedia(
            name, f"not a media file FFmpeg can read ({exc.strerror}); check the file type"
        ) from exc


def inspect(container: Any, name: str, caps: MediaCaps) -> MediaInfo:
    """MediaInfo from an open container's headers (rotation left 0), checking the caps."""
    if len(container.streams) > caps.max_streams:
        raise ExceedsCaps(
            name, f"{len(container.streams)} streams exceed the cap of {caps.max_streams}"
        )
    if not container.streams.video:
        raise NoVideoStream(name, "the file has no video stream; only video files are scanned")
    vs = container.streams.video[0]
    cc = vs.codec_context
    width, height = int(cc.width or 0), int(cc.height or 0)
    if width <= 0 or height <= 0:
        # FFmpeg zeroes a size it refuses (e.g. a header patched to 100000x100000)
        raise DecodeFailed(
            name,
            "the video stream declares no usable frame size (corrupt header, or dimensions "
            "FFmpeg refuses); re-encode the file",
        )
    if width * height > caps.max_pixels:
        raise ExceedsCaps(
            name, f"{width}x{height} frames exceed the cap of {caps.max_pixels} pixels"
        )
    duration = _duration_s(container, vs)
    if duration > caps.max_duration_s:
        raise ExceedsCaps(
            name, f"duration {duration:.0f} s exceeds the cap of {caps.max_duration_s:.0f} s"
        )
    rate = vs.average_rate or vs.guessed_rate or vs.base_rate
    n_frames = int(vs.frames) if vs.frames else None
    fps = float(rate) if rate else (n_frames / duration if n_frames and duration else 0.0)
    aus = container.streams.audio
    a = aus[0] if aus else None
    if a is not None:
        _check_audio(a.codec_context, name, caps)
    return MediaInfo(
        duration_s=duration,
        fps=fps,
        width=width,
        height=height,
        video_codec=cc.name,
        audio_codec=a.codec_context.name if a is not None else None,
        has_audio=a is not None,
        audio_sample_rate=int(a.codec_context.sample_rate) if a is not None else None,
        audio_channels=int(a.codec_context.channels) if a is not None else None,
        rotation=0,
        creation_time=_creation_time(container, vs),
        n_frames=n_frames,
        container_format=container.format.name,
    )


def _check_audio(cc: Any, name: str, caps: MediaCaps) -> None:
    """The decoded audio stream's declared rate and channel count within the caps."""
    rate, channels = int(cc.sample_rate or 0), int(cc.channels or 0)
    if rate > caps.max_audio_rate_hz:
        raise ExceedsCaps(
            name, f"audio at {rate} Hz exceeds the cap of {caps.max_audio_rate_hz} Hz"
        )
    if channels > caps.max_audio_channels:
        raise ExceedsCaps(
            name, f"{channels} audio channels exceed the cap of {caps.max_audio_channels}"
        )


def time_origin(container: Any, vs: Any) -> float:
    """Seconds that map to t = 0: the video stream's first timestamp."""
    if vs.start_time is not None and vs.time_base is not None:
        return float(vs.start_time * vs.time_base)
    if container.start_time is not None:
        return container.start_time / 1_000_000
    return 0.0


def audio_extent(astream: Any, origin_s: float) -> tuple[float, float | None]:
    """(start, end) of an audio stream on the video timeline, as the container declares it;
    end None when it declares none. A microphone that dies or a recorder that starts audio
    late leaves an audio stream shorter than the video: windows outside it have no audio.

    MP4 and MOV declare each track's start and duration; Matroska files written by FFmpeg
    or mkvmerge carry a ``DURATION`` tag per track: the end of its last packet.
    """
    tb = astream.time_base
    start = float(astream.start_time * tb) - origin_s if astream.start_time is not None else 0.0
    if astream.duration is not None and tb is not None and astream.duration > 0:
        return start, start + float(astream.duration * tb)
    tag_end = _duration_tag_s(astream)
    return start, (None if tag_end is None else tag_end - origin_s)


def _duration_tag_s(stream: Any) -> float | None:
    """A Matroska track's ``DURATION`` tag (``HH:MM:SS.nnnnnnnnn``, written by FFmpeg and
    mkvmerge): the end of its last packet on the container's clock; None without one."""
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    m = re.fullmatch(r"\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)\s*", tag or "")
    if not m:
        return None
    h, mi, sec = m.groups()
    return int(h) * 3600 + int(mi) * 60 + float(sec)


def _duration_s(container: Any, vs: Any) -> float:
    """The video stream's duration: what the scan covers. A container's own duration runs to
    the end of its longest stream (an MKV whose audio goes on after the video would have its
    last segment find no frames), so it is the last resort before reading timestamps."""
    if vs.duration is not None and vs.time_base is not None and vs.duration > 0:
        return float(vs.duration * vs.time_base)
    tag_end = _duration_tag_s(vs)
    if tag_end is not None and tag_end > 0:
        return max(0.0, tag_end - time_origin(container, vs))
    if container.duration is not None and container.duration > 0:
        # container duration runs from the earliest stream start
        start = container.start_time / 1_000_000 if container.start_time is not None else 0.0
        return max(0.0, container.duration / 1_000_000 + start - time_origin(container, vs))
    # raw streams declare no duration: read packet timestamps (no decoding) to find the end
    last = 0.0
    origin = time_origin(container, vs)
    for packet in container.demux(vs):
        if packet.pts is not None and packet.time_base is not None:
            end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
            last = max(last, end - origin)
    container.seek(0)
    return last


def _creation_time(container: Any, vs: Any) -> datetime | None:
    for meta in (container.metadata, vs.metadata):
        raw = meta.get("creation_time") or meta.get("CREATION_TIME") or meta.get("date")
        if not raw:
            continue
        try:
            ts = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        except ValueError:
            continue
        return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    return None
