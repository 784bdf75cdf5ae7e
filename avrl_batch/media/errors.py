"""Typed media errors. Nothing but AvrlErrors leaves the decode entry points (probe,
decode_frames, iter_windows, decode_audio): FFmpeg/PyAV errors and anything unexpected become
a MediaError; a StorageError raised by the file object (S3 read failed) passes through."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from avrl_batch.errors import AvrlError


class MediaError(AvrlError):
    """A source that cannot be decoded. ``str()`` is one line: '<source>: <reason>'."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # keep (source, reason) across pickling (Ray ships errors between processes)
        return (type(self), (self.source, self.reason))


class EmptyFile(MediaError):
    """The source has zero bytes."""


class NotMedia(MediaError):
    """FFmpeg recognises no container in the bytes (random data, a text file, ...)."""


class Truncated(MediaError):
    """A recognised container whose data ends early (cut-off upload, partial copy)."""


class NoVideoStream(MediaError):
    """A media file without a video stream (audio-only files cannot be scanned)."""


class ExceedsCaps(MediaError):
    """The file declares more pixels, duration or streams than the configured caps."""


class DecodeFailed(MediaError):
    """Anything else that stopped decoding (corrupt packets, unsupported codec, I/O)."""


def source_name(src: Any) -> str:
    """A name for messages: the path, or a file object's ``uri``/``name``."""
    if isinstance(src, (str, bytes)) or hasattr(src, "__fspath__"):
        return str(src)
    # storage.open_source gives a BufferedReader over a raw reader that knows the URI
    for obj in (src, getattr(src, "raw", None)):
        for attr in ("uri", "name"):
            try:
                value = getattr(obj, attr, None)
            except (AttributeError, ValueError):  # BufferedReader.name of a nameless raw
                continue
            if isinstance(value, str) and value:
                return value
    return f"<{type(src).__name__}>"


def corrupt_data(source: str, stage: str, exc: Exception) -> DecodeFailed:
    """The error of a packet the demuxer or decoder rejected: corrupt data, whichever error
    code FFmpeg chose for it (InvalidDataError, or EPERM/EINVAL from some decoders)."""
    why = getattr(exc, "strerror", None) or type(exc).__name__
    return DecodeFailed(source, f"corrupt data while {stage} ({why}); re-encode or skip the file")


@contextlib.contextmanager
def wrap_errors(source: str, *, stage: str = "decoding") -> Iterator[None]:
    """Turn any exception except MediaError into a MediaError subclass naming ``source``."""
    import av

    try:
        yield
    except AvrlError:  # MediaError, or a StorageError from the reader: already typed
        raise
    except av.error.EOFError as exc:
        raise Truncated(
            source, f"the file is cut short: its data ends in the middle of {stage}; re-copy it"
        ) from exc
    except av.error.InvalidDataError as exc:
        raise corrupt_data(source, stage, exc) from exc
    except av.error.DecoderNotFoundError as exc:
        raise DecodeFailed(source, f"no decoder for this codec ({exc.strerror})") from exc
    except av.error.FFmpegError as exc:
        raise DecodeFailed(source, f"FFmpeg failed while {stage}: {exc.strerror}") from exc
    except FileNotFoundError as exc:
        raise DecodeFailed(source, "file not found; check the path") from exc
    except MemoryError as exc:
        raise ExceedsCaps(source, f"ran out of memory while {stage}; lower the caps") from exc
    except Exception as exc:  # the contract: only MediaError escapes
        raise DecodeFailed(source, f"{stage} failed: {type(exc).__name__}: {exc}") from exc
