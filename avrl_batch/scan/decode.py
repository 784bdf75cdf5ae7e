"""Decode one segment into window rows (plain functions; the pipeline runs
:func:`decode_segment_isolated`, :func:`decode_segment` in the decoder process, in Ray tasks).

Every segment yields its window rows, one ``kind="unreadable"`` row per stretch it could
not decode (start_s/end_s, error_type = the reason, message), and then exactly one
*trailer* row: ``kind="done"`` with the number of windows, or ``kind="error"`` with the
failure and the window range it left undecoded (start_s/end_s). The trailer tells the
driver that the segment is finished, even when it had no windows or failed midway, so a
source is finalised exactly when all its segments have reported. All rows have the same
columns and array shapes (Ray Data stacks them into tensor columns); a trailer carries
zero-filled arrays that the predictor never runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from avrl_batch.media.errors import MediaError
from avrl_batch.scan.isolate import DecoderProcess, Isolation, stream_isolated
from avrl_batch.scan.plan import WindowSpec, error_of

WINDOW, UNREADABLE, DONE, ERROR = "window", "unreadable", "done", "error"
LOGMEL_DTYPE = np.float16  # log-mel values lie in about [-4.6, 12]: half the bytes to move


def _row(seg: dict[str, Any], kind: str, spec: WindowSpec, **values: Any) -> dict[str, Any]:
    row = {
        "key": seg["key"],
        "source_uri": seg["source_uri"],
        "segment_index": int(seg["index"]),
        "kind": kind,
        "window_index": -1,
        "start_s": 0.0,
        "end_s": 0.0,
        "has_audio": False,
        "n_windows": 0,
        "error_type": "",
        "message": "",
    }
    row.update(values)
    if "frames" not in row:
        row["frames"] = np.zeros((spec.frames, spec.size, spec.size, 3), np.uint8)
    if "logmel" not in row:
        row["logmel"] = np.zeros((spec.audio_examples, 96, 64), LOGMEL_DTYPE)
    return row


def _fit_logmel(logmel: np.ndarray | None, examples: int) -> np.ndarray:
    """(E', 96, 64) -> exactly (examples, 96, 64): a window at the very end of a file may
    carry fewer examples; zero rows pad it so every row stacks into one tensor column."""
    out = np.zeros((examples, 96, 64), LOGMEL_DTYPE)
    if logmel is not None and len(logmel):
        n = min(examples, logmel.shape[0])
        out[:n] = logmel[:n]
    return out


def decode_segment(
    seg: dict[str, Any], spec: WindowSpec, *, endpoint_url: str | None = None, reads: Any = None
) -> Iterator[dict[str, Any]]:
    """Window rows of one segment (a ``Segment.to_row()`` dict), then its trailer row.

    Never raises for a bad source: the failure becomes the trailer (``kind="error"``). S3
    reads are pinned to the segment's listed version and follow ``reads`` (storage.S3Reads).
    """
    from avrl_batch.media import iter_windows, open_media
    from avrl_batch.media.video import UnreadableSpan

    n = 0
    spans: list[UnreadableSpan] = []  # damage iter_windows decoded past
    try:
        with open_media(
            seg["source_uri"], endpoint_url=endpoint_url, version=seg.get("version") or None,
            reads=reads,
        ) as src:
            for w in iter_windows(
                src,
                float(seg["start_s"]),
                float(seg["end_s"]),
                window_s=spec.window_s,
                stride_s=spec.stride_s,
                frames=spec.frames,
                size=spec.size,
                audio=True,
                unreadable=spans,
            ):
                has_audio = bool(w.has_audio) and w.logmel is not None
                yield _row(
                    seg,
                    WINDOW,
                    spec,
                    # window i starts at i * stride: the index is the same in every segment
                    window_index=int(round(w.start_s / spec.stride_s)),
                    start_s=float(w.start_s),
                    end_s=float(w.end_s),
                    has_audio=has_audio,
                    frames=np.ascontiguousarray(w.frames, dtype=np.uint8),
                    logmel=_fit_logmel(w.logmel if has_audio else None, spec.audio_examples),
                )
                n += 1
    except Exception as exc:  # noqa: BLE001 - a bad segment is an error trailer, not a dead task
        yield from _span_rows(seg, spec, spans)
        yield _error_trailer(seg, spec, n, exc)
        return
    yield from _span_rows(seg, spec, spans)
    yield _row(seg, DONE, spec, n_windows=n)


def _span_rows(seg: dict[str, Any], spec: WindowSpec, spans: list[Any]) -> Iterator[dict]:
    for s in spans:
        yield _row(
            seg, UNREADABLE, spec, start_s=float(s.start_s), end_s=float(s.end_s),
            error_type=s.reason, message=s.message,
        )


def failed_range(seg: dict[str, Any], spec: WindowSpec, n_windows: int) -> tuple[float, float]:
    """What a segment that failed after ``n_windows`` windows left undecoded: from the start
    of its first missing window to the end of its last window (windows come in order)."""
    start, end = float(seg["start_s"]), float(seg["end_s"])
    first = start + n_windows * spec.stride_s
    if not math.isfinite(end):
        return first, first + spec.window_s  # unknown duration: the next window at least
    n_starts = max(1, math.ceil((end - start) / spec.stride_s - 1e-9))
    return first, max(first, start + (n_starts - 1) * spec.stride_s + spec.window_s)


def _error_trailer(
    seg: dict[str, Any], spec: WindowSpec, n_windows: int, exc: BaseException
) -> dict[str, Any]:
    error_type, message = error_of(exc)
    lo, hi = failed_range(seg, spec, n_windows)
    return _row(seg, ERROR, spec, n_windows=n_windows, start_s=lo, end_s=hi,
                error_type=error_type, message=message)


def _decode_segment_in_child(
    seg: dict[str, Any], spec: WindowSpec, *, endpoint_url: str | None = None, reads: Any = None
) -> Iterator[dict[str, Any]]:
    """decode_segment, with the decoder process's peak RSS (MiB) on the trailer: decoding
    happens here, so this is the memory that must stay bounded by the segment."""
    from avrl_batch.memory import peak_rss_mb

    for row in decode_segment(seg, spec, endpoint_url=endpoint_url, reads=reads):
        if row["kind"] != WINDOW:
            row["decoder_rss_mb"] = peak_rss_mb()
        yield row


def decode_segment_isolated(
    seg: dict[str, Any],
    spec: WindowSpec,
    *,
    endpoint_url: str | None = None,
    isolation: Isolation = Isolation(),
    proc: DecoderProcess | None = None,
) -> Iterator[dict[str, Any]]:
    """:func:`decode_segment` in the decoder process (scan/isolate.py): the segment's window
    rows, each once, then its trailer (with ``decoder_rss_mb``: the decoder's peak RSS); a
    decoder crash or hang (twice) becomes the error trailer. S3 reads give up (a transient
    StorageError trailer) before the decoder watchdog fires."""
    from avrl_batch.storage import S3Reads

    n = 0
    try:
        for row in stream_isolated(
            _decode_segment_in_child, seg, spec, source=seg["source_uri"], stage="decode",
            isolation=isolation, proc=proc, endpoint_url=endpoint_url,
            reads=S3Reads().within(isolation.timeout_s),
            # a retry re-sends the rows already passed on: skip them
            item_id=_item_id,
        ):
            if row["kind"] == WINDOW:
                n += 1
            yield row
    except MediaError as exc:
        yield _error_trailer(seg, spec, n, exc)


def _item_id(row: dict[str, Any]) -> Any:
    """What a retried decode skips of the rows already passed on: windows by index, spans by
    their place; the trailer comes last, so a retry after it never yields a second one."""
    if row["kind"] == WINDOW:
        return row["window_index"]
    if row["kind"] == UNREADABLE:
        return ("unreadable", row["start_s"], row["end_s"])
    return "trailer"
