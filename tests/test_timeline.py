"""Timeline rule (windows -> events) and event matching, on hand-made timelines."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
from outputs import window_row

from avrl_batch.classes import SHADE
from avrl_batch.errors import ConfigError
from avrl_batch.scan.matching import match_events, temporal_iou
from avrl_batch.scan.timeline import (
    TimelineConfig,
    event_id,
    events_from_windows,
    jpeg_thumbnail,
)
from avrl_batch.schema import EVENTS, WINDOWS

T0 = datetime(2026, 3, 1, 8, 0, 0, tzinfo=timezone.utc)


def shade_events(windows: pa.Table, cfg: TimelineConfig | None = None, **kw) -> pa.Table:
    """The timeline of windows of a SHADE-class model."""
    return events_from_windows(windows, cfg, classes=SHADE, **kw)


def make_windows(
    tracks: dict[str, list[float]],
    *,
    window_s: float = 2.0,
    stride_s: float = 2.0,
    source: str = "s3://archive/cam01/cam01_20260301T080000Z.mp4",
    start: datetime | None = T0,
    skip: tuple[int, ...] = (),
) -> pa.Table:
    """Windows whose class probabilities follow ``tracks`` (label -> one value per window);
    the rest of each window's mass goes to normal1. ``skip`` leaves windows out (holes)."""
    n = len(next(iter(tracks.values())))
    rows = []
    for i in range(n):
        if i in skip:
            continue
        probs = np.zeros(len(SHADE.names), np.float32)
        for label, values in tracks.items():
            probs[SHADE.names.index(label)] = values[i]
        probs[SHADE.names.index("normal1")] += max(0.0, 1.0 - probs.sum())
        s = i * stride_s
        rows.append(
            window_row(
                source,
                "cam01",
                i,
                s,
                s + window_s,
                start,
                probs,
                model_id="model-abc",
                scan_id="scan-1",
            )
        )
    return pa.Table.from_pylist(rows, schema=WINDOWS)


def spans(events: pa.Table) -> list[tuple[str, float, float]]:
    return [(r["label"], r["start_s"], r["end_s"]) for r in events.to_pylist()]


def test_hysteresis_enter_and_exit_thresholds() -> None:
    # 0.5 never starts an event (< enter 0.6) but keeps one going (>= exit 0.4)
    fight = [0.1, 0.5, 0.7, 0.5, 0.45, 0.3, 0.5, 0.1]
    ev = shade_events(make_windows({"fight": fight}), TimelineConfig(merge_gap_s=0))
    assert ev.schema == EVENTS
    assert spans(ev) == [("fight", 4.0, 10.0)]  # windows 2..4
    row = ev.to_pylist()[0]
    assert row["n_windows"] == 3
    assert row["peak_score"] == pytest.approx(0.7)
    assert row["mean_score"] == pytest.approx((0.7 + 0.5 + 0.45) / 3)
    assert row["start_time"] == T0 + timedelta(seconds=4)
    assert row["end_time"] == T0 + timedelta(seconds=10)
    assert row["event_id"] == event_id(row["source_uri"], "fight", 4.0, "model-abc")
    assert (row["camera"], row["model_id"], row["scan_id"]) == ("cam01", "model-abc", "scan-1")


def test_merge_gap_joins_close_events_only() -> None:
    # runs at windows 1-2, 4-5 (gap 2 s) and 9 (gap 6 s)
    fight = [0.0, 0.9, 0.9, 0.1, 0.8, 0.9, 0.0, 0.0, 0.0, 0.9, 0.0]
    w = make_windows({"fight": fight})
    assert spans(shade_events(w, TimelineConfig(merge_gap_s=2.5))) == [
        ("fight", 2.0, 12.0),
        ("fight", 18.0, 20.0),
    ]
    merged = shade_events(w, TimelineConfig(merge_gap_s=2.5)).to_pylist()[0]
    assert merged["n_windows"] == 5  # the dip window is inside the event
    assert merged["mean_score"] == pytest.approx((0.9 + 0.9 + 0.1 + 0.8 + 0.9) / 5)
    # a gap equal to merge_gap_s does not merge (strictly below merges)
    assert len(shade_events(w, TimelineConfig(merge_gap_s=2.0))) == 3
    assert len(shade_events(w, TimelineConfig(merge_gap_s=100))) == 1


