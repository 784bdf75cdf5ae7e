"""The archive scan: naming, segments, decode/assembly (no Ray), then real scans on a local
Ray over a local folder and a moto S3 bucket, reruns, and a driver killed midway."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scanhelp import (
    check_outputs,
    make_archive,
    output_files,
    recording,
    tiny_model,
)

from avrl_batch import storage
from avrl_batch.classes import SHADE
from avrl_batch.errors import ConfigError
from avrl_batch.scan import ScanConfig, TimelineConfig, run_scan, sink
from avrl_batch.scan.assemble import SourceAssembler
from avrl_batch.scan.decode import decode_segment
from avrl_batch.scan.naming import (
    date_partition,
    safe_component,
    source_key,
    source_name,
)
from avrl_batch.scan.plan import Segment, SourceTask, WindowSpec, probe_source, segment_ranges
from avrl_batch.scan.timeline import events_from_windows

UTC = timezone.utc


# ---------------------------------------------------------------------------------------------
# naming


def test_camera_and_start_from_path() -> None:
    n = source_name("s3://b/archive/cam01/2026-03-01/cam01_20260301T080000Z.mp4")
    assert n.camera == "cam01" and n.start_time == datetime(2026, 3, 1, 8, tzinfo=UTC)
    # flat archive: the looser file-name pattern
    n = source_name("/data/gate-3_20260302T120000Z.mkv")
    assert n.camera == "gate-3" and n.start_time == datetime(2026, 3, 2, 12, tzinfo=UTC)
    # nothing in the name: the container's creation time (converted to UTC) is the start
    ct = datetime(2026, 3, 1, 10, tzinfo=timezone.utc)
    n = source_name("/data/misc/lobby.mp4", creation_time=ct)
    assert n.camera is None and n.start_time == ct
    # a custom pattern with named groups
    n = source_name(
        "s3://b/site=paris/dev=77/rec-20260101T000000.mp4",
        r"dev=(?P<camera>\d+)/rec-(?P<start>\d{8}T\d{6})",
    )
    assert n.camera == "77" and n.start_time == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ConfigError, match="camera"):
        ScanConfig(source="x", model="m", out="o", camera_pattern=r"(?P<cam>\w+)")


def test_keys_are_deterministic_and_safe() -> None:
    k = source_key("s3://b/cam01/cam01_20260301T080000Z.mp4", "etag1", "avrl-tiny-1")
    assert k == source_key("s3://b/cam01/cam01_20260301T080000Z.mp4", "etag1", "avrl-tiny-1")
    assert k.startswith("cam01_20260301T080000Z-")
    assert k != source_key("s3://b/cam01/cam01_20260301T080000Z.mp4", "etag2", "avrl-tiny-1")
    assert k != source_key("s3://b/cam01/cam01_20260301T080000Z.mp4", "etag1", "avrl-tiny-2")
    hostile = source_key("s3://b/../../etc/pa%2e%2e/..\\x.mp4", "v", "m")
    assert "/" not in hostile and ".." not in hostile and "\\" not in hostile
    for cam in ("../../x", "a/b", "a=b", "..", "", None):
        part = safe_component(cam)
        assert part and "/" not in part and "=" not in part and part not in (".", "..")
        storage.join("/tmp/out", "events", f"camera={part}", "k.parquet")  # accepted
    assert date_partition(None) == "unknown"
    assert date_partition(datetime(2026, 3, 1, 23, 30, tzinfo=UTC)) == "2026-03-01"


# ---------------------------------------------------------------------------------------------
# segments


@pytest.mark.parametrize(
    "duration,stride,segment", [(50.0, 2.0, 20.0), (86400.0, 2.0, 300.0), (7.3, 1.5, 4.0)]
)
def test_segments_are_window_aligned_and_cover_every_window_once(
    duration: float, stride: float, segment: float
) -> None:
    ranges = segment_ranges(duration, stride, segment)
    starts = [i * stride for i in range(math.ceil(duration / stride))]  # every window start
    owners = [sum(a <= s < b for a, b in ranges) for s in starts]
    assert owners == [1] * len(starts)
    for a, b in ranges:
        assert abs(a / stride - round(a / stride)) < 1e-9  # boundaries on window starts
        assert b - a <= max(segment, stride) + 1e-9
    assert ranges[-1][1] == duration
    assert segment_ranges(None, stride, segment) == [(0.0, math.inf)]
    assert segment_ranges(0.0, stride, segment) == [(0.0, 0.0)]  # one (empty) segment


def test_short_sources_share_decode_tasks_and_long_segments_keep_their_own() -> None:
    """pack_segments: consecutive segments up to the target footage seconds (and the count
    cap) share a decode task; every segment is in exactly one pack, in order; a segment as
    long as the target, or of unknown length, is a pack of its own."""
    from avrl_batch.scan.pipeline import pack_segments

    short = [Segment(f"k{i}", f"/a/{i}.mp4", 0, 1, 0.0, 2.0) for i in range(100)]
    packs = pack_segments(short, 10.0)
    assert [len(p) for p in packs] == [5] * 20
    assert [s for p in packs for s in p] == short
    assert [len(p) for p in pack_segments(short, 1000.0, max_segments=64)] == [64, 36]
    long = [Segment("L", "/a/L.mp4", i, 3, 300.0 * i, 300.0 * (i + 1)) for i in range(3)]
    unknown = Segment("U", "/a/U.mkv", 0, 1, 0.0, math.inf)
    packs = pack_segments([*long, short[0], unknown, short[1]], 300.0)
    assert [len(p) for p in packs] == [1, 1, 1, 1, 1, 1]


def test_decode_by_segments_equals_one_pass(tmp_path: Path) -> None:
    """Windows decoded segment by segment are exactly the windows of one pass over the file:
    the same indices, none twice, the same frames (a window near a seam is decoded whole)."""
    path = str(recording(tmp_path / "cam01_20260301T080000Z.mp4", 21, seed=7))
    spec = WindowSpec(window_s=2.0, stride_s=1.5, frames=4, size=32, audio_examples=2)
    task = probe_source(path, "v", 0, "k", stride_s=spec.stride_s, segment_s=6.0)
    assert isinstance(task, SourceTask) and len(task.segments) == 4  # 0, 6, 12, 18

    def rows(segs: list[Segment]) -> dict[int, dict]:
        got: dict[int, dict] = {}
        for seg in segs:
            out = list(decode_segment(seg.to_row(), spec))
            assert out[-1]["kind"] == "done" and out[-1]["n_windows"] == len(out) - 1
            for r in out[:-1]:
                assert r["window_index"] not in got
                got[r["window_index"]] = r
        return got

    split = rows(list(task.segments))
    whole = rows([Segment("k", path, 0, 1, 0.0, task.duration_s)])
    assert sorted(split) == sorted(whole) == list(range(14))  # starts 0, 1.5, ..., 19.5
    for i in whole:
        assert split[i]["end_s"] == whole[i]["end_s"]
        np.testing.assert_array_equal(split[i]["frames"], whole[i]["frames"])
        assert split[i]["frames"].shape == (4, 32, 32, 3)
        assert split[i]["logmel"].shape == (2, 96, 64) and split[i]["has_audio"]


def test_segments_past_the_audio_end_take_the_missing_audio_path(tmp_path: Path) -> None:
    """A microphone that died after 7 s of a 30-s recording: the scan's window rows after it
    say has_audio=False (the model's missing-audio vector, not zero-filled log-mel)."""
    path = str(recording(tmp_path / "cam01_20260301T080000Z.mp4", 30, seed=5, audio_s=7.0))
    spec = WindowSpec(window_s=2.0, stride_s=2.0, frames=4, size=32, audio_examples=2)
    task = probe_source(path, "v", 0, "k", stride_s=2.0, segment_s=10.0)
    assert isinstance(task, SourceTask) and task.has_audio and len(task.segments) == 3
    rows = [r for seg in task.segments for r in decode_segment(seg.to_row(), spec)]
    windows = [r for r in rows if r["kind"] == "window"]
    assert [r["kind"] for r in rows if r["kind"] != "window"] == ["done"] * 3
    assert [r["has_audio"] for r in windows] == [r["start_s"] <= 6.0 for r in windows]
    assert len(windows) == 15 and sum(r["has_audio"] for r in windows) == 4  # 0-2 ... 6-8
    assert all(not r["logmel"].any() for r in windows if not r["has_audio"])
    assert all(r["logmel"].any() for r in windows if r["has_audio"])


def test_an_mkv_whose_audio_runs_3_s_past_its_video_is_scanned_whole(tmp_path: Path) -> None:
    from mediagen import make_indexed, tone_audio

    path = str(make_indexed(
        tmp_path / "cam01_20260301T080000Z.mkv", n_frames=100, fps=10,
        audio=tone_audio(13.0, 16_000), audio_rate=16_000,
    ))
    spec = WindowSpec(window_s=2.0, stride_s=2.0, frames=4, size=32, audio_examples=2)
    task = probe_source(path, "v", 0, "k", stride_s=2.0, segment_s=4.0)
    assert isinstance(task, SourceTask) and task.duration_s == pytest.approx(10.0, abs=0.05)
    rows = [r for seg in task.segments for r in decode_segment(seg.to_row(), spec)]
    assert [r["kind"] for r in rows if r["kind"] != "window"] == ["done"] * 3
    assert [r["start_s"] for r in rows if r["kind"] == "window"] == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_decode_failure_is_a_trailer_not_an_exception(tmp_path: Path) -> None:
    bad = tmp_path / "x.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    spec = WindowSpec(2.0, 2.0, 4, 32, 2)
    out = list(decode_segment(Segment("k", str(bad), 0, 1, 0.0, 10.0).to_row(), spec))
    assert [r["kind"] for r in out] == ["error"]
    assert out[0]["error_type"] == "NotMedia" and str(bad) in out[0]["message"]
    err = probe_source(str(bad), "v", 0, "k", stride_s=2.0, segment_s=10.0)
    assert err.stage == "probe" and err.error_type == "NotMedia"


# ---------------------------------------------------------------------------------------------
# sink


def _task(key: str = "cam01_x-abc", n_segments: int = 2) -> SourceTask:
    segs = tuple(Segment(key, "/a/cam01_x.mp4", i, n_segments, 10.0 * i, 10.0 * (i + 1))
                 for i in range(n_segments))
    return SourceTask(
        "/a/cam01_x.mp4", "v1", 10, key, "cam01", datetime(2026, 3, 1, tzinfo=UTC), 20.0,
        True, segs,
    )


def _batch(rows: list[dict]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name in rows[0]:
        vals = [r[name] for r in rows]
        if name == "thumbnail":
            arr = np.empty(len(vals), dtype=object)
            arr[:] = vals
            out[name] = arr
        else:
            out[name] = np.asarray(vals)
    return out


def _row(kind: str, seg: int, wi: int = -1, n: int = 0, key: str = "cam01_x-abc") -> dict:
    probs = np.full(len(SHADE.names), 0.01, np.float32)
    probs[2 if wi in (3, 4) else 7] = 0.92  # windows 3-4 are a "fight"
    return {
        "key": key, "source_uri": "/a/cam01_x.mp4", "segment_index": seg, "kind": kind,
        "window_index": wi, "start_s": 2.0 * max(wi, 0), "end_s": 2.0 * max(wi, 0) + 2.0,
        "has_audio": True, "n_windows": n, "error_type": "", "message": "",
        "decode_node": "nodeD", "infer_node": "nodeI", "probs": probs,
        "thumbnail": b"\xff\xd8jpeg" if wi == 3 else b"",
    }


def test_assembler_finishes_sources_once_and_ignores_duplicates() -> None:
    a = SourceAssembler([_task()], classes=SHADE, model_id="m", scan_id="s")
    seg0 = [_row("window", 0, i) for i in range(5)] + [_row("done", 0, n=5)]
    assert a.add_batch(_batch(seg0)) == []  # segment 1 not reported yet
    # a retried segment 0 arrives again, interleaved with segment 1
    seg1 = [_row("window", 1, i) for i in range(5, 10)] + [_row("done", 1, n=5)]
    fin = a.add_batch(_batch(seg0[:3] + seg1))
    assert len(fin) == 1 and fin[0].error is None
    w = fin[0].windows
    assert w.num_rows == 10 and w["window_index"].to_pylist() == list(range(10))
    assert w["start_time"][0].as_py() == datetime(2026, 3, 1, tzinfo=UTC)
    assert w["label"][3].as_py() == "fight" and w["is_anomaly"][3].as_py()
    assert fin[0].thumbnails == {3: b"\xff\xd8jpeg"}
    ev = events_from_windows(w, classes=SHADE, thumbnails=fin[0].thumbnails)
    assert ev["label"].to_pylist() == ["fight"] and ev["thumbnail"][0].as_py() == b"\xff\xd8jpeg"
    assert a.add_batch(_batch(seg1)) == [] and a.unfinished() == []
    # a segment that fails on the recording costs its range only: an unreadable span
    b = SourceAssembler([_task()], classes=SHADE, model_id="m", scan_id="s")
    bad = _row("error", 1, n=0)
    bad.update(error_type="Truncated", message="/a/cam01_x.mp4: data ends at 55%",
               start_s=10.0, end_s=20.0)
    fin = b.add_batch(_batch([*seg0, bad]))
    assert fin[0].error is None and fin[0].windows["window_index"].to_pylist() == [0, 1, 2, 3, 4]
    spans = fin[0].unreadable.to_pylist()
    assert [(u["start_s"], u["end_s"], u["reason"]) for u in spans] == [(10.0, 20.0, "Truncated")]
    assert spans[0]["start_time"] == datetime(2026, 3, 1, 0, 0, 10, tzinfo=UTC)
    # a damaged stretch inside a segment drops the windows that overlap it, and the spans
    # two overlapping segments report of it are one
    c = SourceAssembler([_task()], classes=SHADE, model_id="m", scan_id="s")
    span = _row("unreadable", 0)
    span.update(start_s=3.1, end_s=5.5, error_type="DecodeFailed", message="corrupt data")
    again = dict(span, segment_index=1, start_s=4.0, end_s=6.2)
    fin = c.add_batch(_batch([*seg0, span, again, *seg1]))
    assert fin[0].windows["window_index"].to_pylist() == [0, 4, 5, 6, 7, 8, 9]
    assert fin[0].thumbnails == {}  # window 3's thumbnail went with it
    assert [(u["start_s"], u["end_s"]) for u in fin[0].unreadable.to_pylist()] == [(3.1, 6.2)]
    # a storage failure in one segment: no outputs at all, so that a rerun scans it again
    d = SourceAssembler([_task()], classes=SHADE, model_id="m", scan_id="s")
    stalled = dict(bad, error_type="StorageError", message="read timed out")
    fin = d.add_batch(_batch([*seg0, stalled]))
    assert fin[0].windows is None and fin[0].error.error_type == "StorageError"
    # nothing readable at all: the source is an error row
    e = SourceAssembler([_task()], classes=SHADE, model_id="m", scan_id="s")
    first = dict(bad, segment_index=0, start_s=0.0, end_s=10.0)
    fin = e.add_batch(_batch([first, bad]))
    assert fin[0].windows is None and fin[0].error.error_type == "Truncated"


def test_sink_rewrites_a_crash_leftover_and_never_clobbers_a_finished_key(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    task = _task()
    a = SourceAssembler([task], classes=SHADE, model_id="m", scan_id="s1")
    rows = [_row("window", 0, i) for i in range(5)] + [_row("done", 0, n=5)]
    rows += [_row("window", 1, i) for i in range(5, 10)] + [_row("done", 1, n=5)]
    w = a.add_batch(_batch(rows))[0].windows
    # a run died after writing windows, before the events marker
    storage.write_atomic(sink.windows_uri(out, task), sink.parquet_bytes(w.slice(0, 3)))
    assert sink.finished_keys(out) == (set(), set())
    ev = events_from_windows(w, classes=SHADE)
    assert sink.write_source(out, task, w, ev)
    assert sink.finished_keys(out) == ({task.key}, set())
    files = output_files(out)
    assert len(files["windows"]) == len(files["events"]) == 1
    assert pq.read_table(sink.windows_uri(out, task)).num_rows == 10
    # a second writer of the same key leaves the finished objects alone
    before = os.stat(sink.events_uri(out, task)).st_mtime_ns
    assert not sink.write_source(out, task, w.slice(0, 1), ev)
    assert os.stat(sink.events_uri(out, task)).st_mtime_ns == before
    assert pq.read_table(sink.windows_uri(out, task)).num_rows == 10


def test_a_writer_that_loses_the_race_for_a_key_leaves_one_scan_behind_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two scans finish one key at once; the loser checked before the winner's events object
    existed and wrote its windows and spans after the winner's: it puts them back under the
    winner's scan id, so the query pairs the key's windows, spans and events again."""
    from avrl_batch.query import run_query

    out = str(tmp_path / "out")
    task = _task()
    spans = [(2.0, 3.0, "DecodeFailed", "corrupt data")]
    tables = {}
    for scan_id in ("s1", "s2"):
        a = SourceAssembler([task], classes=SHADE, model_id="m", scan_id=scan_id)
        rows = [_row("window", 0, i) for i in range(5)] + [_row("done", 0, n=5)]
        rows += [_row("window", 1, i) for i in range(5, 10)] + [_row("done", 1, n=5)]
        w = a.add_batch(_batch(rows))[0].windows
        tables[scan_id] = (w, events_from_windows(w, classes=SHADE),
                           sink.unreadable_table(task, spans, model_id="m", scan_id=scan_id))
    w1, ev1, u1 = tables["s1"]
    assert ev1.num_rows == 1
    assert sink.write_source(out, task, w1, ev1, model_id="m", unreadable=u1)
    w2, ev2, u2 = tables["s2"]
    monkeypatch.setattr(storage, "exists", lambda *a, **k: False)  # checked before s1's marker
    assert not sink.write_source(out, task, w2, ev2, model_id="m", unreadable=u2)
    assert set(pq.read_table(sink.windows_uri(out, task))["scan_id"].to_pylist()) == {"s1"}
    assert set(pq.read_table(sink.unreadable_uri(out, task))["scan_id"].to_pylist()) == {"s1"}
    assert sink.source_meta(storage.read_bytes(sink.windows_uri(out, task)))["scan_id"] == "s1"
    monkeypatch.undo()
    assert run_query(out, table="events")["scan_id"].to_pylist() == ["s1"]
    assert run_query(out, table="windows").num_rows == 10
    assert run_query(out, table="unreadable").num_rows == 1


def test_a_dead_runs_spans_leftover_is_removed_only_where_the_listing_found_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run died after writing a key's windows and unreadable objects: the next scan's
    listing finds the leftover and the source, written without spans, removes it; a key with
    no listed leftover is written without a delete call."""

    from avrl_batch.scan import pipeline

    out = str(tmp_path / "out")
    task, fresh = _task(), replace(_task(), key=_task().key + "b")
    w = sink.windows_table(task, np.arange(2), np.array([0.0, 2.0]), np.array([2.0, 4.0]),
                           np.ones(2, bool), np.full((2, len(SHADE.names)), 0.1),
                           classes=SHADE, model_id="m", scan_id="s")
    ev = events_from_windows(w, classes=SHADE)
    spans = sink.unreadable_table(task, [(1.0, 1.5, "DecodeFailed", "corrupt data")],
                                  model_id="m", scan_id="s")
    storage.write_atomic(sink.windows_uri(out, task), sink.parquet_bytes(w))
    storage.write_atomic(sink.unreadable_uri(out, task), sink.parquet_bytes(spans))
    listed = pipeline._spans_listed(ScanConfig(source=str(tmp_path), model="m", out=out))
    assert listed == {sink.unreadable_uri(out, task)}
    deleted: list[str] = []
    real_delete = storage.delete
    monkeypatch.setattr(storage, "delete", lambda uri, **k: (deleted.append(uri),
                                                             real_delete(uri, **k)))
    assert sink.write_source(out, task, w, ev, spans_listed=listed)
    assert sink.write_source(out, fresh, w, ev, spans_listed=listed)
    assert deleted == [sink.unreadable_uri(out, task)]
    assert not os.path.exists(sink.unreadable_uri(out, task))
    assert sink.finished_keys(out) == ({task.key, fresh.key}, set())


def test_superseded_versions_found_and_removed_on_s3(s3_bucket: str, s3_endpoint: str) -> None:
    """find_superseded / remove_superseded on S3 keys (no Ray): the old version's windows and
    events objects are found from its events object's source metadata and removed once the
    current version is finished; another model's objects for the same file are not touched."""
    from dataclasses import replace
    from types import SimpleNamespace

    out, ep = f"s3://{s3_bucket}/scans", s3_endpoint
    uri = "s3://archive/cam01/cam01_x.mp4"
    w = sink.windows_table(
        _task(), np.arange(2), np.array([0.0, 2.0]), np.array([2.0, 4.0]), np.ones(2, bool),
        np.full((2, len(SHADE.names)), 1 / len(SHADE.names)), classes=SHADE,
        model_id="m1", scan_id="s1",
    )
    ev = events_from_windows(w, classes=SHADE)
    tasks = {}
    for version, model in (("v1", "m1"), ("v1", "m2"), ("v2", "m1")):
        key = source_key(uri, version, model)
        tasks[version, model] = replace(_task(key), uri=uri, version=version)
        assert sink.write_source(out, tasks[version, model], w, ev, model_id=model, endpoint_url=ep)
    # a scan of version v2 with model m1 lists the file as v2: v1/m1 is superseded, v1/m2 not
    current = tasks["v2", "m1"]
    done, failed = sink.finished_objects(out, endpoint_url=ep)
    keyed = [(SimpleNamespace(uri=uri, version="v2"), current.key)]
    stale = sink.find_superseded(out, keyed, done, failed, "m1", endpoint_url=ep)
    old = tasks["v1", "m1"]
    assert [(s.key, s.version) for s in stale] == [(old.key, "v1")]
    assert stale[0].uris == (
        sink.windows_uri(out, old), sink.unreadable_uri(out, old), sink.events_uri(out, old)
    )
    # not removed while the current version is unfinished
    assert sink.remove_superseded(stale, set(), set(), endpoint_url=ep) == []
    assert storage.exists(sink.events_uri(out, old), endpoint_url=ep)
    assert sink.remove_superseded(stale, set(done), set(failed), endpoint_url=ep) == stale
    left = set(sink.finished_keys(out, endpoint_url=ep)[0])
    assert left == {current.key, tasks["v1", "m2"].key}
    assert not storage.exists(sink.windows_uri(out, old), endpoint_url=ep)


# ---------------------------------------------------------------------------------------------
# real scans on a local Ray




@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    root = tmp_path_factory.mktemp("archive")
    files = make_archive(root / "rec")
    model = root / "tiny.avrl"
    tiny_model(model)
    return root / "rec", files, model


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_changed_file_replaces_its_old_outputs(
    ray_local: None, archive: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    """A file rewritten after a scan (new version, new key) ends with the new version's outputs
    only, also when the new version is corrupt; a file of the same name in another folder is
    left alone."""
    _, _, model = archive
    src, out = tmp_path / "src", str(tmp_path / "out")
    mine, other = src / "cam01" / "clip.mp4", src / "cam02" / "clip.mp4"
    recording(mine, 6, seed=11)
    recording(other, 6, seed=12)
    cfg = ScanConfig(source=str(src), model=str(model), out=out)
    first = run_scan(cfg)
    assert first.sources_ok == 2 and first.superseded == []
    rel = check_outputs(out, [str(mine), str(other)])[str(other)]["rel"]
    kept = {f: os.stat(os.path.join(out, f)).st_mtime_ns
            for f in (rel, "events/" + rel.split("/", 1)[1])}
    # the same file is rewritten: 8 s now (new size and mtime -> new version and key)
    recording(mine, 8, seed=13)
    plan = run_scan(ScanConfig(source=str(src), model=str(model), out=out, dry_run=True))
    assert [s["source_uri"] for s in plan.plan["superseded"]] == [str(mine)]
    second = run_scan(cfg)
    assert (second.sources_ok, second.sources_skipped) == (1, 1)
    assert [s["source_uri"] for s in second.superseded] == [str(mine)]
    got = check_outputs(out, [str(mine), str(other)])  # one output per source, no duplicates
    assert got[str(mine)]["windows"]["end_s"].to_pylist()[-1] == pytest.approx(8.0)
    assert {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in kept} == kept
    n_windows = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{out}/windows/**/*.parquet') "
        f"WHERE source_uri = '{mine}'"
    ).fetchall()
    assert n_windows == [(got[str(mine)]["windows"].num_rows,)]
    # the file turns corrupt: its error row replaces the 8-s version's windows and events
    mine.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    third = run_scan(cfg)
    assert third.sources_failed == 1 and len(third.superseded) == 1
    got = check_outputs(out, [str(mine), str(other)])
    assert "error" in got[str(mine)] and "windows" not in got[str(mine)]
    # nothing changed since: nothing removed
    assert run_scan(cfg).superseded == []


def test_scan_local_folder_layout_rerun_and_missing_audio(
    ray_local: None,
    archive: tuple[Path, dict[str, str], Path],
    tmp_out: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rec, files, model = archive
    cfg = ScanConfig(source=str(rec), model=str(model), out=str(tmp_out), segment_s=20.0)
    s = run_scan(cfg)
    assert (s.sources_listed, s.sources_ok, s.sources_failed, s.sources_skipped) == (5, 4, 1, 0)
    assert s.segments == 3 + 2 + 1 + 1  # 50 s, 24 s, 20 s, 12 s at 20 s segments
    got = check_outputs(str(tmp_out), list(files.values()))
    assert got[files["corrupt"]]["error"]["stage"][0].as_py() == "probe"
    # window counts: windows start every 2 s before the end of the file
    for name, n in (("a", 25), ("b_noaudio", 12), ("c_dayfolder", 10), ("d_noname", 6)):
        w = got[files[name]]["windows"]
        assert w.num_rows == n and w["window_index"].to_pylist() == list(range(n))
        assert w["probs"].to_pylist()[0].__len__() == len(SHADE.names)
        np.testing.assert_allclose(
            np.asarray(w["probs"].to_pylist()).sum(axis=1), 1.0, rtol=1e-4
        )
    # the recording without audio is scanned through the missing-audio path, not skipped
    assert got[files["b_noaudio"]]["windows"]["has_audio"].to_pylist() == [False] * 12
    assert all(got[files["a"]]["windows"]["has_audio"].to_pylist())
    # partitions: recording start date and camera from the path; unknown when not in it
    assert got[files["c_dayfolder"]]["rel"].startswith("windows/date=2026-03-03/camera=cam01/")
    assert got[files["d_noname"]]["rel"].startswith("windows/date=unknown/camera=unknown/")
    w = got[files["a"]]["windows"]
    assert w["start_time"][1].as_py() == datetime(2026, 3, 1, 8, 0, 2, tzinfo=UTC)
    assert got[files["d_noname"]]["windows"]["start_time"].null_count == 6
    # DuckDB reads the dataset (hive partitions included) with the declared column types
    con = duckdb.connect()
    rows = con.sql(
        f"SELECT camera, count(*) AS n, bool_and(NOT has_audio) AS silent FROM "
        f"read_parquet('{tmp_out}/windows/**/*.parquet') GROUP BY camera ORDER BY camera"
    ).fetchall()
    assert rows == [("cam01", 35, False), ("cam02", 12, True), ("unknown", 6, False)]
    described = con.sql(f"DESCRIBE SELECT * FROM read_parquet('{tmp_out}/events/**/*.parquet')")
    types = {row[0]: row[1] for row in described.fetchall()}
    assert types["start_time"] == "TIMESTAMP WITH TIME ZONE" and types["thumbnail"] == "BLOB"
    assert con.sql(
        f"SELECT count(*) FROM read_parquet('{tmp_out}/errors/*.parquet')"
    ).fetchall() == [(1,)]
    manifest = storage.read_bytes(s.manifest)
    assert b'"sources_ok": 4' in manifest and s.model_id.encode() in manifest

    # a second identical scan writes nothing new but its manifest
    before = _mtimes(tmp_out)
    s2 = run_scan(cfg)
    assert (s2.sources_ok, s2.sources_failed, s2.sources_skipped) == (0, 0, 5)
    after = _mtimes(tmp_out)
    new = set(after) - set(before)
    assert new == {f"_scans/{s2.scan_id}.json"}
    assert {k: after[k] for k in before} == before
    # the CLI: --truth prints F1 of the events against ground truth (here: the scan's own
    # events plus one invented miss, so precision 1 and recall n / (n + 1))
    import json

    from avrl_batch.cli import main

    ev = pa.concat_tables([got[files[k]]["events"] for k in ("a", "b_noaudio")])
    # URIs relative to the truth table's folder, as `avrl synth` writes them
    rel = [str(Path(u).relative_to(rec.parent)) for u in ev["source_uri"].to_pylist()]
    truth = pa.table({
        "source_uri": [*rel, str(Path(files["a"]).relative_to(rec.parent))],
        "label": [*ev["label"].to_pylist(), "shoot"],
        "start_s": [*ev["start_s"].to_pylist(), 1000.0],
        "end_s": [*ev["end_s"].to_pylist(), 1010.0],
    })
    pq.write_table(truth, rec.parent / "truth.parquet")
    capsys.readouterr()
    main(["scan", str(rec), "--model", str(model), "--out", str(tmp_out), "--segment", "20",
          "--truth", str(rec.parent / "truth.parquet"), "--clips", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert res["sources_skipped"] == 5 and res["match"]["fn"] == 1
    # --clips: one playable MP4 per event of the OUT, named by its event id
    assert (res["clips"]["events"], res["clips"]["written"]) == (s.events, s.events)
    clip_ids = sorted(p.stem for p in (tmp_out / "clips").rglob("*.mp4"))
    all_events = pa.concat_tables(got[f]["events"] for f in files.values() if "events" in got[f])
    assert clip_ids == sorted(all_events["event_id"].to_pylist())
    assert res["match"]["tp"] == ev.num_rows  # each event matches itself (IoU 1)
    assert res["match"]["fp"] == s.events - ev.num_rows  # other sources' events: not in truth
    # --dry-run plans without writing
    dry = run_scan(ScanConfig(source=str(rec), model=str(model), out=str(tmp_out / "dry"),
                              segment_s=20.0, dry_run=True))
    assert dry.plan["sources_todo"] == 4 and dry.plan["segments"] == 7
    assert not (tmp_out / "dry").exists()
    # two sources a wave: the next wave is probed while one decodes (its first source is
    # written before the last wave's probes are done); the same results, the same summary
    waves = run_scan(replace(cfg, out=str(tmp_out / "waves"), wave=2))
    assert (waves.sources_ok, waves.sources_failed, waves.segments) == (4, 1, 7)
    assert waves.plan["waves"] == 3 and waves.plan["sources_todo"] == 4
    assert waves.plan["sources_failed_probe"] == 1 and waves.plan["segments"] == 7
    assert waves.plan["first_source_s"] < waves.plan["probes_done_s"]
    again = check_outputs(str(tmp_out / "waves"), list(files.values()))
    for name in ("a", "b_noaudio", "c_dayfolder", "d_noname"):
        w, w0 = again[files[name]]["windows"], got[files[name]]["windows"]
        assert w["window_index"].to_pylist() == w0["window_index"].to_pylist()
        np.testing.assert_allclose(np.asarray(w["probs"].to_pylist()),
                                   np.asarray(w0["probs"].to_pylist()), atol=1e-5)
    assert s.plan["waves"] == 1


@pytest.mark.slow
def test_scan_s3_bucket(
    ray_local: None,
    archive: tuple[Path, dict[str, str], Path],
    s3_endpoint: str,
    s3_bucket: str,
) -> None:
    rec, files, model = archive
    uris = {}
    for name, path in files.items():
        rel = Path(path).relative_to(rec).as_posix()
        uris[name] = f"s3://{s3_bucket}/archive/{rel}"
        storage.write_atomic(uris[name], Path(path).read_bytes(), endpoint_url=s3_endpoint)
    storage.write_atomic(
        f"s3://{s3_bucket}/models/tiny.avrl", model.read_bytes(), endpoint_url=s3_endpoint
    )
    out = f"s3://{s3_bucket}/scans"
    cfg = ScanConfig(
        source=f"s3://{s3_bucket}/archive/",
        model=f"s3://{s3_bucket}/models/tiny.avrl",
        out=out,
        segment_s=30.0,
        endpoint_url=s3_endpoint,
        # thresholds at 0: each recording is one incident over all its windows, so the
        # event path (peak window -> JPEG thumbnail from the actor) runs end to end
        timeline=TimelineConfig(enter=0.0, exit=0.0),
    )
    s = run_scan(cfg)
    assert (s.sources_ok, s.sources_failed) == (4, 1)
    got = check_outputs(out, list(uris.values()), endpoint_url=s3_endpoint)
    assert got[uris["b_noaudio"]]["windows"]["has_audio"].to_pylist() == [False] * 12
    for name, n in (("a", 25), ("b_noaudio", 12), ("c_dayfolder", 10), ("d_noname", 6)):
        ev = got[uris[name]]["events"]
        assert ev.num_rows == 1 and ev["label"][0].as_py() in SHADE.anomaly
        assert ev["n_windows"].to_pylist() == [n]
        assert ev["thumbnail"][0].as_py().startswith(b"\xff\xd8")  # a JPEG
    # pyarrow's S3 filesystem reads the dataset; DuckDB queries it
    import pyarrow.dataset as pads

    fs, path = storage.filesystem(out + "/events", endpoint_url=s3_endpoint)
    events = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive").to_table()
    windows_fs, wpath = storage.filesystem(out + "/windows", endpoint_url=s3_endpoint)
    windows = pads.dataset(wpath, filesystem=windows_fs, format="parquet").to_table()
    con = duckdb.connect()
    con.register("windows", windows)
    assert con.sql("SELECT count(*) FROM windows").fetchall() == [(25 + 12 + 10 + 6,)]
    assert events.num_rows == s.events
    # a rerun writes nothing new: same objects with the same ETags
    import boto3

    def etags() -> dict[str, str]:
        c = boto3.client("s3", endpoint_url=s3_endpoint)
        objs = c.list_objects_v2(Bucket=s3_bucket, Prefix="scans/")["Contents"]
        return {o["Key"]: o["ETag"] for o in objs if not o["Key"].startswith("scans/_scans/")}

    before = etags()
    s2 = run_scan(cfg)
    assert (s2.sources_ok, s2.sources_skipped) == (0, 5) and etags() == before


# The driver killed midway, then a rerun (one output per source, no duplicate rows), is
# test_driver_killed_at_half_then_rerun_reprocesses_only_the_rest in
# tests/test_reliability_scan.py, which also checks that no truncated object is left under a
# final key.


def test_storage_failures_are_retried_and_media_failures_kept(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    """A recording that is not media gets a permanent error row (a rerun skips it); a read
    that failed in storage (here: the object went away after listing) is transient, so the
    scan reports it without an error object and the next scan tries it again."""
    from avrl_batch.scan.plan import SourceError

    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    kept = probe_source(str(noise), "v1", 4096, "key-noise", stride_s=2.0, segment_s=30.0)
    assert isinstance(kept, SourceError) and kept.stage == "probe"
    assert not kept.transient, kept
    gone = probe_source(
        f"s3://{s3_bucket}/archive/gone.mp4", "v1", 1, "key-gone",
        stride_s=2.0, segment_s=30.0, endpoint_url=s3_endpoint,
    )
    assert isinstance(gone, SourceError) and gone.transient, gone


# ---------------------------------------------------------------------------------------------
# settings are part of a result's identity


def test_other_window_settings_are_refused_rescan_replaces_and_retimeline_needs_no_decoding(
    ray_local: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A rerun with another --stride (or --timezone) into the same OUT is refused in one line
    naming the setting, before any work; --rescan replaces every result (a source whose
    date moved with the zone leaves no old partition behind) and the record follows; then
    `avrl retimeline` re-applies thresholds from the stored windows with the recordings gone."""
    import dataclasses
    import json

    from avrl_batch.cli import main

    root = tmp_path / "rec"
    utc = str(recording(root / "cam01" / "cam01_20260301T080000Z.mp4", 8, seed=1))
    local = str(recording(root / "cam02" / "cam02_20260302T003000.mp4", 6, seed=2))  # no offset
    model = tmp_path / "tiny.avrl"
    tiny_model(model)
    out = tmp_path / "out"
    cfg = ScanConfig(source=str(root), model=str(model), out=str(out))
    assert run_scan(cfg).sources_ok == 2  # stride = window = 2 s, times in UTC

    before = _mtimes(out)
    capfd.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(["scan", str(root), "--model", str(model), "--out", str(out), "--stride", "1"])
    assert refused.value.code == 2
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert "--stride 2.0 (now 1.0)" in line and "--out" in line and "--rescan" in line
    with pytest.raises(ConfigError, match=r"--timezone UTC \(now Europe/Paris\)"):
        run_scan(dataclasses.replace(cfg, timezone="Europe/Paris", dry_run=True))
    assert _mtimes(out) == before  # nothing written, nothing skipped as "done"

    new = dataclasses.replace(cfg, stride_s=1.0, timezone="Europe/Paris", rescan=True)
    again = run_scan(new)
    assert (again.sources_ok, again.sources_skipped) == (2, 0)
    got = check_outputs(str(out), [utc, local])
    assert got[utc]["windows"]["start_s"].to_pylist() == [float(i) for i in range(8)]
    assert got[local]["rel"].startswith("windows/date=2026-03-01/")  # 00:30 in Paris
    manifest = json.loads(storage.read_bytes(again.manifest))
    assert manifest["window_settings"]["stride_s"] == 1.0
    assert manifest["window_settings"]["timezone"] == "Europe/Paris"
    third = run_scan(dataclasses.replace(new, rescan=False))  # the new settings are the record
    assert (third.sources_ok, third.sources_skipped) == (0, 2)
    # what a --rescan killed midway leaves: its record, not yet marked whole
    record = json.loads(storage.read_bytes(sink.settings_uri(str(out), third.model_id)))
    assert record["rescanning"] is False and record["stride_s"] == 1.0
    sink.write_settings(str(out), record | {"rescanning": True})
    with pytest.raises(ConfigError, match="did not finish.*--rescan"):
        run_scan(dataclasses.replace(new, rescan=False))
    sink.write_settings(str(out), record)

    stored = {uri: got[uri]["windows"] for uri in (utc, local)}
    import shutil

    shutil.rmtree(root)  # no recording to decode: only stored window probabilities remain
    capfd.readouterr()
    main(["retimeline", str(out), "--enter", "0", "--exit", "0", "--json"])
    summary = json.loads(capfd.readouterr().out)
    assert summary["kind"] == "retimeline" and summary["sources"] == 2 and not summary["errors"]
    redone = check_outputs(str(out), [utc, local])
    for uri, windows in stored.items():
        meta = sink.source_meta(storage.read_bytes(str(out / redone[uri]["rel"]).replace(
            "/windows/", "/events/", 1)))
        assert meta is not None and meta["source_uri"] == uri
        want = events_from_windows(
            windows, TimelineConfig(enter=0.0, exit=0.0), classes=SHADE, version=meta["version"]
        )
        ev = redone[uri]["events"]
        assert ev.num_rows == 1 and ev["n_windows"].to_pylist() == [windows.num_rows]
        assert ev.drop(["thumbnail"]).equals(want.drop(["thumbnail"]))
    assert json.loads(storage.read_bytes(summary["manifest"]))["timeline"]["enter"] == 0.0
