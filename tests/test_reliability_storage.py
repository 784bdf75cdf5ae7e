"""Storage failures while reading S3, through a real HTTP proxy in front of the moto server
(tests/s3proxy.py: loopback only, every hold bounded) that delays, stalls, resets and
throttles chosen requests.

A read that stalls, is throttled or reset is retried within its own deadlines
(storage.S3Reads), shorter than the decoder watchdog; one that still fails is a transient
StorageError: reported, never an error row, and the next run scans the file. A watchdog
silence spent waiting for storage is storage's fault, not the file's. Ranged GETs carry
If-Match with the listed ETag.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from s3proxy import FaultyProxy, Request, Rule, ranged_get_of

from avrl_batch import storage
from avrl_batch.errors import StorageError
from avrl_batch.scan.plan import TRANSIENT_ERRORS

# short deadlines, so that a stall costs seconds: budget_s = 4 * (1.5 + 0.5) + 0.35 = 8.35 s
FAST = storage.S3Reads(
    connect_timeout_s=1.0, read_timeout_s=0.5, attempt_deadline_s=1.5, attempts=4,
    backoff_s=0.05, backoff_max_s=0.2,
)


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultyProxy]:
    with FaultyProxy(s3_endpoint, max_hold_s=20.0) as p:
        yield p


def _blob(s3_endpoint: str, bucket: str, name: str, size: int = 3 << 20) -> tuple[str, bytes]:
    uri = f"s3://{bucket}/{name}"
    data = np.random.default_rng(len(name)).integers(0, 256, size, dtype=np.uint8).tobytes()
    storage.write_atomic(uri, data, endpoint_url=s3_endpoint)
    return uri, data


def _read_all(uri: str, endpoint: str, **kw: object) -> tuple[bytes, storage.CountingReader]:
    """The whole object in 32 KiB reads, as PyAV asks for it."""
    with storage.open_source(uri, endpoint_url=endpoint, **kw) as f:  # type: ignore[arg-type]
        return b"".join(iter(lambda: f.read(32 * 1024), b"")), f


# ---------------------------------------------------------------------------------------------
# one ranged read


@pytest.mark.parametrize("action", ["stall", "stall-body", "reset", "throttle"])
def test_a_failed_ranged_get_is_retried_and_the_bytes_are_right(
    proxy: FaultyProxy, s3_endpoint: str, s3_bucket: str, action: str
) -> None:
    """The 2nd and 3rd ranged GETs stall (no answer, or half a body), are reset or get 503
    SlowDown: each is retried after a backoff, the bytes equal the object's, and the cost
    is bounded by the read deadlines."""
    uri, data = _blob(s3_endpoint, s3_bucket, f"{action}.bin")
    rule = proxy.add(Rule(ranged_get_of(f"{action}.bin"), action, skip=1, times=2))
    t0 = time.monotonic()
    got, f = _read_all(uri, proxy.url, reads=FAST)
    elapsed = time.monotonic() - t0
    assert got == data
    assert rule.fired == 2 and f.retries == 2
    assert elapsed < 2 * (FAST.attempt_deadline_s + FAST.read_timeout_s) + 5.0


def test_a_read_that_stalls_on_every_attempt_is_one_transient_storage_error(
    proxy: FaultyProxy, s3_endpoint: str, s3_bucket: str
) -> None:
    """Every ranged GET stalls: after ``attempts`` tries, within the read budget, one
    StorageError line that says the source is retried on the next run; its type is one
    a scan treats as transient."""
    uri, _ = _blob(s3_endpoint, s3_bucket, "dead.bin")
    rule = proxy.add(Rule(ranged_get_of("dead.bin"), "stall"))
    t0 = time.monotonic()
    with pytest.raises(StorageError) as err:
        _read_all(uri, proxy.url, reads=FAST)
    elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert "\n" not in msg and "failed 4 times" in msg and "retried on the next run" in msg
    assert rule.fired == FAST.attempts
    assert type(err.value).__name__ in TRANSIENT_ERRORS
    assert elapsed <= FAST.budget_s + 2.0


def test_latency_on_every_request_only_slows_reads(
    proxy: FaultyProxy, s3_endpoint: str, s3_bucket: str
) -> None:
    """0.2 s added to every request (under the read timeout): no retry, same bytes."""
    uri, data = _blob(s3_endpoint, s3_bucket, "slow.bin", 1 << 20)
    proxy.add(Rule(lambda r: True, "delay", delay_s=0.2))
    got, f = _read_all(uri, proxy.url, reads=FAST)
    assert got == data and f.retries == 0 and f.requests >= 2


def test_reads_fit_in_half_the_decoder_watchdog() -> None:
    """The default reads give up in under half the default --decode-timeout; a shorter
    watchdog scales every deadline and backoff down, the attempts stay."""
    default = storage.S3Reads()
    assert default.budget_s == pytest.approx(57.75)
    assert default.within(120.0) is default
    short = default.within(20.0)
    assert short.budget_s == pytest.approx(10.0)
    assert short.attempts == default.attempts
    assert short.read_timeout_s < default.read_timeout_s


# ---------------------------------------------------------------------------------------------
# pinned to the listed version


def test_every_ranged_get_carries_the_listed_etag_and_a_change_is_transient(
    proxy: FaultyProxy, s3_endpoint: str, s3_bucket: str
) -> None:
    """Opened with the listed version, the HEAD and every ranged GET carry ``If-Match`` with
    that ETag. Replaced after the listing: the open fails; replaced mid-read: the next GET
    fails; both are one StorageError line of a transient type."""
    uri, data = _blob(s3_endpoint, s3_bucket, "pinned.bin")
    [listed] = storage.list_sources(uri, endpoint_url=s3_endpoint)
    got, f = _read_all(uri, proxy.url, version=listed.version, reads=FAST)
    assert got == data
    mine = [r for r in proxy.log if r.path.endswith("/pinned.bin") and r.method in ("GET", "HEAD")]
    assert len(mine) == 1 + f.requests
    assert {r.headers.get("if-match") for r in mine} == {f'"{listed.version}"'}

    with storage.open_source(uri, endpoint_url=proxy.url, version=listed.version,
                             reads=FAST) as f:
        f.read(100)
        storage.write_atomic(uri, b"another version", endpoint_url=s3_endpoint)
        f.seek(2 << 20)
        with pytest.raises(StorageError, match="changed while it was being read") as mid:
            f.read(10)
    with pytest.raises(StorageError, match="no longer the version the listing saw") as late:
        storage.open_source(uri, endpoint_url=proxy.url, version=listed.version, reads=FAST)
    for e in (mid.value, late.value):
        assert "\n" not in str(e) and type(e).__name__ in TRANSIENT_ERRORS


# ---------------------------------------------------------------------------------------------
# s3a:// and s3n://


@pytest.mark.parametrize("scheme", ["s3a", "s3n"])
def test_s3a_and_s3n_work_like_s3(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path, scheme: str
) -> None:
    """Listing, joins, reads, writes, deletes and the pyarrow filesystem under an s3a://
    or s3n:// root name the same objects as s3://; list_files gives URIs in the root's
    form, equal to what join builds (so output keys compare equal); sources keep their one
    s3:// identity."""
    ep = s3_endpoint
    root = f"{scheme}://{s3_bucket}/out"
    key = storage.join(root, "events", "date=2026-01-01", "k.parquet")
    assert key.startswith(f"{scheme}://")
    assert storage.write_atomic(key, b"x" * 10, endpoint_url=ep)
    assert storage.read_bytes(key.replace(f"{scheme}://", "s3://", 1), endpoint_url=ep) == b"x" * 10
    assert storage.list_files(storage.join(root, "events"), endpoint_url=ep) == [key]
    assert storage.list_files(root + "/", endpoint_url=ep) == [key]
    assert storage.exists(key, endpoint_url=ep)
    [src] = storage.list_sources(root, include=["*.parquet"], endpoint_url=ep)
    assert src.uri == f"s3://{s3_bucket}/out/events/date=2026-01-01/k.parquet"
    fs, path = storage.filesystem(key, endpoint_url=ep)
    assert path == f"{s3_bucket}/out/events/date=2026-01-01/k.parquet"
    with storage.open_source(key, endpoint_url=ep) as f:
        assert f.read() == b"x" * 10
    storage.delete(key, endpoint_url=ep)
    assert storage.list_files(root, endpoint_url=ep) == []