def test_overlapping_windows_never_give_overlapping_events_of_one_label() -> None:
    # window 4 s, stride 2 s: runs at windows 0-1 (0-6 s) and 3-4 (6-12 s) touch -> one event
    # even with merging disabled
    fight = [0.9, 0.9, 0.2, 0.9, 0.9]
    ev = shade_events(
        make_windows({"fight": fight}, window_s=4, stride_s=2), TimelineConfig(merge_gap_s=0)
    )
    assert spans(ev) == [("fight", 0.0, 12.0)]


def test_min_event_length_drops_short_events() -> None:
    run = [0.0, 0.9, 0.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.0]
    w = make_windows({"run": run})
    assert spans(shade_events(w, TimelineConfig(merge_gap_s=0, min_event_s=4.0))) == [
        ("run", 10.0, 16.0)
    ]
    assert len(shade_events(w, TimelineConfig(merge_gap_s=0, min_event_s=0.0))) == 2


def test_two_labels_may_overlap_and_both_are_reported() -> None:
    chase = [0.0, 0.7, 0.7, 0.45, 0.0, 0.0]
    fight = [0.0, 0.0, 0.1, 0.45, 0.7, 0.0]
    # at window 3 both are >= exit: chase 2-8 s and fight 8-10 s; make them really overlap with
    # window 4 s / stride 2 s
    ev = shade_events(
        make_windows({"chase": chase, "fight": fight}, window_s=4, stride_s=2),
        TimelineConfig(mode="class", merge_gap_s=0),
    )
    assert spans(ev) == [("chase", 2.0, 10.0), ("fight", 8.0, 12.0)]
    # the incident rule reports the stretch once, under the class with the most evidence
    ev = shade_events(
        make_windows({"chase": chase, "fight": fight}, window_s=4, stride_s=2),
        TimelineConfig(merge_gap_s=0),
    )
    assert spans(ev) == [("chase", 2.0, 12.0)]  # chase 1.85 over the windows, fight 1.25


