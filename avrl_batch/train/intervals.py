"""Interval manifests: labelled stretches of long recordings -> model-window training clips.

A row ``uri`` (or ``source_uri``, as in the ground-truth table ``avrl scan --truth`` reads),
``label``, ``start_s``, ``end_s`` and optionally ``split`` and ``dark`` says that the recording
shows ``label`` from ``start_s`` to ``end_s`` seconds. ``cut_clips`` turns every interval into
clips of one model window each, starting every ``clip_stride_s`` inside it, and with a
background label samples clips of that normal label from the stretches no interval covers.

Splits: without a split column every recording goes whole to one split (chosen by a hash of
its URI and the seed), so clips of one recording never land in two splits; neighbouring clips
of one recording are near-copies, and a test split that shares recordings with training says
nothing about new footage.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from avrl_batch.errors import DataError


@dataclass(frozen=True)
class IntervalOptions:
    """How ``avrl prepare`` cuts clips from an interval manifest."""

    window_s: float  # clip length: the model's window
    clip_stride_s: float | None = None  # None: half a window
    background: str | None = None  # a normal label sampled from the unannotated stretches
    background_ratio: float = 1.0  # background clips per annotated clip of a recording
    val_fraction: float = 0.1  # of the recordings, when the manifest has no split column
    test_fraction: float = 0.2
    seed: int = 0

    @property
    def stride_s(self) -> float:
        return self.clip_stride_s if self.clip_stride_s is not None else self.window_s / 2

    def __post_init__(self) -> None:
        if self.clip_stride_s is not None and not self.clip_stride_s > 0:
            raise DataError(f"--clip-stride must be > 0 seconds, got {self.clip_stride_s}")
        if not self.background_ratio >= 0:
            raise DataError(f"--background-ratio must be >= 0, got {self.background_ratio}")
        if not 0 <= self.val_fraction + self.test_fraction < 1:
            raise DataError("--val-fraction plus --test-fraction must be below 1")


@dataclass(frozen=True)
class Interval:
    recording: str  # the URI as the manifest gives it
    source: str  # resolved against the manifest's folder
    label: str
    start_s: float
    end_s: float
    split: str | None
    dark: bool


def is_interval_table(columns: list[str]) -> bool:
    return {"start_s", "end_s"} <= set(columns)


def intervals_of(
    rows: list[dict[str, Any]], manifest_uri: str, resolve: Callable[[str, str], str]
) -> list[Interval]:
    """The rows of an interval manifest; a row without a recording or with end <= start is a
    DataError naming it."""
    out = []
    for n, row in enumerate(rows, start=1):
        uri = row.get("uri") or row.get("source_uri")
        if not uri:
            raise DataError(f"{manifest_uri}: row {n} has no uri (or source_uri)")
        try:
            start, end = float(row["start_s"]), float(row["end_s"])
        except (TypeError, ValueError):
            raise DataError(
                f"{manifest_uri}: row {n} ({uri}): start_s/end_s are not numbers"
            ) from None
        if not 0 <= start < end:
            raise DataError(
                f"{manifest_uri}: row {n} ({uri}): need 0 <= start_s < end_s, got "
                f"{start:g}..{end:g}"
            )
        split = row.get("split")
        dark = row.get("dark")
        if isinstance(dark, str):
            dark = dark.strip().lower() in ("1", "true", "yes")
        out.append(
            Interval(
                recording=str(uri),
                source=resolve(manifest_uri, str(uri)),
                label=str(row["label"]).strip(),
                start_s=start,
                end_s=end,
                split=str(split).strip() if split else None,
                dark=bool(dark),
            )
        )
    if not out:
        raise DataError(f"{manifest_uri}: the manifest lists no intervals")
    return out


def recording_splits(recordings: list[str], opts: IntervalOptions) -> dict[str, str]:
    """Each recording whole in one split: ordered by a hash of (seed, URI), the first
    ``test_fraction`` to test, the next ``val_fraction`` to val (at least one each when there
    are three or more recordings, one val with two), the rest train."""
    ranked = sorted(
        set(recordings), key=lambda r: hashlib.sha1(f"{opts.seed}\x1f{r}".encode()).hexdigest()
    )
    n = len(ranked)
    n_test = max(1 if n >= 3 else 0, round(n * opts.test_fraction))
    n_val = max(1 if n >= 2 else 0, round(n * opts.val_fraction))
    n_test = min(n_test, max(0, n - 1 - n_val))
    splits = {}
    for i, rec in enumerate(ranked):
        splits[rec] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return splits


def _starts(start: float, end: float, window: float, stride: float) -> list[float]:
    """Clip starts inside [start, end): every ``stride`` while a whole window fits, or one
    window centred on an interval shorter than a window."""
    if end - start < window:
        return [round(max(0.0, (start + end) / 2 - window / 2), 3)]
    out, t = [], start
    while t + window <= end + 1e-9:
        out.append(round(t, 3))
        t += stride
    return out


def _background_starts(
    intervals: list[Interval], duration_s: float, window: float, stride: float
) -> list[float]:
    """Clip starts on a ``stride`` grid whose whole window touches no interval."""
    spans = sorted((iv.start_s, iv.end_s) for iv in intervals)
    out, t = [], 0.0
    while t + window <= duration_s + 1e-9:
        if not any(s < t + window and t < e for s, e in spans):
            out.append(round(t, 3))
        t += stride
    return out


def cut_clips(
    intervals: list[Interval],
    opts: IntervalOptions,
    duration_of: Callable[[str], float],
) -> list[dict[str, Any]]:
    """Clip rows {uri, source, start_s, label, split, dark, recording}: the annotated clips of
    every interval and, with ``opts.background``, that many times ``background_ratio`` clips
    of the background label per recording from its unannotated stretches (``duration_of``
    gives a recording's length; asked only then)."""
    splits = recording_splits([iv.recording for iv in intervals], opts)
    by_recording: dict[str, list[Interval]] = {}
    for iv in intervals:
        by_recording.setdefault(iv.recording, []).append(iv)
    rows: list[dict[str, Any]] = []
    for rec, ivs in by_recording.items():
        mine = []
        for iv in ivs:
            split = iv.split or splits[rec]
            for t in _starts(iv.start_s, iv.end_s, opts.window_s, opts.stride_s):
                mine.append(_clip(iv.recording, iv.source, t, iv.label, split, iv.dark))
        rows += mine
        if opts.background and opts.background_ratio > 0:
            free = _background_starts(ivs, duration_of(ivs[0].source), opts.window_s,
                                      opts.stride_s)
            n = min(len(free), round(len(mine) * opts.background_ratio))
            rng = random.Random(f"{opts.seed}\x1f{rec}")
            split = ivs[0].split or splits[rec]
            for t in sorted(rng.sample(free, n)):
                rows.append(_clip(rec, ivs[0].source, t, opts.background, split, False))
    return rows


def _clip(
    recording: str, source: str, start_s: float, label: str, split: str, dark: bool
) -> dict[str, Any]:
    return {
        "uri": f"{recording}#t={start_s:.3f}",
        "source": source,
        "start_s": start_s,
        "label": label,
        "split": split,
        "dark": dark,
        "recording": recording,
    }
