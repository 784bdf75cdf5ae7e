"""Window probabilities -> events: the timeline rule of a scan (pure functions, no Ray).

Two rules (``TimelineConfig.mode``); both work per source on windows ordered by ``start_s``.

``incident`` (default): one event per incident, labelled by the evidence over all of it.

1. Track ``a[i]`` = the window's anomaly probability, the sum over the model's anomaly
   classes (one minus the normal classes' share; ``classes.ClassSet``), and ``m[i]`` = its
   most likely anomaly class's probability. Optionally smooth both (step 1 of ``class``).
2. Hysteresis: an event starts where one anomaly class is confident (``m >= enter``) and goes
   on while the window stays anomalous (``a >= exit``), whichever anomaly class it looks like;
   holes, merge and minimum length as steps 2-4 below. (Starting on ``a`` alone let a weak
   model's spread-out anomaly mass open long false incidents in calm footage.)
3. The event's label is the anomaly class with the largest summed probability over the event's
   windows; its ``peak_score``/``mean_score`` are that class's probabilities over them.

An incident seen as "chase" in some windows and "run" in others (the two sound the same), or a
scatter whose last window looks like an arrest, is one event with the majority label instead of
several short events of mixed labels; on the bench recordings this rule took event F1 from 0.65
to 0.82 with the same model and windows (README, "Event quality"). Two incidents closer than
``merge_gap_s`` become one event (label by the majority).

``class``: classes tracked independently, for each anomaly class c:

1. Track ``p_c[i]`` = probability of c in window i, windows ordered by ``start_s``.
   Optionally smooth it with a centred moving mean over ``smooth_windows`` windows (the
   mean uses only the windows that exist at the edges).
2. Hysteresis: a run starts at the first window with ``p_c >= enter`` and goes on while
   ``p_c >= exit``. A run also ends at a hole in the windows (the next window starts after
   the previous one ends, e.g. a segment that could not be decoded), so an event never
   spans footage that was not looked at.
3. Merge: runs of the same class whose gap ``next.start_s - prev.end_s`` is below
   ``merge_gap_s`` become one event. Runs that overlap or touch in time (gap <= 0, which
   happens when windows overlap, stride < window) always merge: one class never has two
   overlapping events in a source.
4. Drop events shorter than ``min_event_s`` (``end_s - start_s``, measured after merging).

   Events of two different classes may overlap in time (e.g. "chase" turning into "fight");
   both are reported.

In both rules an event spans from its first window's ``start_s``/``start_time`` to its last
window's ``end_s``/``end_time``. ``peak_score`` and ``mean_score`` are the *raw* (unsmoothed)
probabilities of the event's class over every window inside the event (windows in merged gaps
included, so a merged event's mean shows its dip); ``n_windows`` counts those windows.
The thumbnail is that of the peak window (``incident``: the peak among the windows whose
anomaly probability is at or above ``exit``; a scan makes thumbnails only for those; when
smoothing started an event beside the raw window that set it off and none of its own windows
reaches ``exit``, that nearby window's).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from avrl_batch.classes import ClassSet
from avrl_batch.errors import ConfigError
from avrl_batch.schema import EVENTS

TIMELINE_MODES = ("incident", "class")
DEFAULT_ENTER = 0.6  # probability at which an event starts
DEFAULT_EXIT = 0.4  # probability below which it ends
Thumbnails = Callable[[int], "bytes | None"] | Mapping[int, "bytes | None"] | None


@dataclass(frozen=True)
class TimelineConfig:
    """How window probabilities become events (see the module docstring for the rules)."""

    # "incident": one event per stretch of anomalous windows, labelled by the majority class;
    # "class": each anomaly class tracked on its own (events of different classes may overlap)
    mode: str = "incident"
    # start an event when the class (incident: anomaly) probability reaches this ...
    enter: float = DEFAULT_ENTER
    # ... and keep it while it stays at or above this (hysteresis: no flicker around one value)
    exit: float = DEFAULT_EXIT
    # events closer than this (seconds between one's end and the next's start; same class in
    # "class" mode) are one event: a chase does not become two because the runners were out of
    # sight for a window or two
    merge_gap_s: float = 4.0
    # events shorter than this are dropped; 0 keeps single-window events (a single window
    # is already window_s long, 2 s for tiny/small, 4 s for paper)
    min_event_s: float = 0.0
    # centred moving mean over this many windows before thresholding; 1 = no smoothing
    smooth_windows: int = 1

    def __post_init__(self) -> None:
        # messages name the `avrl scan` options: `--enter 0.3` alone is below the default
        # --exit, and the user must learn that --exit is the other half
        if self.mode not in TIMELINE_MODES:
            raise ConfigError(
                f"unknown timeline mode {self.mode!r}; choose one of {', '.join(TIMELINE_MODES)}"
            )
        if not 0.0 <= self.exit <= self.enter <= 1.0:
            raise ConfigError(
                f"--exit {self.exit:g} and --enter {self.enter:g} must satisfy "
                f"0 <= --exit <= --enter <= 1 (defaults: --enter {DEFAULT_ENTER:g}, "
                f"--exit {DEFAULT_EXIT:g}); set both"
            )
        for name, value in (("--merge-gap", self.merge_gap_s), ("--min-event", self.min_event_s)):
            if not value >= 0:
                raise ConfigError(f"{name} must be a number of seconds >= 0, got {value}")
        if self.smooth_windows < 1:
            raise ConfigError(
                f"--smooth must be a number of windows >= 1, got {self.smooth_windows}"
            )


def timeline_from_options(
    mode: str = "incident",
    *,
    enter: float | None = None,
    exit: float | None = None,  # noqa: A002 - the option's name
    merge_gap_s: float | None = None,
    min_event_s: float | None = None,
    smooth_windows: int | None = None,
) -> TimelineConfig:
    """The TimelineConfig of command-line options; an option left None takes its default."""
    given = {
        "enter": enter,
        "exit": exit,
        "merge_gap_s": merge_gap_s,
        "min_event_s": min_event_s,
        "smooth_windows": smooth_windows,
    }
    return TimelineConfig(mode=mode, **{k: v for k, v in given.items() if v is not None})


def event_id(
    source_uri: str, label: str, start_s: float, model_id: str, version: str = ""
) -> str:
    """Deterministic id: a rerun of the same scan names its events the same; another
    ``version`` of the file (its ETag, or size + mtime) names them apart."""
    key = f"{source_uri}\x1f{label}\x1f{start_s:.3f}\x1f{model_id}"
    if version:
        key += f"\x1f{version}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def window_level(anomaly_probs: np.ndarray, mode: str) -> np.ndarray:
    """How anomalous each window is under ``mode``, (N, anomaly classes) -> (N,): the summed
    anomaly share ("incident") or the top anomaly class ("class"). The scan makes a thumbnail
    for a window whose level reaches the exit threshold, and an event's thumbnail comes from one
    of those windows."""
    return anomaly_probs.sum(axis=1) if mode == "incident" else anomaly_probs.max(axis=1)


def _smooth(p: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or len(p) == 0:
        return p
    kernel = np.ones(k)
    # divide by the number of windows actually under the kernel so edges are not pulled to 0
    return np.convolve(p, kernel, mode="same") / np.convolve(np.ones_like(p), kernel, mode="same")


def _runs(
    p: np.ndarray,
    hole_after: np.ndarray,
    enter: float,
    exit_: float,
    start: np.ndarray | None = None,
) -> list[list[int]]:
    """Hysteresis runs as [first, last] window positions (inclusive): a run starts where
    ``start`` (default ``p``) reaches ``enter`` and goes on while ``p`` stays >= ``exit_``."""
    start = p if start is None else start
    runs: list[list[int]] = []
    on = False
    for i, v in enumerate(p):
        if on and v >= exit_:
            runs[-1][1] = i
        elif start[i] >= enter:
            runs.append([i, i])
            on = True
        else:
            on = False
        if hole_after[i]:
            on = False
    return runs


def _thumbnail(thumbnails: Thumbnails, window_index: int) -> bytes | None:
    if thumbnails is None:
        return None
    if isinstance(thumbnails, Mapping):
        return thumbnails.get(window_index)
    return thumbnails(window_index)


@dataclass(frozen=True)
class _Windows:
    """One source's windows ordered by start_s (then window_index), as arrays."""

    index: np.ndarray  # (N,) window_index
    start_s: np.ndarray  # (N,)
    end_s: np.ndarray  # (N,)
    start_time: list
    end_time: list
    probs: np.ndarray  # (N, classes) float64
    hole_after: np.ndarray  # (N,) bool: the next window starts after this one ended
    source_uri: str
    camera: str | None
    model_id: str
    scan_id: str
    classes: ClassSet

    @classmethod
    def of(cls, windows: pa.Table, classes: ClassSet) -> _Windows:
        order = np.lexsort(
            (windows["window_index"].to_numpy(), windows["start_s"].to_numpy())
        )  # by start_s, then window_index
        w = windows.take(pa.array(order))
        idx = w["window_index"].to_numpy()
        if len(np.unique(idx)) != len(idx):
            raise ValueError(
                f"duplicate window_index in {w['source_uri'][0].as_py()}: "
                "overlapping segments must be de-duplicated before the timeline"
            )
        start_s, end_s = w["start_s"].to_numpy(), w["end_s"].to_numpy()
        probs = np.asarray(w["probs"].to_pylist(), dtype=np.float64)  # (N windows, classes)
        if probs.ndim != 2 or probs.shape[1] != len(classes):
            raise ValueError(
                f"probs must have {len(classes)} values per window ({', '.join(classes.names)})"
            )
        return cls(
            index=idx,
            start_s=start_s,
            end_s=end_s,
            start_time=w["start_time"].to_pylist(),
            end_time=w["end_time"].to_pylist(),
            probs=probs,
            hole_after=np.append(start_s[1:] > end_s[:-1] + 1e-9, True),
            source_uri=w["source_uri"][0].as_py(),
            camera=w["camera"][0].as_py(),
            model_id=w["model_id"][0].as_py(),
            scan_id=w["scan_id"][0].as_py(),
            classes=classes,
        )


