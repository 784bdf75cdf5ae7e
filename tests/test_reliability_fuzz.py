"""A seeded, fixed-budget mutation fuzz of the decode entry points.

Tiny good recordings (MP4 H.264/AAC, Matroska, AVI MJPEG/A-law) are mutated (bit flips,
truncations, chunk duplication and removal, 32-bit header fields set to extremes, noise
spans; tests/badmedia.py:mutate) and fed to ``probe``, ``iter_windows`` (which
``decode_frames`` wraps; strictly, and decoding past damage as a scan does) and
``decode_audio``, as file objects (the S3 read path) and as
paths. Only a MediaError may come out. The cases run in the scan's decoder process
(avrl_batch/scan/isolate.py), so a case that crashes or hangs FFmpeg is reported as a
finding instead of killing pytest.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from badmedia import good_recording, mutate

from avrl_batch.scan.isolate import DecoderProcess, _Died

SEED = 20261127
CASES = 1000  # mutated inputs (each one through all three entry points): ~15 s here
CHUNK = 50  # cases per call into a decoder process
WORKERS = 2  # decoder processes fuzzing side by side
# a safety stop far above the usual time, so that a wedged machine fails the test (every case
# must run) instead of running into pytest's timeout
TIME_BUDGET_S = 300.0


def run_cases(seeds: list[bytes], first: int, count: int, seed: int, tmp: str) -> dict:
    """Fuzz cases ``first .. first + count - 1`` (runs in the decoder process): counts of
    each typed error and every escape of anything else, with the mutation that caused it."""
    from avrl_batch.media import MediaError, decode_audio, iter_windows, probe

    outcomes: dict[str, int] = {}
    samples: dict[str, str] = {}  # one message per outcome, for the log
    escapes: list[str] = []
    for case in range(first, first + count):
        rng = np.random.default_rng([seed, case])
        base = seeds[case % len(seeds)]
        what, data = mutate(base, rng)
        if case % 4 == 3:  # every 4th case through FFmpeg's own file I/O
            path = os.path.join(tmp, f"case{case}.bin")
            with open(path, "wb") as f:
                f.write(data)

            def src(path: str = path) -> object:
                return path
        else:

            def src(data: bytes = data) -> object:
                return io.BytesIO(data)

        for entry in ("probe", "iter_windows", "decode_audio"):
            try:
                if entry == "probe":
                    probe(src())
                elif entry == "iter_windows":
                    # log-mel on every other case: it is most of a case's time; two cases
                    # in three decode past damage as a scan does (spans into a list)
                    spans: list = []
                    for _ in iter_windows(src(), 0.0, 10.0, window_s=0.5, stride_s=0.5,
                                          frames=3, size=16, audio=case % 2 == 0,
                                          unreadable=spans if case % 3 else None):
                        pass
                    if any(not s.end_s > s.start_s for s in spans):
                        raise AssertionError(f"an empty unreadable span: {spans}")
                else:
                    decode_audio(src(), 0.0, 1.0)
                key = f"{entry}:ok"
            except MediaError as exc:
                key = f"{entry}:{type(exc).__name__}"
                samples.setdefault(key, f"case {case} ({what}): {exc.reason}")
            except BaseException as exc:  # noqa: BLE001 - what the fuzz is looking for
                key = f"{entry}:ESCAPE"
                tb = traceback.format_exception(exc)[-3:]
                escapes.append(f"case {case} ({what}) {entry}: {type(exc).__name__}: "
                               f"{exc} | {''.join(tb)}")
            outcomes[key] = outcomes.get(key, 0) + 1
        if case % 4 == 3:
            os.unlink(path)
    return {"outcomes": outcomes, "escapes": escapes, "samples": samples}


@pytest.mark.slow
def test_fuzz_decode_entry_points_only_raise_media_errors(
    tmp_path: Path, figures: Callable[[dict], None]
) -> None:
    seeds = [
        good_recording(tmp_path / f"seed.{ext}", 1.0, seed=i).read_bytes()
        for i, ext in enumerate(("mp4", "mkv", "avi"))
    ]
    outcomes: dict[str, int] = {}
    escapes: list[str] = []
    samples: dict[str, str] = {}
    findings: list[str] = []
    chunks = list(range(0, CASES, CHUNK))
    lock = threading.Lock()
    t0 = time.monotonic()
    done = 0

    def worker(tmp: str) -> None:
        nonlocal done, samples, escapes
        proc = DecoderProcess()
        try:
            while time.monotonic() - t0 < TIME_BUDGET_S:
                with lock:
                    if not chunks:
                        return
                    first = chunks.pop(0)
                try:
                    res = proc.call(run_cases, (seeds, first, CHUNK, SEED, tmp), {},
                                    source=f"fuzz cases {first}..", stage="fuzz", timeout_s=120)
                except _Died as died:  # FFmpeg crashed or hung on a case in this chunk
                    with lock:
                        findings.append(f"cases {first}..{first + CHUNK - 1}: {died.reason}")
                    continue
                with lock:
                    for k, v in res["outcomes"].items():
                        outcomes[k] = outcomes.get(k, 0) + v
                    escapes += res["escapes"]
                    samples = {**res["samples"], **samples}
                    done += CHUNK
        finally:
            proc.close()

    with tempfile.TemporaryDirectory() as tmp:
        threads = [threading.Thread(target=worker, args=(tmp,)) for _ in range(WORKERS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    elapsed = time.monotonic() - t0
    for key, text in sorted(samples.items()):
        print(f"  {key}: {text}")
    figures({"seed": SEED, "cases": done, "entry_points": 3, "calls": done * 3,
             "runtime_s": round(elapsed, 1), "escapes": len(escapes),
             "decoder_crashes_or_hangs": len(findings), "outcomes": dict(sorted(outcomes.items()))})
    assert not findings, findings
    assert not escapes, "\n".join(escapes[:10])
    assert done == CASES, f"only {done} of {CASES} cases ran within {TIME_BUDGET_S:.0f} s"
    # the fuzz reached past the container parser: some inputs decoded, some failed typed
    assert sum(v for k, v in outcomes.items() if k.endswith(":ok")) > 0
    assert sum(v for k, v in outcomes.items() if not k.endswith(":ok")) > 0
