"""``avrl scan --cascade``: screen every window cheaply, run the full model only on candidates
(plain functions; pipeline.py runs :func:`screen_source_isolated` as Ray tasks).

    probe ─ screen each source (scan/screen.py: packets, keyframes, audio and the model's own
    audio branch; the model file's calibrated threshold) ─ candidate windows ± the screen's
    margin ─ one segment per run of candidates (split at --segment) ─ the usual decode →
    infer → assemble on those segments
    ─ the windows table completed with every screened-out window (inferred = false)

A screened-out window keeps its place in the windows table (coverage stays complete) with its
screen score, the model's first normal class as its label and probabilities of zero, so the
timeline reads it as calm.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from avrl_batch.classes import ClassSet
from avrl_batch.media.errors import MediaError
from avrl_batch.scan import screen as scr
from avrl_batch.scan.plan import Segment, SourceError, SourceTask, error_of


@dataclass(frozen=True)
class ScreenedSource:
    """The screen's verdict on every window of one source."""

    key: str
    head: str  # "av" or "video": which head scored it
    start_s: np.ndarray  # float64 (N,)
    end_s: np.ndarray  # float64 (N,)
    scores: np.ndarray  # float32 (N,)
    candidate: np.ndarray  # bool (N,): decoded fully and run through the model
    cpu_s: float  # CPU seconds the screening took (its own process)

    @property
    def n_candidates(self) -> int:
        return int(self.candidate.sum())


def screen_source(
    uri: str,
    key: str,
    *,
    version: str,
    duration_s: float,
    window_s: float,
    stride_s: float,
    screen: scr.Screen,
    endpoint_url: str | None = None,
    reads: Any = None,
    audio_net: scr.AudioNet | None = None,
) -> ScreenedSource:
    """Score every window of one source and mark the candidates (threshold and margin from
    the model file's screen; ``audio_net``: the model's audio trunk, which the audio-visual
    head reads when ``screen.needs_audio_net``)."""
    from avrl_batch.media import open_media

    c0 = time.process_time()
    # keyframes are decoded only for a video-only head that uses them, and then only where
    # that head scores the file: no audio, or no audio-visual head at all
    keyframes = (None if screen.av is not None else True) if screen.video_keyframes else False
    with open_media(uri, endpoint_url=endpoint_url, version=version or None, reads=reads) as src:
        feats = scr.window_features(
            src, duration_s, window_s, stride_s, keyframes=keyframes,
            audio_net=audio_net if screen.needs_audio_net else None,
        )
    head_name, scores = screen.scores(feats)
    head = screen.av if head_name == "av" else screen.video
    assert head is not None
    cand = scr.candidates(scores, head.threshold, screen.margin_windows)
    return ScreenedSource(
        key, head_name, feats.start_s, feats.end_s, scores.astype(np.float32), cand,
        time.process_time() - c0,
    )


def screen_source_isolated(
    task: SourceTask, *, isolation: Any, screen: scr.Screen, window_s: float, stride_s: float,
    endpoint_url: str | None = None, audio_net: scr.AudioNet | None = None,
) -> ScreenedSource | SourceError:
    """:func:`screen_source` in the decoder process (scan/isolate.py); a bad file, a crash
    or a hang is a SourceError (stage "decode")."""
    from avrl_batch.scan.isolate import run_isolated
    from avrl_batch.storage import S3Reads

    try:
        return run_isolated(
            screen_source, task.uri, task.key, source=task.uri, stage="decode",
            isolation=isolation, reads=S3Reads().within(isolation.timeout_s),
            version=task.version, duration_s=float(task.duration_s or 0.0), window_s=window_s,
            stride_s=stride_s, screen=screen, endpoint_url=endpoint_url, audio_net=audio_net,
        )
    except MediaError as exc:
        error_type, message = error_of(exc)
        return SourceError(task.uri, task.key, "decode", error_type, message)


def screenable(task: SourceTask) -> bool:
    """A source the screen can cover: its duration is known (the window grid needs it)."""
    return task.duration_s is not None and math.isfinite(task.duration_s) and task.duration_s > 0


