"""Camera and start time from a recording's name: the default patterns, offsets and
--timezone (with the DST rule), raw camera ids, the name-then-creation_time order, and a
real scan that records its time zone in the manifest."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from scanhelp import read_parquet, recording, tiny_model

from avrl_batch import storage
from avrl_batch.errors import ConfigError
from avrl_batch.scan import ScanConfig, run_scan
from avrl_batch.scan.naming import local_to_utc, parse_start, source_name, time_zone
from avrl_batch.scan.plan import SourceTask, probe_source
from avrl_batch.schema import WINDOWS

UTC = timezone.utc


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    "uri,camera,start",
    [
        # text after the timestamp: a codec tag, a part number, an end time
        ("/a/cam-05/cam-05_20261103T080000Z_hevc.mp4", "cam-05", utc(2026, 11, 3, 8)),
        ("s3://b/cam-05_20261103T080000Z_hevc.mp4", "cam-05", utc(2026, 11, 3, 8)),
        ("/a/gate/gate_20261103T080000Z-part2.mkv", "gate", utc(2026, 11, 3, 8)),
        ("/a/front_door_20260701T080000Z_20260701T090000Z.mp4", "front_door",
         utc(2026, 7, 1, 8)),
        # an offset in the name wins over --timezone
        ("/a/lobby/lobby_20260701T083000+0200.mp4", "lobby", utc(2026, 7, 1, 6, 30)),
        ("/a/lobby/lobby_20260701T083000-05:00.mp4", "lobby", utc(2026, 7, 1, 13, 30)),
        # no offset: local time in --timezone (Europe/Paris is +02:00 in July)
        ("/a/lobby/lobby_20260701T083000.mp4", "lobby", utc(2026, 7, 1, 6, 30)),
        ("/a/lobby/lobby_20260701T083000_sub.mp4", "lobby", utc(2026, 7, 1, 6, 30)),
        # a timestamp glued to more digits is not a timestamp; month 13 is not a date
        ("/a/x/cam_20260701T0830001.mp4", None, None),
        ("/a/x/x_20261301T083000Z.mp4", "x", None),
    ],
)
def test_camera_and_start_from_names(uri: str, camera: str | None, start: datetime | None) -> None:
    n = source_name(uri, zone="Europe/Paris")
    assert (n.camera, n.start_time) == (camera, start)


def test_local_times_across_dst_changes_follow_the_documented_rule() -> None:
    """A wall-clock time that occurs twice is its first occurrence; one that never occurs is
    moved forward by the gap."""
    paris, new_york = time_zone("Europe/Paris"), time_zone("America/New_York")
    # Paris, 29 March 2026: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist → 03:30 CEST
    assert parse_start("20260329T023000", paris) == utc(2026, 3, 29, 1, 30)
    assert parse_start("20260329T033000", paris) == utc(2026, 3, 29, 1, 30)
    # Paris, 25 October 2026: 02:30 happens at 00:30Z (CEST) and 01:30Z (CET) → the first
    assert parse_start("20261025T023000", paris) == utc(2026, 10, 25, 0, 30)
    assert parse_start("20261025T033000", paris) == utc(2026, 10, 25, 2, 30)  # no ambiguity
    # New York: 8 March 2026 gap (02:30 → 03:30 EDT), 1 November overlap (01:30 EDT first)
    assert parse_start("20260308T023000", new_york) == utc(2026, 3, 8, 7, 30)
    assert parse_start("20261101T013000", new_york) == utc(2026, 11, 1, 5, 30)
    # a half-hour gap (Lord Howe Island, 4 October 2026: 02:00 → 02:30): moved by 30 min
    lord_howe = time_zone("Australia/Lord_Howe")
    assert local_to_utc(datetime(2026, 10, 4, 2, 15), lord_howe) == utc(2026, 10, 3, 15, 45)
    # a recording that starts each hour through the change keeps its hours in order
    starts = [parse_start(f"20261025T0{h}0000", paris) for h in range(5)]
    assert starts == sorted(starts)
    # UTC (the default) needs no time zone database and shifts nothing
    assert time_zone("UTC") is UTC and parse_start("20261025T023000") == utc(2026, 10, 25, 2, 30)


def test_camera_ids_are_the_raw_path_segments() -> None:
    """An S3 key or a local path is not percent-decoded: ``cam%2005`` is that camera's name.
    A file:// URI is read as the path it names (its escapes are URI syntax)."""
    for uri in ("s3://b/cam%2005/cam%2005_20260701T080000Z.mp4",
                "/arch/cam%2005/cam%2005_20260701T080000Z.mp4"):
        n = source_name(uri)
        assert (n.camera, n.start_time) == ("cam%2005", utc(2026, 7, 1, 8)), uri
    n = source_name("file:///arch/cam%2005/cam%2005_20260701T080000Z.mp4")
    assert n.camera == "cam 05"
    n = source_name("file:///arch/cam%252005/cam%252005_20260701T080000Z.mp4")
    assert n.camera == "cam%2005"  # the file:// form of the folder literally named cam%2005


