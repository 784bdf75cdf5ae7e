"""Event clips (`avrl clips`): one playable MP4 per event, local and on a moto S3 server,
cut from real PyAV-encoded recordings; a rerun writes nothing; a gone event's clip goes; a
recording that cannot be read costs only its clips. The OUT is written the way the sink
writes it (events objects with their source metadata), so no Ray is needed here; `avrl
scan --clips` on a real scan is in tests/test_scan.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import pytest
from cliphelp import MARGIN, make_clip_out

from avrl_batch import storage
from avrl_batch.cli import main
from avrl_batch.clips import ClipSpec, sync_clips


def _check_clip(data: bytes, start_s: float, end_s: float, has_audio: bool,
                seconds: float) -> None:
    """A clip a browser plays: H.264 (+ AAC when the source has audio) in MP4, as long as
    the event plus its margins (clamped to the recording)."""
    want = min(end_s + MARGIN, seconds) - max(0.0, start_s - MARGIN)
    with av.open(io.BytesIO(data)) as c:
        assert c.format.name.startswith("mov,mp4")
        assert c.streams.video[0].codec_context.name == "h264"
        assert (len(c.streams.audio) == 1) == has_audio
        if has_audio:
            assert c.streams.audio[0].codec_context.name == "aac"
        frames = [f.time for f in c.decode(video=0)]
    got = frames[-1] - frames[0] + 1 / 5  # 5 fps recordings: the last frame lasts 0.2 s
    assert abs(got - want) <= 0.5, (got, want)
    assert data[4:8] == b"ftyp" and data.find(b"moov") < data.find(b"mdat")  # faststart


def test_clips_local_one_per_event_rerun_writes_nothing_and_gone_events_lose_theirs(
    tmp_path: Path,
) -> None:
    out = str(tmp_path / "out")
    expected = make_clip_out(tmp_path / "rec", out)
    s = sync_clips(out, spec=ClipSpec(margin_s=MARGIN))
    assert (s.events, s.written, s.present, s.removed, s.failed) == (3, 3, 0, 0, [])
    clips = sorted((tmp_path / "out" / "clips").rglob("*.mp4"))
    assert [c.stem for c in clips] == sorted(expected)
    assert clips[0].parent.relative_to(tmp_path / "out").as_posix() == (
        "clips/date=2026-03-01/camera=cam01"
    )
    seconds = {"cam01": 30.0, "cam02": 16.0}
    for c in clips:
        start, end, audio = expected[c.stem]
        _check_clip(c.read_bytes(), start, end, audio, seconds[c.stem[:5]])

    mtimes = {c: c.stat().st_mtime_ns for c in clips}
    again = sync_clips(out, spec=ClipSpec(margin_s=MARGIN))
    assert (again.written, again.present, again.removed) == (0, 3, 0)
    assert {c: c.stat().st_mtime_ns for c in clips} == mtimes

    # a source whose events object is gone (superseded, rescanned): its clips go too
    next((tmp_path / "out" / "events").rglob("cam02*.parquet")).unlink()
    gone = sync_clips(out, spec=ClipSpec(margin_s=MARGIN))
    assert (gone.events, gone.written, gone.removed) == (2, 0, 1)
    assert sorted(c.stem for c in (tmp_path / "out" / "clips").rglob("*.mp4")) == [
        "cam01ev0", "cam01ev1"
    ]


def test_a_recording_that_cannot_be_read_costs_only_its_clips(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    make_clip_out(tmp_path / "rec", out)
    (tmp_path / "rec" / "cam02" / "cam02_20260301T090000Z.mp4").write_bytes(b"not a movie")
    s = sync_clips(out)
    assert (s.written, len(s.failed)) == (2, 1)
    event_id, message = s.failed[0]
    assert event_id == "cam02ev0" and "\n" not in message and "cam02" in message
    # the next run tries it again, and does not rewrite the others
    again = sync_clips(out)
    assert (again.written, again.present, len(again.failed)) == (0, 2, 1)


def test_clips_on_s3_through_the_cli(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = f"s3://{s3_bucket}/out"
    expected = make_clip_out(tmp_path / "rec", out, s3_endpoint, f"s3://{s3_bucket}/archive")
    main(["clips", out, "--margin", str(MARGIN), "--endpoint-url", s3_endpoint, "--json"])
    first = json.loads(capsys.readouterr().out)
    assert (first["events"], first["written"], first["failed"]) == (3, 3, [])
    listed = storage.list_files(storage.join(out, "clips"), endpoint_url=s3_endpoint)
    assert sorted(Path(u).stem for u in listed) == sorted(expected)
    data = storage.read_bytes(listed[0], endpoint_url=s3_endpoint)
    start, end, audio = expected[Path(listed[0]).stem]
    _check_clip(data, start, end, audio, 30.0)
    main(["clips", out, "--endpoint-url", s3_endpoint, "--json"])
    second = json.loads(capsys.readouterr().out)
    assert (second["written"], second["present"]) == (0, 3)


def test_clip_options_are_checked_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["clips", "/nonexistent-out", "--margin", "-1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --margin must be >= 0 seconds, got -1.0"