def candidate_segments(
    task: SourceTask, screened: ScreenedSource, stride_s: float, segment_s: float
) -> tuple[Segment, ...]:
    """One segment per run of candidate windows, split so none spans more than ``segment_s``;
    each starts on its first window's start (window i starts at i * stride)."""
    duration = float(task.duration_s or 0.0)
    per = max(1, math.floor(segment_s / stride_s + 1e-9))  # windows per segment
    ranges = []
    for first, last in scr.runs(screened.candidate):
        for a in range(first, last + 1, per):
            b = min(a + per - 1, last)
            ranges.append((a * stride_s, min((b + 1) * stride_s, duration)))
    return tuple(
        Segment(task.key, task.uri, i, len(ranges), start, end, task.version)
        for i, (start, end) in enumerate(ranges)
    )


def replan(
    task: SourceTask, screened: ScreenedSource, stride_s: float, segment_s: float
) -> SourceTask:
    return replace(task, segments=candidate_segments(task, screened, stride_s, segment_s))


def complete_windows(
    inferred: pa.Table,
    task: SourceTask,
    screened: ScreenedSource,
    *,
    classes: ClassSet,
    model_id: str,
    scan_id: str,
    unreadable: pa.Table | None = None,
) -> pa.Table:
    """The windows table of a cascade scan: the inferred windows (``inferred``, WINDOWS
    schema) and every other window of the screen's grid as screened out, all with their
    screen scores, ordered by window index. A screened-out window that overlaps one of the
    source's unreadable spans (``unreadable``, UNREADABLE schema) is left out, as the
    assembler leaves out a decoded one: nothing is claimed calm that could not be read."""
    from avrl_batch.scan.sink import windows_table

    n = len(screened.scores)
    got = {int(i): k for k, i in enumerate(inferred["window_index"].to_pylist())}
    probs_in = inferred["probs"].to_pylist()
    start = screened.start_s.copy()
    end = screened.end_s.copy()
    probs = np.zeros((n, len(classes)), np.float32)  # (N, C): zeros where screened out
    has_audio = np.full(n, bool(task.has_audio))
    is_inferred = np.zeros(n, bool)
    audio_in = inferred["has_audio"].to_pylist()
    s_in, e_in = inferred["start_s"].to_pylist(), inferred["end_s"].to_pylist()
    extra = [i for i in got if not 0 <= i < n]
    if extra:  # the decoder found windows the grid does not have: keep them, unscored
        raise ValueError(f"windows {extra[:3]} of {task.uri} lie outside the screened grid")
    for i, k in got.items():
        probs[i] = probs_in[k]
        has_audio[i] = audio_in[k]
        start[i], end[i] = s_in[k], e_in[k]
        is_inferred[i] = True
    keep = np.ones(n, bool)
    if unreadable is not None and unreadable.num_rows:
        for lo, hi in zip(unreadable["start_s"].to_pylist(), unreadable["end_s"].to_pylist(),
                          strict=True):
            keep &= is_inferred | ~((start < hi) & (end > lo))
    idx = np.flatnonzero(keep)
    return windows_table(
        task, idx.astype(np.int64), start[idx], end[idx], has_audio[idx], probs[idx],
        classes=classes, model_id=model_id, scan_id=scan_id,
        inferred=is_inferred[idx], screen_score=np.asarray(screened.scores)[idx],
    )


def summary(screened: dict[str, ScreenedSource], screen: scr.Screen) -> dict[str, Any]:
    """What the scan summary and manifest say about the cascade."""
    windows = sum(len(s.scores) for s in screened.values())
    inferred = sum(s.n_candidates for s in screened.values())
    heads = {"video": screen.video, "av": screen.av}
    return {
        "windows_screened": windows,
        "windows_inferred": inferred,
        "inferred_share": round(inferred / windows, 4) if windows else 0.0,
        "screen_cpu_s": round(sum(s.cpu_s for s in screened.values()), 3),
        "sources_by_head": {
            h: sum(1 for s in screened.values() if s.head == h) for h in ("av", "video")
        },
        "screen": {
            "target_recall": screen.target_recall,
            "per_class": screen.per_class,
            "recall_of": screen.recall_of,
            "margin_windows": screen.margin_windows,
            "model_id": screen.model_id,
            "audio_net_dim": screen.audio_net_dim,
            "video_keyframes": screen.video_keyframes,
            "trained_on": screen.trained_on,
            "positives_by_class": screen.positives_by_class,
            "thresholds": {k: (None if h is None else h.threshold) for k, h in heads.items()},
        },
    }
