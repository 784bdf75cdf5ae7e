"""Reliability at the scan level, on a real local Ray: the bad-media corpus scanned with good
files, poison files that crash or hang the decoder, hostile names and credentials, racing
scans and a killed driver.

The module runs its own local Ray whose workers decode with injected faults
(badmedia.decoder_faults_env: a FaultyDecoder in each worker); the markers only match files
named POISONABORT / POISONHANG, which only the poison test makes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from badmedia import Fault, decoder_faults_env, good_recording, make_corpus
from scanhelp import check_outputs, kill_scan_when, tiny_model

from avrl_batch.scan import ScanConfig, run_scan

pytestmark = pytest.mark.slow

EXACT = ["window_index", "start_s", "end_s", "label", "is_anomaly", "has_audio", "camera",
         "start_time"]


@pytest.fixture(scope="module")
def poison_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("poison") / "poison.log"


# distinctive fake credentials: the security test greps every output and log for them
FAKE_KEY_ID = "AKIARELIABILITY7TEST"
FAKE_SECRET = "reliabilitySecret/Value+9zQ"


@pytest.fixture(scope="module")
def ray_hooked(poison_log: Path) -> Iterator[None]:
    """A local Ray whose workers decode with the poison faults and carry the fake
    credentials (workers inherit the environment Ray starts with)."""
    import ray

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = FAKE_KEY_ID, FAKE_SECRET
    ray.shutdown()
    ray.init(
        # logical CPUs: two racing scans each hold an inference actor (1 CPU) and still need
        # decode tasks (with 2, both actors would take every CPU and the decodes would wait
        # forever); more would only start more decode workers on the 2 cores
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env=decoder_faults_env(
            (Fault("abort", "decode", "POISONABORT"), Fault("hang", "probe", "POISONHANG")),
            poison_log,
        ),
    )
    yield
    ray.shutdown()  # the next module's ray_local starts a plain one
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.avrl"
    tiny_model(path)
    return path


def _goods(root: Path) -> list[Path]:
    return [
        good_recording(root / f"good{i}" / f"good{i}_20260401T1{i}0000Z.mp4", 6.0, seed=100 + i)
        for i in range(3)
    ]


def test_bad_media_corpus_one_status_each_and_good_files_unaffected(
    ray_hooked: None, model: Path, tmp_path: Path, figures: Callable[[dict], None]
) -> None:
    mixed, alone = tmp_path / "mixed", tmp_path / "alone"
    goods = _goods(mixed)
    _goods(alone)  # the same recordings (same seeds) in a folder of their own
    bad = make_corpus(mixed)
    cfg = dict(model=str(model), segment_s=4.0, batch_size=4)
    s = run_scan(ScanConfig(source=str(mixed), out=str(tmp_path / "out_mixed"), **cfg))
    ref = run_scan(ScanConfig(source=str(alone), out=str(tmp_path / "out_alone"), **cfg))

    inputs = [str(p) for p in [*goods, *bad.values()]]
    got = check_outputs(str(tmp_path / "out_mixed"), inputs)  # one status per input
    assert s.sources_listed == len(inputs) == s.sources_ok + s.sources_failed
    status = {}
    for name, path in bad.items():
        entry = got[str(path)]
        if "error" in entry:
            err = entry["error"].to_pylist()[0]
            # a clear one-line reason that names the file
            assert err["message"] and "\n" not in err["message"], err
            assert str(path) in err["message"] and err["error_type"], err
            status[name] = f"{err['stage']}:{err['error_type']}"
        else:
            assert entry["windows"].num_rows > 0
            status[name] = "ok"
    # what each kind of damage must end as (an error row with this type, or scanned)
    expect_error = {
        "trunc_01": "Truncated", "trunc_50": "Truncated", "trunc_99": "Truncated",
        "zero_byte": "EmptyFile", "header_only": "Truncated",
        "random_bytes": "NotMedia", "audio_only": "NoVideoStream", "no_video": "NoVideoStream",
        "absurd_dims": "DecodeFailed", "over_pixel_cap": "ExceedsCaps",
    }
    for name, kind in expect_error.items():
        assert status[name].endswith(":" + kind), (name, status[name])
    assert status["avi_index_broken"] == "ok"  # FFmpeg reads an AVI without its index
    # a streamable file cut short keeps its first half, the rest is a Truncated span
    cut = got[str(bad["trunc_50_mkv"])]
    assert status["trunc_50_mkv"] == "ok" and cut["windows"].num_rows > 0
    assert cut["unreadable"]["reason"].to_pylist() == ["Truncated"]
    assert status["flipped"] != ""  # decodes with damage or fails: either way one status

    # good files: the same outputs as when scanned alone
    ref_got = check_outputs(
        str(tmp_path / "out_alone"), [str(alone / p.relative_to(mixed)) for p in goods]
    )
    for p in goods:
        mine = got[str(p)]
        theirs = ref_got[str(alone / p.relative_to(mixed))]
        a, b = mine["windows"], theirs["windows"]
        assert a.select(EXACT).equals(b.select(EXACT)), p
        # the inference batches hold other windows in the two scans, and a CPU matmul's
        # rounding depends on the batch: equal to float32 precision, not bit for bit
        np.testing.assert_allclose(np.array(a["probs"].to_pylist()),
                                   np.array(b["probs"].to_pylist()), rtol=0, atol=1e-5)
        ev = ["label", "start_s", "end_s", "n_windows"]
        assert mine["events"].select(ev).equals(theirs["events"].select(ev)), p
    assert ref.sources_ok == 3 and ref.sources_failed == 0
    assert isinstance(got[str(goods[0])]["windows"], pa.Table)
    figures({
        "inputs_tried": len(inputs), "bad_inputs": len(bad), "good_inputs": len(goods),
        "outputs": s.sources_ok, "error_rows": s.sources_failed,
        # check_outputs above: one status per input, one object per key, no duplicate rows
        "sources_lost": 0, "duplicates": 0, "status_by_kind": status,
    })


def test_poison_files_are_quarantined_after_two_attempts_and_the_scan_finishes(
    ray_hooked: None, model: Path, tmp_path: Path, poison_log: Path,
    figures: Callable[[dict], None],
) -> None:
    """One file aborts the decoder (os.abort() in the decoder process, while decoding), one
    hangs it (sleeps forever, while probing); both are real, good recordings marked by name
    for the injected faults. The scan finishes with each as one error row after 2 attempts, and
    the good files scanned."""
    rec = tmp_path / "rec"
    goods = _goods(rec)
    abort = good_recording(rec / "POISONABORT" / "cam7" / "cam7_20260401T070000Z.mp4", 4.0)
    hang = good_recording(rec / "POISONHANG" / "cam8" / "cam8_20260401T080000Z.mp4", 4.0)
    poison_log.unlink(missing_ok=True)
    t0 = time.monotonic()
    s = run_scan(ScanConfig(source=str(rec), model=str(model), out=str(tmp_path / "out"),
                            segment_s=4.0, batch_size=4, decode_timeout_s=5.0))
    wall_s = time.monotonic() - t0
    got = check_outputs(str(tmp_path / "out"), [str(p) for p in [*goods, abort, hang]])
    assert (s.sources_ok, s.sources_failed) == (3, 2)
    crashed = got[str(abort)]["error"].to_pylist()[0]
    assert (crashed["stage"], crashed["error_type"]) == ("decode", "DecoderCrashed")
    assert "SIGABRT" in crashed["message"] and "on 2 attempts" in crashed["message"]
    hung = got[str(hang)]["error"].to_pylist()[0]
    assert (hung["stage"], hung["error_type"]) == ("probe", "DecoderTimeout")
    assert "no progress for 5 s" in hung["message"] and "on 2 attempts" in hung["message"]
    # each poison file reached the decoder exactly twice (one segment each)
    lines = poison_log.read_text().splitlines()
    assert sorted(lines) == sorted([f"decode {abort}"] * 2 + [f"probe {hang}"] * 2), lines
    for p in goods:
        assert got[str(p)]["windows"]["window_index"].to_pylist() == [0, 1, 2]
    figures({
        "inputs": 5, "poison_files": 2, "faults_injected": len(lines),
        "decoder_attempts_per_poison_file": 2, "outputs": s.sources_ok,
        "error_rows": s.sources_failed, "sources_lost": 0, "duplicates": 0,
        "scan_s": round(wall_s, 1), "decode_timeout_s": 5.0,
    })


# object keys an attacker (or a careless uploader) can create: S3 keys may contain "../"
HOSTILE_KEYS = [
    "../../../../../tmp/avrl-escape/escape_20260401T010000Z.mp4",
    "%2e%2e/%2e%2e/%2e%2e_20260401T020000Z.mp4",
    "..\\..\\win/..\\.._20260401T030000Z.mp4",
    "/etc/passwd_20260401T040000Z.mp4",
    "./x/../cam/..%2f..%2fcam_20260401T050000Z.mp4",
]


def test_hostile_names_stay_under_out_and_no_credential_leaks(
    ray_hooked: None, model: Path, tmp_path: Path, s3_endpoint: str, s3_bucket: str,
    capfd: pytest.CaptureFixture[str], figures: Callable[[dict], None],
) -> None:
    """Sources whose keys (and so camera ids) hold ../, %2e%2e, backslashes and absolute
    paths write only under OUT; the fake credentials appear in no output, manifest, error
    row, console output or Ray log of the scan."""
    import boto3
    import ray

    from avrl_batch.cli import main

    src = tmp_path / "src.mp4"
    good_recording(src, 4.0, seed=5)
    data = src.read_bytes()
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    uris = []
    for key in HOSTILE_KEYS:
        s3.put_object(Bucket=s3_bucket, Key="archive/" + key, Body=data)
        uris.append(f"s3://{s3_bucket}/archive/{key}")
    s3.put_object(Bucket=s3_bucket, Key="archive/bad/bad_20260401T060000Z.mp4",
                  Body=b"not a video" * 100)  # an error row, with the URI in its message
    uris.append(f"s3://{s3_bucket}/archive/bad/bad_20260401T060000Z.mp4")
    escape = Path("/tmp/avrl-escape")
    existed = escape.exists()
    root = tmp_path / "a" / "b" / "c"
    out = root / "out"
    before = {p for p in tmp_path.rglob("*")}
    capfd.readouterr()
    # the camera is everything before _<start>: the raw ids keep ../ and %2e (backslashes are
    # read as separators; keys are not percent-decoded)
    main(["scan", f"s3://{s3_bucket}/archive/", "--model", str(model), "--out", str(out),
          "--endpoint-url", s3_endpoint, "--segment", "4", "--batch-size", "4",
          "--camera-pattern", r"archive/(?P<camera>.*)_(?P<start>\d{8}T\d{6}Z)\.mp4$",
          "--json"])
    console = capfd.readouterr()
    got = check_outputs(str(out), uris)
    assert sum("windows" in g for g in got.values()) == len(HOSTILE_KEYS)
    cams = {c for g in got.values() if "windows" in g for c in g["windows"]["camera"].to_pylist()}
    assert sum(".." in c for c in cams) >= 3, cams  # the raw ids climb; the names must not
    assert "%2e%2e/%2e%2e/%2e%2e" in cams, cams
    # nothing written outside OUT, however the names resolve
    out_real = out.resolve()
    for p in set(tmp_path.rglob("*")) - before:
        if p.is_file():
            assert p.resolve().is_relative_to(out_real), p
    assert existed or not escape.exists()
    assert not (tmp_path / "a" / "b" / "tmp").exists() and not (root / "win").exists()

    # no credential anywhere: outputs (Parquet, manifest), console, this Ray session's logs
    checked = _grep_no_credentials(out)
    assert list(out.glob("_scans/*.json")) and checked >= 2 * len(HOSTILE_KEYS) + 2
    for text in (console.out, console.err):
        assert FAKE_KEY_ID not in text and FAKE_SECRET not in text
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    n_logs = _grep_no_credentials(logs)
    assert n_logs > 0
    figures({"hostile_keys": len(HOSTILE_KEYS), "files_outside_out": 0,
             "files_grepped_for_credentials": checked + n_logs, "credentials_found": 0})


def _grep_no_credentials(root: Path) -> int:
    """Asserts that no file under ``root`` holds the fake key id or secret; returns how many
    files were read."""
    secrets = [FAKE_KEY_ID.encode(), FAKE_SECRET.encode()]
    n = 0
    for p in root.rglob("*"):
        if p.is_file():
            blob = p.read_bytes()
            assert not any(s in blob for s in secrets), p
            n += 1
    return n


def _avrl(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("avrl")), *args]


def _valid_parquet_everywhere(out: str, endpoint_url: str | None = None) -> int:
    """Every final object under OUT/windows, events, errors reads as Parquet (a crash or a
    race never leaves a truncated one); returns how many there are."""
    import io

    import pyarrow.parquet as pq

    from avrl_batch import storage

    files = [f for f in storage.list_files(out, endpoint_url=endpoint_url)
             if f.endswith(".parquet")]
    for f in files:
        pq.read_table(io.BytesIO(storage.read_bytes(f, endpoint_url=endpoint_url)))
    return len(files)


def test_two_scans_racing_into_one_output_locally_and_on_s3(
    ray_hooked: None, model: Path, tmp_path: Path, s3_endpoint: str, s3_bucket: str,
    figures: Callable[[dict], None],
) -> None:
    """Two scans of the same source into the same OUT at the same time end with one object
    per key, valid Parquet, no duplicate rows. Local folder: two `avrl scan` processes (two
    drivers). Then S3 (moto server): two scans on two threads of this driver; there the
    winner is decided by the server's conditional put (If-None-Match), which two threads
    reach just as two processes do, and this driver's Ray workers are already up."""
    import ray

    from avrl_batch import storage

    rec = tmp_path / "rec"
    paths = [good_recording(rec / f"cam{i}" / f"cam{i}_20260401T0{i}0000Z.mp4", 6.0, seed=i)
             for i in range(4)]
    s3_sources = []
    for p in paths:
        uri = f"s3://{s3_bucket}/rec/{p.relative_to(rec).as_posix()}"
        storage.write_atomic(uri, p.read_bytes(), endpoint_url=s3_endpoint)
        s3_sources.append(uri)
    local_out, s3_out = str(tmp_path / "out"), f"s3://{s3_bucket}/out"
    cmd = _avrl("scan", str(rec), "--model", str(model), "--out", local_out, "--segment", "6",
                "--batch-size", "4", "--address", ray.get_runtime_context().gcs_address,
                "--json")
    t0 = time.monotonic()
    procs = [subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(2)]
    local_results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=400)
        assert p.returncode == 0, stderr.decode()[-3000:]
        # a scan's console holds nothing a user cannot act on (commands/console.py)
        assert b"constructor arguments in the object store" not in stderr, stderr.decode()
        local_results.append(json.loads(stdout))
    local_s = time.monotonic() - t0
    s3_results: list[dict] = []
    s3_errors: list[BaseException] = []

    def s3_scan() -> None:
        try:
            s = run_scan(ScanConfig(source=f"s3://{s3_bucket}/rec/", model=str(model),
                                    out=s3_out, endpoint_url=s3_endpoint, segment_s=6.0,
                                    batch_size=4))
            s3_results.append(s.to_dict())
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            s3_errors.append(exc)

    t0 = time.monotonic()
    threads = [threading.Thread(target=s3_scan) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=400)
    assert not s3_errors, s3_errors
    s3_s = time.monotonic() - t0
    races = {"local": (local_out, [str(p) for p in paths], None, local_results, local_s),
             "s3": (s3_out, s3_sources, s3_endpoint, s3_results, s3_s)}
    fig: dict[str, object] = {}
    for where, (out, sources, endpoint, both, wall_s) in races.items():
        assert len(both) == 2, where
        got = check_outputs(out, sources, endpoint_url=endpoint)  # one object per key, no dups
        assert all("windows" in g for g in got.values())
        n_objects = _valid_parquet_everywhere(out, endpoint)
        assert n_objects == 2 * len(sources)
        # between them the two scans finished every source; a source both scanned was
        # written once (the second writer found the completion marker and left it alone)
        assert sum(r["sources_ok"] + r["sources_skipped"] for r in both) >= len(sources)
        for g in got.values():
            assert g["windows"]["window_index"].to_pylist() == [0, 1, 2]
        fig[where] = {"sources": len(sources), "scans": 2,
                      "racers": "processes" if where == "local" else "threads",
                      "wall_s": round(wall_s, 1),
                      "sources_ok_per_scan": [r["sources_ok"] for r in both],
                      "objects": n_objects, "objects_per_key": 1, "duplicates": 0,
                      "truncated": 0}
    figures(fig)


