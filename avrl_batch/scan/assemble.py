"""Predictor batches -> finished sources, on the driver (plain class, no Ray).

Rows arrive in any order and any interleaving of sources; a source is finished once every
one of its segments has sent its trailer (decode.py), and is then handed back once: its
windows table (sink.windows_table) and the thumbnails of its peak windows, or its error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from avrl_batch.classes import ClassSet
from avrl_batch.scan.decode import DONE, ERROR, WINDOW
from avrl_batch.scan.plan import SourceError, SourceTask
from avrl_batch.scan.sink import windows_table


@dataclass
class _Pending:
    task: SourceTask
    windows: dict[int, tuple[float, float, bool, np.ndarray]] = field(default_factory=dict)
    thumbs: dict[int, bytes] = field(default_factory=dict)
    segments: dict[int, int] = field(default_factory=dict)  # segment index -> n windows
    error: SourceError | None = None


@dataclass
class FinishedSource:
    task: SourceTask
    windows: pa.Table | None = None
    thumbnails: dict[int, bytes] = field(default_factory=dict)
    error: SourceError | None = None


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
            elif kind in (DONE, ERROR):
                seg = int(batch["segment_index"][i])
                if seg not in p.segments:
                    node = str(batch["decode_node"][i]) if "decode_node" in batch else ""
                    self.node_segments[node] = self.node_segments.get(node, 0) + 1
                p.segments[seg] = int(batch["n_windows"][i])
                if kind == ERROR and p.error is None:
                    p.error = SourceError(
                        p.task.uri,
                        key,
                        "decode",
                        str(batch["error_type"][i]),
                        str(batch["message"][i]),
                    )
            if len(p.segments) == len(p.task.segments) and key not in done:
                done.append(key)
        return [self._finish(key) for key in done]

    def _finish(self, key: str) -> FinishedSource:
        p = self.pending.pop(key)
        if p.error is not None:
            return FinishedSource(p.task, error=p.error)
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
        idx = np.fromiter(p.windows.keys(), np.int64, len(p.windows))
        vals = list(p.windows.values())
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
        return FinishedSource(p.task, windows=table, thumbnails=p.thumbs)

    def unfinished(self) -> list[SourceTask]:
        return [p.task for p in self.pending.values()]