def _spans(
    w: _Windows, cfg: TimelineConfig, track: np.ndarray, start: np.ndarray | None = None
) -> list[tuple[int, int]]:
    """[first, last] windows of the merged, long-enough runs of ``track`` (N,), started
    where ``start`` (default ``track``) reaches enter."""
    k = cfg.smooth_windows
    runs = _runs(
        _smooth(track, k),
        w.hole_after,
        cfg.enter,
        cfg.exit,
        None if start is None else _smooth(start, k),
    )
    merged: list[list[int]] = []
    for run in runs:
        if merged:
            gap = w.start_s[run[0]] - w.end_s[merged[-1][1]]
            if gap <= 0 or gap < cfg.merge_gap_s:
                merged[-1][1] = run[1]
                continue
        merged.append(run)
    return [
        (first, last)
        for first, last in merged
        if w.end_s[last] - w.start_s[first] >= cfg.min_event_s
    ]


def _found(w: _Windows, cfg: TimelineConfig) -> list[tuple[str, int, int]]:
    """(label, first, last window) of each event under ``cfg.mode``."""
    anomaly = w.classes.anomaly
    part = w.probs[:, w.classes.anomaly_index]  # (N, anomaly classes)
    found: list[tuple[str, int, int]] = []
    if cfg.mode == "incident":
        for first, last in _spans(w, cfg, window_level(part, "incident"), start=part.max(axis=1)):
            votes = part[first : last + 1].sum(axis=0)  # (anomaly classes,)
            found.append((anomaly[int(np.argmax(votes))], first, last))
    else:
        for label in anomaly:
            track = w.probs[:, w.classes.index_of(label)]  # (N,)
            found += [(label, f, la) for f, la in _spans(w, cfg, track)]
    return found