def test_driver_killed_at_half_then_rerun_reprocesses_only_the_rest(
    ray_hooked: None, model: Path, tmp_path: Path, figures: Callable[[dict], None]
) -> None:
    """kill -9 `avrl scan` once about half the sources are done: every object left under a
    final key is whole Parquet, and the rerun scans only the unfinished sources."""
    import ray

    rec = tmp_path / "rec"
    n = 8
    paths = [str(good_recording(rec / f"cam{i}" / f"cam{i}_20260401T0{i}0000Z.mp4", 4.0,
                                seed=i)) for i in range(n)]
    out = tmp_path / "out"
    cmd = _avrl("scan", str(rec), "--model", str(model), "--out", str(out), "--segment", "4",
                "--batch-size", "2", "--address", ray.get_runtime_context().gcs_address,
                "--json")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_first = kill_scan_when(proc, out, n // 2)
    _valid_parquet_everywhere(str(out))  # nothing truncated under a final key
    assert 1 <= done_first < n
    t0 = time.monotonic()
    s = run_scan(ScanConfig(source=str(rec), model=str(model), out=str(out), segment_s=4.0,
                            batch_size=2))
    rerun_s = time.monotonic() - t0
    assert s.sources_skipped == done_first and s.sources_ok == n - done_first
    check_outputs(str(out), paths)
    figures({"sources": n, "done_at_kill": done_first, "reprocessed": s.sources_ok,
             "fraction_reprocessed": round(s.sources_ok / n, 3), "rerun_s": round(rerun_s, 1),
             "sources_lost": 0, "duplicates": 0})