def test_incident_rule_one_event_per_incident_with_the_majority_label() -> None:
    # a chase the model calls "run" in some windows (they sound the same), then the runners out
    # of sight for one window, then a scatter whose last window looks like an arrest
    chase = [0.0, 0.7, 0.3, 0.65, 0.0, 0.6, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    run = [0.0, 0.2, 0.6, 0.25, 0.1, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    scatter = [0.0] * 8 + [0.95, 0.8, 0.1, 0.0]
    arrest = [0.0] * 8 + [0.0, 0.1, 0.7, 0.0]
    w = make_windows({"chase": chase, "run": run, "scatter": scatter, "arrest": arrest})
    assert spans(shade_events(w)) == [("chase", 2.0, 12.0), ("scatter", 16.0, 22.0)]
    by_class = spans(shade_events(w, TimelineConfig(mode="class")))
    assert ("run", 4.0, 6.0) in by_class and ("arrest", 20.0, 22.0) in by_class
    assert len(by_class) == 4  # chase (merged over the gap), run, scatter, arrest
    ev = shade_events(w).to_pylist()[0]
    assert ev["peak_score"] == pytest.approx(0.7) and ev["n_windows"] == 5
    assert ev["mean_score"] == pytest.approx((0.7 + 0.3 + 0.65 + 0.0 + 0.6) / 5)


def test_incident_rule_starts_on_one_class_and_goes_on_while_anomalous() -> None:
    # window 1 is a confident run; windows 2-3 are split between run and chase (neither above
    # exit 0.4 alone, 0.5 together): the incident goes on, the per-class rule stops at window 1
    run = [0.0, 0.7, 0.25, 0.25, 0.0]
    chase = [0.0, 0.1, 0.25, 0.25, 0.0]
    w = make_windows({"run": run, "chase": chase})
    assert spans(shade_events(w)) == [("run", 2.0, 8.0)]
    assert spans(shade_events(w, TimelineConfig(mode="class"))) == [("run", 2.0, 4.0)]
    # anomaly mass spread over every class (0.1 each, 0.7 in all) starts nothing: a weak
    # model's hesitation in calm footage is not an incident
    spread = {c: [0.1] * 4 for c in SHADE.anomaly}
    assert shade_events(make_windows(spread)).num_rows == 0


def test_incident_thumbnail_comes_from_a_window_above_exit() -> None:
    # the event (windows 1-4) is a fight by its summed probability; window 2 has the most
    # "fight" (0.44) but is below exit (0.45) as a whole, a merged gap the scan made no
    # thumbnail for: the thumbnail is window 4's, the best fight among windows >= exit
    w = make_windows(
        {
            "knockdown": [0.0, 0.5, 0.0, 0.0, 0.15, 0.0],
            "fight": [0.0, 0.2, 0.44, 0.3, 0.35, 0.0],
            "shoot": [0.0, 0.0, 0.0, 0.5, 0.0, 0.0],
        }
    )
    thumbs = {1: b"w1", 3: b"w3", 4: b"w4"}
    ev = shade_events(w, TimelineConfig(enter=0.5, exit=0.45), thumbnails=thumbs)
    rows = [(e["label"], e["start_s"], e["end_s"], e["thumbnail"]) for e in ev.to_pylist()]
    assert rows == [("fight", 2.0, 10.0, b"w4")]
    assert ev["peak_score"][0].as_py() == pytest.approx(0.44)  # over every window of the event


def test_normal_classes_never_make_events() -> None:
    w = make_windows({"normal2": [0.95] * 6, "shoot": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]})
    ev = shade_events(w)
    assert ev.num_rows == 0 and ev.schema == EVENTS


def test_a_hole_in_the_windows_ends_an_event() -> None:
    fight = [0.9] * 10
    w = make_windows({"fight": fight}, skip=(4, 5, 6))  # 8-14 s not decoded
    assert spans(shade_events(w, TimelineConfig(merge_gap_s=1.0))) == [
        ("fight", 0.0, 8.0),
        ("fight", 14.0, 20.0),
    ]
    # ... unless the hole is shorter than the merge gap (then it is an ordinary merge)
    assert spans(shade_events(w, TimelineConfig(merge_gap_s=10.0))) == [("fight", 0.0, 20.0)]


def test_smoothing_removes_a_one_window_blip() -> None:
    shoot = [0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0]
    w = make_windows({"shoot": shoot})
    assert len(shade_events(w, TimelineConfig())) == 1
    assert len(shade_events(w, TimelineConfig(smooth_windows=3))) == 0


def test_smoothed_event_beside_its_spike_shows_the_spike() -> None:
    # a hole after window 1; smoothed over 3 windows, the spike in window 1 starts a run at
    # window 3 (mean .59 >= enter) whose own raw level (.39) is below exit, so the scan made no
    # thumbnail for it: the event shows the spike that set it off
    w = make_windows({"shoot": [0.0, 1.0, 0.0, 0.39, 0.39]}, skip=(2,))
    cfg = TimelineConfig(enter=0.55, exit=0.4, merge_gap_s=0.0, smooth_windows=3)
    ev = shade_events(w, cfg, thumbnails={1: b"jpeg-of-window-1"}).to_pylist()
    assert [(e["label"], e["start_s"], e["end_s"], e["thumbnail"]) for e in ev] == [
        ("shoot", 6.0, 8.0, b"jpeg-of-window-1")
    ]


def test_unknown_start_time_unsorted_rows_several_sources_and_thumbnails() -> None:
    a = make_windows({"arrest": [0.0, 0.8, 0.95, 0.0]}, source="/a.mp4", start=None)
    b = make_windows({"scatter": [0.9, 0.0, 0.0, 0.0]}, source="/b.mp4")
    shuffled = pa.concat_tables([b, a]).take(pa.array([7, 0, 5, 3, 6, 1, 4, 2]))
    thumbs = {2: b"jpeg-of-window-2", 0: b"jpeg-of-window-0"}
    ev = shade_events(shuffled, thumbnails=thumbs).to_pylist()
    assert [(e["source_uri"], e["label"], e["start_s"], e["end_s"]) for e in ev] == [
        ("/a.mp4", "arrest", 2.0, 6.0),
        ("/b.mp4", "scatter", 0.0, 2.0),
    ]
    assert ev[0]["start_time"] is None and ev[0]["end_time"] is None
    assert ev[0]["thumbnail"] == b"jpeg-of-window-2"  # the peak window
    asked: list[int] = []
    shade_events(a, thumbnails=lambda i: asked.append(i) or None)
    assert asked == [2]


def test_duplicate_windows_and_bad_config_are_rejected() -> None:
    w = make_windows({"fight": [0.9, 0.9]})
    with pytest.raises(ValueError, match="duplicate window_index"):
        shade_events(pa.concat_tables([w, w]))
    with pytest.raises(ConfigError):
        TimelineConfig(enter=0.3, exit=0.5)
    with pytest.raises(ConfigError, match="unknown timeline mode 'majority'"):
        TimelineConfig(mode="majority")
    assert shade_events(w.slice(0, 0)).schema == EVENTS


def test_jpeg_thumbnail_is_a_small_jpeg() -> None:
    from io import BytesIO

    from PIL import Image

    frame = np.zeros((240, 320, 3), np.uint8)
    frame[:, :160] = (220, 30, 30)
    frame[:, 160:] = (30, 30, 220)
    data = jpeg_thumbnail(frame, max_side=160)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    im = Image.open(BytesIO(data)).convert("RGB")
    assert im.size == (160, 120)
    r, g, b = im.getpixel((20, 60))
    assert r > 180 and b < 80
    r, g, b = im.getpixel((140, 60))
    assert b > 180 and r < 80


# ---- matching --------------------------------------------------------------------------


def test_iou() -> None:
    assert temporal_iou(0, 10, 0, 3) == pytest.approx(0.3)
    assert temporal_iou(0, 1, 2, 3) == 0.0
    assert temporal_iou(0, 4, 2, 6) == pytest.approx(2 / 6)


def test_match_counts_on_a_hand_made_timeline() -> None:
    truth = [
        ("v1.mp4", "fight", 10.0, 20.0),
        ("v1.mp4", "chase", 30.0, 40.0),
        ("v1.mp4", "shoot", 50.0, 52.0),
        ("v2.mp4", "fight", 10.0, 20.0),
    ]
    pred = [
        ("v1.mp4", "fight", 12.0, 22.0),  # IoU 8/12: TP
        ("v1.mp4", "fight", 14.0, 20.0),  # second pred on the same truth: FP
        ("v1.mp4", "fight", 30.0, 40.0),  # right time, wrong label: FP (and chase is FN)
        ("v2.mp4", "fight", 0.0, 3.0),  # wrong time: FP; v2 fight is FN
        ("file://v1.mp4", "shoot", 50.0, 52.0),  # file:// names the same source: TP
    ]
    r = match_events(pred, truth, iou=0.3)
    assert (r.tp, r.fp, r.fn) == (2, 3, 2)
    assert r.precision == pytest.approx(2 / 5)
    assert r.recall == pytest.approx(2 / 4)
    assert r.f1 == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    assert r.pairs == [(0, 0), (4, 2)]
    assert {k: (c.tp, c.fp, c.fn) for k, c in r.per_label.items()} == {
        "chase": (0, 0, 1),
        "fight": (1, 3, 1),
        "shoot": (1, 0, 0),
    }


def test_greedy_takes_the_best_iou_first() -> None:
    truth = [("v", "run", 0.0, 10.0)]
    pred = [("v", "run", 0.0, 5.0), ("v", "run", 0.0, 9.0)]  # IoU 0.5 then 0.9
    r = match_events(pred, truth)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0) and r.pairs == [(1, 0)]


