"""Partial sources: damage costs only the damaged span, on real media made here with PyAV.

A bad sector in the middle of an MP4 (its index intact) and a Matroska file cut short: the
decoder goes on past the corrupt packets, the stretch without decodable frames becomes an
unreadable span (seconds and UTC), the windows before and after it are written, and
``avrl query -t unreadable`` and the report show the span.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from badmedia import FPS, good_recording
from scanhelp import check_outputs, tiny_model

from avrl_batch.bench.damaged import damaged_packet_times, destroy_middle
from avrl_batch.cli import main
from avrl_batch.media import DecodeFailed, Truncated, iter_windows
from avrl_batch.media.video import UnreadableSpan
from avrl_batch.query import QueryFilters, run_query
from avrl_batch.report import build_report
from avrl_batch.scan import ScanConfig, run_scan

GOP = 10  # frames: 2 s at 5 fps, so the decoder resyncs within 2 s of the damage
START = datetime(2026, 4, 1, 8, 0, tzinfo=timezone.utc)


def damaged_mp4(path: Path, seconds: float, fraction: float) -> tuple[float, float]:
    """A recording with ``fraction`` of its bytes destroyed in the middle; the times of the
    first and last video packet hit."""
    good = good_recording(path.with_suffix(".good.mp4"), seconds, seed=5, gop=GOP)
    lo, hi = destroy_middle(good, path, fraction, seed=1)
    hit = damaged_packet_times(good, lo, hi)
    assert hit is not None
    good.unlink()
    return hit


def cut_mkv(path: Path, seconds: float, keep: float) -> Path:
    good = good_recording(path.with_suffix(".good.mkv"), seconds, seed=6, gop=GOP)
    path.write_bytes(good.read_bytes()[: int(good.stat().st_size * keep)])
    good.unlink()
    return path


def _windows(path: Path, spans: list[UnreadableSpan] | None) -> list:
    return list(iter_windows(path, 0.0, 1e9, window_s=2.0, stride_s=2.0, frames=4, size=16,
                             unreadable=spans))


def test_decoding_goes_on_past_corrupt_packets_and_records_the_span(tmp_path: Path) -> None:
    path = tmp_path / "d.mp4"
    first, last = damaged_mp4(path, 30.0, 0.01)
    spans: list[UnreadableSpan] = []
    windows = _windows(path, spans)
    assert [w.start_s for w in windows] == [2.0 * k for k in range(15)]  # every window
    assert len(spans) == 1, spans
    span = spans[0]
    assert span.reason == "DecodeFailed" and "could not be decoded" in span.message
    # from the first frame lost (the first packet hit, or the next one when the damage
    # spared enough of it to decode) to the next keyframe after the last packet hit
    assert first - 1e-6 <= span.start_s <= first + 1 / FPS + 1e-6
    assert last < span.end_s <= last + GOP / FPS + 1e-6
    # without a list for the spans, damage still fails as it always did
    with pytest.raises(DecodeFailed, match="corrupt data"):
        _windows(path, None)


def test_a_video_cut_short_is_a_truncated_tail_span(tmp_path: Path) -> None:
    path = cut_mkv(tmp_path / "t.mkv", 20.0, 0.6)
    spans: list[UnreadableSpan] = []
    windows = _windows(path, spans)
    assert len(spans) == 1 and spans[0].reason == "Truncated", spans
    assert spans[0].end_s == pytest.approx(20.0) and 8.0 < spans[0].start_s < 16.0
    assert "cut short" in spans[0].message
    assert windows[0].start_s == 0.0
    with pytest.raises(Truncated):
        _windows(path, None)


def test_scan_writes_the_good_windows_and_reports_the_unreadable_spans(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec, out = tmp_path / "rec", tmp_path / "out"
    damaged = rec / "cam01" / "cam01_20260401T080000Z.mp4"
    damaged.parent.mkdir(parents=True)
    first, last = damaged_mp4(damaged, 40.0, 0.01)
    cut = cut_mkv(rec / "cam02" / "cam02_20260401T080000Z.mkv", 20.0, 0.6)
    model = tmp_path / "tiny.avrl"
    tiny_model(model)
    s = run_scan(ScanConfig(source=str(rec), model=str(model), out=str(out), segment_s=8.0,
                            batch_size=8))
    assert (s.sources_ok, s.sources_failed, s.sources_partial) == (2, 0, 2), s.errors
    assert s.unreadable_spans == 2
    got = check_outputs(str(out), [str(damaged), str(cut)])  # no window inside a span

    # the damaged middle: one span around the packets hit, windows on both sides of it
    (span,) = got[str(damaged)]["unreadable"].to_pylist()
    assert span["reason"] == "DecodeFailed" and span["camera"] == "cam01"
    assert first - 1e-6 <= span["start_s"] <= first + 1 / FPS + 1e-6
    assert last < span["end_s"] <= last + GOP / FPS + 1e-6
    assert span["start_time"] == START + timedelta(seconds=span["start_s"])
    starts = got[str(damaged)]["windows"]["start_s"].to_pylist()
    lost = [2.0 * k for k in range(20) if 2.0 * k < span["end_s"] and 2.0 * k + 2 > span["start_s"]]
    assert starts == [2.0 * k for k in range(20) if 2.0 * k not in lost]
    assert len(lost) <= 3  # ~1.4 s of damage costs at most its own windows and one GOP
    # the cut file: the windows before the cut, a Truncated span to the declared end
    (tail,) = got[str(cut)]["unreadable"].to_pylist()
    assert tail["reason"] == "Truncated" and tail["end_s"] == pytest.approx(20.0)
    assert got[str(cut)]["windows"].num_rows >= 4
    assert max(got[str(cut)]["windows"]["end_s"].to_pylist()) <= tail["start_s"]

    # query lists them (camera and time filters apply; a label does not)
    rows = run_query(str(out), table="unreadable").to_pylist()
    assert [(r["source_uri"], r["start_s"]) for r in rows] == sorted(
        [(str(damaged), span["start_s"]), (str(cut), tail["start_s"])], key=lambda x: x[1]
    )  # in time order
    only = run_query(str(out), table="unreadable", filters=QueryFilters(cameras=("cam02",)))
    assert only["source_uri"].to_pylist() == [str(cut)]
    main(["query", str(out), "-t", "unreadable", "--format", "json"])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {p["reason"] for p in printed} == {"DecodeFailed", "Truncated"}
    with pytest.raises(SystemExit):
        main(["query", str(out), "-t", "unreadable", "--label", "fight"])
    assert "no label or score" in capsys.readouterr().err

    # the report: red bars on each camera's recorded lane, and the list of spans
    page = build_report(str(out)).html
    assert page.count('<rect class="unreadable"') == 2
    assert "Unreadable spans (2)" in page and str(cut) in page