def test_start_comes_from_the_name_then_the_container_creation_time(tmp_path: Path) -> None:
    """On real clips: the name's time (in --timezone when it has no offset) wins over the
    container's creation_time; creation_time is used when the name has no time, read as UTC
    whatever --timezone says (MP4 and Matroska store it in UTC)."""
    from mediagen import index_frame

    from avrl_batch.media.encode import encode_av

    def clip(path: Path, creation_time: str | None) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"creation_time": creation_time} if creation_time else None
        encode_av(path, (index_frame(i) for i in range(10)), fps=5, metadata=meta)
        return str(path)

    named = clip(tmp_path / "lobby" / "lobby_20260701T083000.mp4", "2026-07-01T09:00:00Z")
    unnamed = clip(tmp_path / "misc" / "export.mp4", "2026-07-01T09:00:00Z")
    bare = clip(tmp_path / "misc" / "bare.mp4", None)
    starts = {}
    for path in (named, unnamed, bare):
        task = probe_source(path, "v", 0, "k", stride_s=1.0, segment_s=10.0,
                            timezone="Europe/Paris")
        assert isinstance(task, SourceTask), task
        starts[path] = (task.camera, task.start_time)
    assert starts[named] == ("lobby", utc(2026, 7, 1, 6, 30))
    assert starts[unnamed] == (None, utc(2026, 7, 1, 9))
    assert starts[bare] == (None, None)


def test_unknown_time_zone_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("Mars/Olympus_Mons", "../../etc/passwd", "", "+0200"):
        with pytest.raises(ConfigError, match="not a known IANA time zone") as err:
            ScanConfig(source="x", model="m", out="o", timezone=bad)
        assert "\n" not in str(err.value)
    from avrl_batch.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["scan", "x", "--model", "m", "--out", "o", "--timezone", "Europe/Pariss"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code != 0 and len(err.splitlines()) == 1
    assert "Europe/Pariss" in err and "IANA" in err


@pytest.mark.slow
def test_scan_reads_local_time_names_in_its_timezone_and_records_it(
    ray_local: None, tmp_path: Path
) -> None:
    """A real scan with --timezone America/New_York: windows of a local-time name start at the
    UTC instant, the date partition is the UTC date, a name with Z is unmoved, a suffix after
    the timestamp keeps camera and time; the manifest says the zone."""
    model = tmp_path / "tiny.avrl"
    tiny_model(model)
    src = tmp_path / "rec"
    # 22:30 on 1 July in New York is 02:30 on 2 July UTC
    local = recording(src / "lobby" / "lobby_20260701T223000.mp4", 6, seed=1)
    tagged = recording(src / "cam-05" / "cam-05_20261103T080000Z_hevc.mp4", 6, seed=2)
    out = tmp_path / "out"
    s = run_scan(ScanConfig(source=str(src), model=str(model), out=str(out),
                            timezone="America/New_York"))
    assert (s.sources_ok, s.sources_failed) == (2, 0)
    manifest = json.loads(storage.read_bytes(s.manifest))
    assert manifest["timezone"] == "America/New_York"
    assert manifest["config"]["timezone"] == "America/New_York"
    expected = {
        str(local): ("lobby", "2026-07-02", utc(2026, 7, 2, 2, 30)),
        str(tagged): ("cam-05", "2026-11-03", utc(2026, 11, 3, 8)),
    }
    files = sorted((out / "windows").rglob("*.parquet"))
    assert len(files) == 2
    for f in files:
        w = read_parquet(str(f), WINDOWS)
        camera, date, start = expected[w["source_uri"][0].as_py()]
        assert f.parent.name == f"camera={camera}" and f.parent.parent.name == f"date={date}"
        assert w["start_time"].to_pylist()[:2] == [start, start + timedelta(seconds=2)]