def _incident_thumbnail_window(
    w: _Windows, cfg: TimelineConfig, first: int, last: int, scores: np.ndarray, peak: int
) -> int:
    """The window whose thumbnail an incident shows: the peak among the windows at or above
    exit (the scan makes thumbnails only for those; a window in a merged gap is below it)."""
    part = w.probs[:, w.classes.anomaly_index]  # (N, anomaly classes)
    level = window_level(part[first : last + 1], "incident")  # (n,)
    if (level >= cfg.exit).any():
        return first + int(np.argmax(np.where(level >= cfg.exit, scores, -1.0)))
    # smoothing can start a run beside the raw window that set it off (a lone spike spread
    # over its neighbours): show that window, the nearest one above exit within the
    # smoothing reach
    reach = cfg.smooth_windows // 2
    lo, hi = max(first - reach, 0), min(last + reach, len(part) - 1)
    near = window_level(part[lo : hi + 1], "incident")  # (m,)
    if (near >= cfg.exit).any():
        return lo + int(np.argmax(np.where(near >= cfg.exit, near, -1.0)))
    return peak


def _events_one_source(
    windows: pa.Table, cfg: TimelineConfig, classes: ClassSet, thumbnails: Thumbnails,
    version: str,
) -> list[dict]:
    w = _Windows.of(windows, classes)
    rows: list[dict] = []
    for label, first, last in _found(w, cfg):
        s, e = float(w.start_s[first]), float(w.end_s[last])
        scores = w.probs[first : last + 1, classes.index_of(label)]  # raw, (n,)
        peak = first + int(np.argmax(scores))
        if cfg.mode == "incident":
            peak = _incident_thumbnail_window(w, cfg, first, last, scores, peak)
        rows.append(
            {
                "event_id": event_id(w.source_uri, label, s, w.model_id, version),
                "source_uri": w.source_uri,
                "camera": w.camera,
                "label": label,
                "start_s": s,
                "end_s": e,
                "start_time": w.start_time[first],
                "end_time": w.end_time[last],
                "peak_score": float(scores.max()),
                "mean_score": float(scores.mean()),
                "n_windows": last - first + 1,
                "thumbnail": _thumbnail(thumbnails, int(w.index[peak])),
                "model_id": w.model_id,
                "scan_id": w.scan_id,
            }
        )
    return rows


