"""Predictor batches -> finished sources, on the driver (plain class, no Ray).

Rows arrive in any order and any interleaving of sources; a source is finished once every
one of its segments has sent its trailer (decode.py), and is then handed back once: its
windows table (sink.windows_table), its unreadable spans (sink.unreadable_table) and the
thumbnails of its peak windows, or its error.

A damaged source keeps what could be read. The spans its segments could not decode (their
``unreadable`` rows, and the range a failed segment left undecoded) are merged, and the
windows that overlap one are dropped: they hold frames from around the damage. The source
is an error row only when no window is left, or when a segment failed for a reason that is
not the recording's (storage, the machine): then nothing is written and a rerun scans it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from avrl_batch.classes import ClassSet
from avrl_batch.scan.decode import DONE, ERROR, UNREADABLE, WINDOW
from avrl_batch.scan.plan import SourceError, SourceTask
from avrl_batch.scan.sink import unreadable_table, windows_table

Span = tuple[float, float, str, str]  # start_s, end_s, reason (an error type), message


@dataclass
class _Pending:
    task: SourceTask
    windows: dict[int, tuple[float, float, bool, np.ndarray]] = field(default_factory=dict)
    thumbs: dict[int, bytes] = field(default_factory=dict)
    segments: dict[int, int] = field(default_factory=dict)  # segment index -> n windows
    spans: dict[tuple[float, float], Span] = field(default_factory=dict)  # by (start, end)
    error: SourceError | None = None  # the first segment failure of the recording
    transient: SourceError | None = None  # the first failure of storage or the machine


@dataclass
class FinishedSource:
    task: SourceTask
    windows: pa.Table | None = None
    thumbnails: dict[int, bytes] = field(default_factory=dict)
    error: SourceError | None = None
    unreadable: pa.Table | None = None  # UNREADABLE rows (none when nothing was damaged)


class SourceAssembler:
    """Collects predictor batches (any order, any interleaving of sources) and hands back
    each source once all of its segments have reported.

    Idempotent per row: a window or trailer seen twice (a retried task whose first output
    also arrived) is counted once, keyed by (source key, window index / segment index).
    """

    def __init__(
        self,
        tasks: list[SourceTask],
        *,
        classes: ClassSet,
        model_id: str,
        scan_id: str,
    ) -> None:
        self.pending = {t.key: _Pending(t) for t in tasks}
        self.classes = classes
        self.model_id = model_id
        self.scan_id = scan_id
        self.node_windows: dict[str, int] = {}  # infer node id -> windows
        self.node_segments: dict[str, int] = {}  # decode node id -> segments
        self.peak_rss = {"decode": 0.0, "infer": 0.0}  # MiB, max over workers

    def add_batch(self, batch: dict[str, np.ndarray]) -> list[FinishedSource]:
        done: list[str] = []
        n = len(batch["kind"])
        for name, col in (("decode", "rss_mb"), ("infer", "infer_rss_mb")):
            if col in batch and n:
                self.peak_rss[name] = max(self.peak_rss[name], float(np.max(batch[col])))
        for i in range(n):
            key = str(batch["key"][i])
            p = self.pending.get(key)
            if p is None:
                continue  # already finalised (a late duplicate) or not ours
            kind = str(batch["kind"][i])
            if kind == WINDOW:
                wi = int(batch["window_index"][i])
                if wi not in p.windows:
                    node = str(batch["infer_node"][i])
                    self.node_windows[node] = self.node_windows.get(node, 0) + 1
                p.windows[wi] = (
                    float(batch["start_s"][i]),
                    float(batch["end_s"][i]),
                    bool(batch["has_audio"][i]),
                    np.asarray(batch["probs"][i], np.float32),
                )
                thumb = batch["thumbnail"][i]
                if thumb:
                    p.thumbs[wi] = bytes(thumb)
            elif kind == UNREADABLE:
                self._span(p, batch, i)
            elif kind in (DONE, ERROR):
                seg = int(batch["segment_index"][i])
                if seg not in p.segments:
                    node = str(batch["decode_node"][i]) if "decode_node" in batch else ""
                    self.node_segments[node] = self.node_segments.get(node, 0) + 1
                p.segments[seg] = int(batch["n_windows"][i])
                if kind == ERROR:
                    self._segment_failed(p, batch, i)
            if len(p.segments) == len(p.task.segments) and key not in done:
                done.append(key)
        return [self._finish(key) for key in done]

    @staticmethod
    def _span(p: _Pending, batch: dict[str, np.ndarray], i: int) -> None:
        lo, hi = float(batch["start_s"][i]), float(batch["end_s"][i])
        p.spans[(lo, hi)] = (lo, hi, str(batch["error_type"][i]), str(batch["message"][i]))

    def _segment_failed(self, p: _Pending, batch: dict[str, np.ndarray], i: int) -> None:
        """A segment's error trailer: storage's or the machine's failure spoils the source
        (retried whole next run); the recording's own is an unreadable span of the
        segment's undecoded range."""
        err = SourceError(
            p.task.uri, p.task.key, "decode", str(batch["error_type"][i]), str(batch["message"][i])
        )
        if err.transient:
            p.transient = p.transient or err
            return
        p.error = p.error or err
        self._span(p, batch, i)

    def _finish(self, key: str) -> FinishedSource:
        p = self.pending.pop(key)
        if p.transient is not None:
            return FinishedSource(p.task, error=p.transient)
        expected = sum(p.segments.values())
        if expected != len(p.windows):
            # cannot happen unless rows were lost on the way: say so rather than write a
            # timeline with holes nobody knows about
            return FinishedSource(
                p.task,
                error=SourceError(
                    p.task.uri,
                    key,
                    "infer",
                    "LostWindows",
                    f"{len(p.windows)} of {expected} windows came back from inference",
                ),
            )
        spans = merge_spans(list(p.spans.values()), p.task.duration_s)
        kept = {
            wi: v for wi, v in p.windows.items()
            if not any(v[0] < hi and v[1] > lo for lo, hi, _, _ in spans)
        }
        if not kept and (spans or p.error is not None):  # nothing could be read: an error row
            return FinishedSource(p.task, error=p.error or self._nothing_read(p.task, spans))
        idx = np.fromiter(kept.keys(), np.int64, len(kept))
        vals = list(kept.values())
        probs = (
            np.stack([v[3] for v in vals])
            if vals
            else np.zeros((0, len(self.classes)), np.float32)
        )  # (N, C)
        table = windows_table(
            p.task,
            idx,
            np.array([v[0] for v in vals], np.float64),
            np.array([v[1] for v in vals], np.float64),
            np.array([v[2] for v in vals], bool),
            probs,
            classes=self.classes,
            model_id=self.model_id,
            scan_id=self.scan_id,
        )
        unreadable = (
            unreadable_table(p.task, spans, model_id=self.model_id, scan_id=self.scan_id)
            if spans else None
        )
        thumbs = {wi: b for wi, b in p.thumbs.items() if wi in kept}
        return FinishedSource(p.task, windows=table, thumbnails=thumbs, unreadable=unreadable)

    @staticmethod
    def _nothing_read(task: SourceTask, spans: list[Span]) -> SourceError:
        lo, hi, reason, message = spans[0]
        return SourceError(task.uri, task.key, "decode", reason, f"{task.uri}: {message}")

    def unfinished(self) -> list[SourceTask]:
        return [p.task for p in self.pending.values()]


def merge_spans(spans: list[Span], duration_s: float | None) -> list[Span]:
    """Overlapping or touching spans as one (the reason and message of its earliest part),
    cut at the recording's duration, in time order. Segments overlap by a window, so two of
    them may report the same damage."""
    end = duration_s if duration_s is not None and np.isfinite(duration_s) else np.inf
    merged: list[Span] = []
    for lo, hi, reason, message in sorted(spans):
        lo, hi = max(lo, 0.0), min(hi, end)
        if hi <= lo:
            continue
        if merged and lo <= merged[-1][1] + 1e-6:
            m = merged[-1]
            merged[-1] = (m[0], max(m[1], hi), m[2], m[3])
        else:
            merged.append((lo, hi, reason, message))
    return merged
