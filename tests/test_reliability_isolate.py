"""Unit level: the decoder process of avrl_batch/scan/isolate.py turns a
crash or a hang into a typed error after at most 2 attempts, resumes a stream without
repeating items, and leaves nothing running behind it. The scan-level poison test is in
tests/test_reliability_scan.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from badmedia import Fault, FaultyDecoder, good_recording

from avrl_batch.scan import isolate
from avrl_batch.scan.decode import decode_segment_isolated
from avrl_batch.scan.isolate import DecoderCrashed, DecoderProcess, DecoderTimeout, Isolation

# abort on a probe of a source named ABORTME, hang on any job on HANGME
POISON = (Fault("abort", "probe", "ABORTME"), Fault("hang", "*", "HANGME"))


def _items_then_abort_once(n: int, crash_after: int, marker: str) -> Iterator[int]:
    """Yields 0..n-1, but the first run (no marker file yet) aborts after ``crash_after``."""
    for i in range(n):
        if i == crash_after and not os.path.exists(marker):
            Path(marker).write_text("crashed once")
            os.abort()
        yield i


def _hang_forever() -> None:
    while True:
        time.sleep(60)


@pytest.fixture
def poison_log(tmp_path: Path) -> Path:
    return tmp_path / "poison.log"


@pytest.mark.slow
def test_crash_and_hang_are_typed_errors_after_two_attempts(poison_log: Path) -> None:
    proc = FaultyDecoder(POISON, poison_log)
    try:
        assert proc.call(divmod, (7, 2), {}, source="ok", stage="probe", timeout_s=30) == (3, 1)
        first_pid = proc.pid
        with pytest.raises(DecoderCrashed, match=r"SIGABRT\) on 2 attempts; the file is quar"):
            isolate.run_isolated(divmod, 1, 1, source="s3://b/ABORTME.mp4", stage="probe",
                                 proc=proc)
        t0 = time.monotonic()
        with pytest.raises(DecoderTimeout, match="no progress for 1 s"):
            isolate.run_isolated(divmod, 1, 1, source="/x/HANGME.mkv", stage="decode",
                                 isolation=Isolation(timeout_s=1.0), proc=proc)
        assert time.monotonic() - t0 < 20
        # the marked sources were tried exactly twice each; the hook ignores other stages
        lines = poison_log.read_text().splitlines()
        assert lines == ["probe s3://b/ABORTME.mp4"] * 2 + ["decode /x/HANGME.mkv"] * 2
        assert isolate.run_isolated(divmod, 9, 4, source="ABORTME", stage="decode",
                                    proc=proc) == (2, 1)
        # a fresh child serves the next job; an ordinary exception is re-raised as is and
        # does not cost a restart
        assert proc.pid != first_pid and proc.starts == 1 + 4
        with pytest.raises(ValueError, match="invalid literal"):
            proc.call(int, ("zz",), {}, source="x", stage="probe", timeout_s=30)
        assert proc.starts == 5
    finally:
        proc.close()


def test_stream_resumes_after_a_crash_without_repeating_items(tmp_path: Path) -> None:
    proc = DecoderProcess()
    try:
        got = list(isolate.stream_isolated(
            _items_then_abort_once, 6, 3, str(tmp_path / "marker"), source="s", stage="decode",
            item_id=lambda i: i, proc=proc,
        ))
        assert got == [0, 1, 2, 3, 4, 5] and proc.starts == 2
        # without ids a retry would repeat 0..2; with them each item is seen once
    finally:
        proc.close()


def test_decode_segment_isolated_equals_in_process(tmp_path: Path, poison_log: Path) -> None:
    from avrl_batch.scan.decode import decode_segment
    from avrl_batch.scan.plan import WindowSpec

    path = str(good_recording(tmp_path / "cam1" / "cam1_20260101T000000Z.mp4", 6.0))
    spec = WindowSpec(window_s=2.0, stride_s=2.0, frames=4, size=32, audio_examples=2)
    seg = {"key": "k", "source_uri": path, "index": 0, "n_segments": 1, "start_s": 0.0,
           "end_s": 6.0}
    direct = list(decode_segment(seg, spec))
    proc = FaultyDecoder(POISON, poison_log)
    isolated = list(decode_segment_isolated(seg, spec, proc=proc))
    assert [r["kind"] for r in isolated] == ["window"] * 3 + ["done"]
    assert len(direct) == len(isolated)
    assert isolated[-1].pop("decoder_rss_mb") > 0  # the decoder's memory, for the summary
    for a, b in zip(direct, isolated, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    # a hung decode ends as the segment's error trailer, not an exception
    hung = dict(seg, source_uri=str(Path(path).with_name("HANGME.mp4")))
    rows = list(decode_segment_isolated(hung, spec, isolation=Isolation(timeout_s=1),
                                        proc=proc))
    proc.close()
    assert [r["kind"] for r in rows] == ["error"]
    assert rows[0]["error_type"] == "DecoderTimeout" and "quarantined" in rows[0]["message"]


def test_decoder_child_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    """A worker killed mid-decode (node loss, driver kill) must not leave a busy FFmpeg
    child behind: the child's watchdog notices the parent is gone."""
    pidfile = tmp_path / "child.pid"
    code = (
        "import sys, time; from avrl_batch.scan.isolate import DecoderProcess; "
        "import test_reliability_isolate as t; p = DecoderProcess(); "
        "p.call(divmod, (1, 1), {}, source='x', stage='probe', timeout_s=60); "
        f"open({str(pidfile)!r}, 'w').write(str(p.pid)); "
        "p.call(t._hang_forever, (), {}, source='x', stage='decode', timeout_s=600)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    parent = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() or not pidfile.read_text():
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.1)
        child = int(pidfile.read_text())
        time.sleep(0.5)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            # a dead child stays a zombie until init reaps it: check its state
            try:
                state = Path(f"/proc/{child}/stat").read_text().split()[2]
            except OSError:
                break
            if state == "Z":
                break
            time.sleep(0.2)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the decoder child outlived its killed parent")
    finally:
        if parent.poll() is None:
            parent.kill()