def events_from_windows(
    windows: pa.Table,
    cfg: TimelineConfig | None = None,
    *,
    classes: ClassSet,
    thumbnails: Thumbnails = None,
    version: str = "",
) -> pa.Table:
    """Events (EVENTS schema) from window rows (WINDOWS schema, any order) of a model with
    ``classes`` (the order of ``probs``; events are labelled with its anomaly classes).

    ``windows`` normally holds one source; several are handled one by one. ``thumbnails``
    gives the JPEG of a window by its ``window_index`` (a mapping or a callable; it is only
    asked for peak windows). ``version`` is the source's listed version, part of each
    ``event_id``. Rows are ordered by source, start_s, label.
    """
    cfg = cfg or TimelineConfig()
    rows: list[dict] = []
    if windows.num_rows:
        for source in pc.unique(windows["source_uri"]).to_pylist():
            one = windows.filter(pc.equal(windows["source_uri"], source))
            rows.extend(_events_one_source(one, cfg, classes, thumbnails, version))
    rows.sort(key=lambda r: (r["source_uri"], r["start_s"], r["label"]))
    return pa.Table.from_pylist(rows, schema=EVENTS)


def jpeg_thumbnail(frame: np.ndarray, max_side: int = 160, *, quality: int = 5) -> bytes:
    """A small JPEG of an RGB frame (H, W, 3) uint8, longest side ``max_side``.

    Encoded with FFmpeg's MJPEG encoder through PyAV; ``quality`` is its qscale (2 best,
    31 worst).
    """
    import av

    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 frame, got {frame.shape} {frame.dtype}")
    h, w = frame.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    # yuvj420p needs even sides
    tw, th = max(2, int(round(w * scale)) // 2 * 2), max(2, int(round(h * scale)) // 2 * 2)
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = tw, th, "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    ctx.qscale = quality  # fixed-quality mode: FF_QP2LAMBDA * qscale
    src = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    out = src.reformat(width=tw, height=th, format="yuvj420p")
    out.pts = 0
    packets = list(ctx.encode(out)) + list(ctx.encode(None))
    return b"".join(bytes(p) for p in packets)