# ---------------------------------------------------------------------------------------------
# the decoder watchdog: storage's fault or the file's


SPEC_KW = {"window_s": 2.0, "stride_s": 2.0, "frames": 4, "size": 32, "audio_examples": 2}


@pytest.fixture
def recording_on_s3(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> tuple[str, str]:
    """A 6 s recording on moto: (its URI, its listed version)."""
    from badmedia import good_recording

    path = good_recording(tmp_path / "cam1" / "cam1_20260101T000000Z.mp4", 6.0)
    uri = f"s3://{s3_bucket}/rec/cam1/{path.name}"
    storage.write_atomic(uri, path.read_bytes(), endpoint_url=s3_endpoint)
    [src] = storage.list_sources(uri, endpoint_url=s3_endpoint)
    return uri, src.version


def _segment(uri: str, version: str) -> dict[str, object]:
    from avrl_batch.scan.plan import Segment

    return Segment("k", uri, 0, 1, 0.0, 6.0, version).to_row()


def test_a_watchdog_silence_spent_waiting_for_storage_is_not_the_files_fault(
    proxy: FaultyProxy, recording_on_s3: tuple[str, str]
) -> None:
    """The decoder's reads stall with deadlines longer than the watchdog (1.5 s): the
    silence was spent in a storage read, so it is StorageStalled (transient, "retried on
    the next run"), not the DecoderTimeout that quarantines a file. With the reads the scan
    uses (fitted inside the watchdog) storage gives up first: a StorageError trailer."""
    from avrl_batch.scan import isolate
    from avrl_batch.scan.decode import _decode_segment_in_child, decode_segment_isolated
    from avrl_batch.scan.isolate import DecoderProcess, Isolation, StorageStalled
    from avrl_batch.scan.plan import WindowSpec

    uri, version = recording_on_s3
    spec = WindowSpec(**SPEC_KW)
    proxy.add(Rule(ranged_get_of(uri.rsplit("/", 1)[1]), "stall"))
    slow = storage.S3Reads(read_timeout_s=60.0, attempt_deadline_s=60.0)
    proc = DecoderProcess()
    try:
        t0 = time.monotonic()
        with pytest.raises(StorageStalled) as stalled:
            list(isolate.stream_isolated(
                _decode_segment_in_child, _segment(uri, version), spec, source=uri,
                stage="decode", isolation=Isolation(timeout_s=1.5), proc=proc,
                endpoint_url=proxy.url, reads=slow,
            ))
        assert time.monotonic() - t0 < 30
        msg = str(stalled.value)
        assert "storage, not the file" in msg and "retried on the next run" in msg
        assert "quarantined" not in msg and proc.starts == 2  # retried once, in a fresh child
        assert type(stalled.value).__name__ in TRANSIENT_ERRORS

        rows = list(decode_segment_isolated(
            _segment(uri, version), spec, endpoint_url=proxy.url,
            isolation=Isolation(timeout_s=6.0), proc=proc,
        ))
        assert [r["kind"] for r in rows] == ["error"]
        assert rows[0]["error_type"] == "StorageError", rows[0]["message"]
        assert rows[0]["error_type"] in TRANSIENT_ERRORS
    finally:
        proc.close()


def test_a_decode_whose_reads_stall_midway_ends_as_a_transient_trailer(
    proxy: FaultyProxy, recording_on_s3: tuple[str, str]
) -> None:
    """Reads stall after the first few (the header read, then mid-file): the windows
    decoded before are sent, then one StorageError trailer; once the proxy is healthy
    again the same segment decodes whole."""
    from avrl_batch.scan.decode import decode_segment_isolated
    from avrl_batch.scan.isolate import DecoderProcess, Isolation
    from avrl_batch.scan.plan import WindowSpec

    uri, version = recording_on_s3
    spec = WindowSpec(**SPEC_KW)
    rule = proxy.add(Rule(ranged_get_of(uri.rsplit("/", 1)[1]), "stall-body", skip=2))
    proc = DecoderProcess()
    try:
        rows = list(decode_segment_isolated(
            _segment(uri, version), spec, endpoint_url=proxy.url,
            isolation=Isolation(timeout_s=8.0), proc=proc,
        ))
        assert rows[-1]["kind"] == "error" and rows[-1]["error_type"] == "StorageError"
        assert rule.fired == storage.S3Reads().attempts  # the failure is sticky: no re-reads
        proxy.clear()
        rows = list(decode_segment_isolated(
            _segment(uri, version), spec, endpoint_url=proxy.url,
            isolation=Isolation(timeout_s=8.0), proc=proc,
        ))
        assert [r["kind"] for r in rows] == ["window"] * 3 + ["done"]
    finally:
        proc.close()


# ---------------------------------------------------------------------------------------------
# writes


def _put_of(part: str, also: str = "") -> Callable[[Request], bool]:
    """Matches PUTs whose path holds ``part`` (and ``also``)."""
    return lambda req: req.method == "PUT" and part in req.path and also in req.path


def test_a_failed_output_or_error_row_write_is_reported_and_redone_by_the_next_run(
    ray_local: None,
    proxy: FaultyProxy,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every PUT of an error object and of one source's events object is throttled (503
    SlowDown): the scan goes on, writes the rest, reports each failure in one line and in
    the manifest, and marks neither source done, so the next run redoes exactly those two;
    a manifest that cannot be written still leaves a summary."""
    from scanhelp import check_outputs, recording, tiny_model

    from avrl_batch.scan import ScanConfig, run_scan, sink

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # one attempt per PUT: no backoff to wait out
    root = tmp_path / "rec"
    good = str(recording(root / "cam01" / "cam01_20260301T080000Z.mp4", 4, seed=1))
    lost = str(recording(root / "cam02" / "cam02_20260301T080000Z.mp4", 4, seed=2))
    bad = root / "cam03" / "cam03_20260301T080000Z.mp4"
    bad.parent.mkdir()
    bad.write_bytes(b"not a recording " * 64)
    tiny_model(tmp_path / "tiny.avrl")
    out = f"s3://{s3_bucket}/scans"
    cfg = ScanConfig(
        source=str(root), model=str(tmp_path / "tiny.avrl"), out=out, endpoint_url=proxy.url
    )
    proxy.add(Rule(_put_of("/errors/"), "throttle"))
    proxy.add(Rule(_put_of("/events/", "/cam02_"), "throttle"))

    first = run_scan(cfg)
    assert (first.sources_ok, first.sources_failed) == (1, 2), first.errors
    assert sorted((w["what"], w["uri"]) for w in first.write_failures) == [
        ("error row", str(bad)), ("outputs", lost)
    ]
    errors = {e["source_uri"]: e for e in first.errors}
    assert errors[str(bad)]["stage"] == errors[lost]["stage"] == "write"
    assert "NotMedia" in errors[str(bad)]["message"]  # what the row would have said
    assert all(e["error_type"] in TRANSIENT_ERRORS for e in first.errors)
    assert all("\n" not in e["message"] for e in first.errors)
    manifest = json.loads(storage.read_bytes(first.manifest, endpoint_url=proxy.url))
    assert len(manifest["write_failures"]) == 2
    done, failed = sink.finished_keys(out, endpoint_url=proxy.url)
    assert len(done) == 1 and not failed  # only the good source is done

    proxy.clear()
    proxy.add(Rule(_put_of("/_scans/"), "throttle"))
    again = run_scan(cfg)
    assert (again.sources_skipped, again.sources_ok, again.sources_failed) == (1, 1, 1)
    assert again.write_failures == [] and again.errors[0]["error_type"] == "NotMedia"
    assert again.manifest is None and again.manifest_error
    assert again.manifest_error.startswith("StorageError")
    got = check_outputs(out, [good, lost, str(bad)], endpoint_url=proxy.url)
    assert got[str(bad)]["error"]["error_type"][0].as_py() == "NotMedia"


def test_small_puts_send_their_body_at_once_and_large_ones_ask_first(
    proxy: FaultyProxy, s3_bucket: str
) -> None:
    """A scan output (a few KB) goes in one round trip through obstore, without ``Expect:
    100-continue``; a body above storage.SMALL_PUT_BYTES goes through boto3, which asks before
    it sends it. Both arrive whole, conditional writes included."""
    small = b"s" * 5000
    large = b"L" * (storage.SMALL_PUT_BYTES + 1)
    base = f"s3://{s3_bucket}/expect"
    assert storage.write_atomic(f"{base}/small", small, if_absent=True, endpoint_url=proxy.url)
    assert not storage.write_atomic(f"{base}/small", b"x", if_absent=True,
                                    endpoint_url=proxy.url)
    assert storage.write_atomic(f"{base}/large", large, endpoint_url=proxy.url)
    puts = {r.path.rsplit("/", 1)[-1]: r.headers for r in proxy.log if r.method == "PUT"}
    assert "expect" not in puts["small"]
    assert puts["large"].get("expect") == "100-continue"
    assert storage.read_bytes(f"{base}/small", endpoint_url=proxy.url) == small
    assert storage.read_bytes(f"{base}/large", endpoint_url=proxy.url) == large