def test_iou_exactly_at_threshold_matches() -> None:
    truth = [("v", "run", 0.0, 10.0)]
    assert match_events([("v", "run", 0.0, 3.0)], truth, iou=0.3).tp == 1  # IoU 0.3
    assert match_events([("v", "run", 0.0, 2.9)], truth, iou=0.3).tp == 0  # IoU 0.29


def test_empty_inputs() -> None:
    both = match_events([], [])
    assert (both.tp, both.fp, both.fn, both.precision, both.recall, both.f1) == (
        0,
        0,
        0,
        1.0,
        1.0,
        1.0,
    )
    none_found = match_events([], [("v", "run", 0.0, 1.0)])
    assert (none_found.fn, none_found.recall, none_found.f1) == (1, 0.0, 0.0)
    all_false = match_events([("v", "run", 0.0, 1.0)], [])
    assert (all_false.fp, all_false.precision, all_false.f1) == (1, 0.0, 0.0)


def test_match_accepts_event_and_truth_tables() -> None:
    w = make_windows({"fight": [0.0, 0.9, 0.9, 0.0]}, source="/x.mp4")
    pred = shade_events(w)
    truth = pa.table(
        {
            "source_uri": ["file:///x.mp4"],
            "camera": ["cam01"],
            "label": ["fight"],
            "start_s": [2.5],
            "end_s": [6.5],
        }
    )
    r = match_events(pred, truth)
    assert (r.tp, r.fp, r.fn, r.f1) == (1, 0, 0, 1.0)
