"""Operating points without rescanning: the timeline thresholds swept over stored windows.

A scan keeps every window's class probabilities (the windows table), so another ``--enter``,
``--exit`` or ``--min-event`` needs no decoding and no model: the timeline rule
(``timeline.events_from_windows``) runs again on the stored windows for each setting, and each
setting's events are matched against ground truth as ``avrl scan --truth`` matches them
(``matching.match_events``, same source and label, temporal IoU >= 0.3). A security team picks
a threshold by the recall it gets at a false-alarm rate it can staff: false alarms (unmatched
events) per camera-hour of scanned footage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from avrl_batch.classes import ClassSet
from avrl_batch.errors import ConfigError
from avrl_batch.scan.matching import SCAN_IOU, match_events, truth_events
from avrl_batch.scan.timeline import TimelineConfig, events_from_windows

DEFAULT_ENTERS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_EXITS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MAX_FALSE_ALARMS_PER_HOUR = 1.0  # the operating point's budget


@dataclass(frozen=True)
class OperatingPoint:
    """One timeline setting's event quality on the scanned footage."""

    enter: float
    exit: float
    min_event_s: float
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int
    false_alarms_per_hour: float


@dataclass(frozen=True)
class TuneResult:
    model_id: str
    camera_hours: float
    sources: int
    truth_events: int
    iou: float
    timeline: TimelineConfig  # the scan's own setting (mode, merge gap, smoothing kept)
    points: list[OperatingPoint]
    best: OperatingPoint | None  # best recall at <= max_false_alarms per camera-hour
    max_false_alarms: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timeline"] = asdict(self.timeline)
        return d


def tune(
    out: str,
    truth: str,
    *,
    model_id: str | None = None,
    enters: Sequence[float] = DEFAULT_ENTERS,
    exits: Sequence[float] = DEFAULT_EXITS,
    min_events: Sequence[float] = (0.0,),
    iou: float = SCAN_IOU,
    max_false_alarms: float = MAX_FALSE_ALARMS_PER_HOUR,
    endpoint_url: str | None = None,
) -> TuneResult:
    """Every (enter, exit <= enter, min event) setting's events from the stored windows of
    ``model_id`` (default: the model of the latest scan) in the scan output ``out``, scored
    against ``truth`` (the table ``avrl scan --truth`` reads)."""
    from avrl_batch.query import OutputTree, QueryFilters

    tree = OutputTree.open(out, endpoint_url=endpoint_url)
    manifest = _scan_manifest(tree.manifests(), model_id, out)
    model_id = str(manifest["model_id"])
    classes = ClassSet.from_record(manifest)
    base = _scan_timeline(manifest)
    windows = tree.read_table("windows", QueryFilters())
    windows = windows.filter(_is(windows, "model_id", model_id))
    sources = sorted(set(windows["source_uri"].to_pylist()))
    if not sources:
        raise ConfigError(f"{out} holds no windows of model {model_id}: scan with it first")
    gt = truth_events(truth, endpoint_url, sources=sources)
    hours = footage_hours(windows)
    points = []
    for min_event in min_events:
        for enter in enters:
            for exit_ in (x for x in exits if x <= enter):
                tl = replace(base, enter=enter, exit=exit_, min_event_s=min_event)
                events = events_from_windows(windows, tl, classes=classes)
                m = match_events(events, gt, iou=iou)
                points.append(OperatingPoint(
                    enter=enter, exit=exit_, min_event_s=min_event,
                    precision=round(m.precision, 4), recall=round(m.recall, 4),
                    f1=round(m.f1, 4), tp=m.tp, fp=m.fp, fn=m.fn,
                    false_alarms_per_hour=round(m.fp / hours, 3) if hours else float("inf"),
                ))
    if not points:
        raise ConfigError("no setting to try: give --enter values at or above an --exit value")
    within = [p for p in points if p.false_alarms_per_hour <= max_false_alarms]
    best = max(within, key=lambda p: (p.recall, p.precision, p.enter), default=None)
    return TuneResult(model_id, round(hours, 4), len(sources), gt.num_rows, iou, base, points,
                      best, max_false_alarms)


def footage_hours(windows: Any) -> float:
    """Hours of footage the windows cover (overlapping windows counted once), over all
    sources: the camera-hours of the scan."""
    total = 0.0
    src = np.asarray(windows["source_uri"].to_pylist(), dtype=object)
    start, end = windows["start_s"].to_numpy(), windows["end_s"].to_numpy()
    for s in set(src):
        mine = src == s
        order = np.argsort(start[mine])
        a, b = start[mine][order], end[mine][order]  # (n,)
        reach = np.maximum.accumulate(b)  # the furthest any earlier window got
        covered = b[0] - a[0] + np.clip(b[1:] - np.maximum(a[1:], reach[:-1]), 0, None).sum()
        total += float(covered)
    return total / 3600.0


def _is(table: Any, column: str, value: str) -> Any:
    import pyarrow.compute as pc

    return pc.equal(table[column], value)


def _scan_manifest(
    manifests: list[dict[str, Any]], model_id: str | None, out: str
) -> dict[str, Any]:
    """The latest scan manifest of ``model_id`` (any model when None)."""
    mine = [m for m in manifests if model_id is None or m.get("model_id") == model_id]
    if not mine:
        if model_id is None:
            raise ConfigError(
                f"no scan manifest under {out}: tune reads the output of a finished `avrl scan`"
            )
        have = ", ".join(sorted({str(m.get("model_id")) for m in manifests})) or "no model"
        raise ConfigError(f"no scan of model {model_id} under {out}; its scans are of {have}")
    return max(mine, key=lambda m: str(m.get("scan_id")))


def _scan_timeline(manifest: dict[str, Any]) -> TimelineConfig:
    """The scan's own timeline setting (mode, merge gap, smoothing), defaults if unrecorded."""
    recorded = (manifest.get("config") or {}).get("timeline") or {}
    known = set(TimelineConfig.__dataclass_fields__)
    return TimelineConfig(**{k: v for k, v in recorded.items() if k in known})
