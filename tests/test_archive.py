"""Archive scale: bookkeeping from listings (a no-op rerun reads no output object), queries
that list only the partitions they need and stream their rows, the writer pool (compaction:
test_compact.py).

Real parts: the moto S3 server behind the logging proxy (tests/s3proxy.py) counts every
request a rerun makes; outputs are written by the scan sink's own writers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from s3proxy import FaultyProxy, Request
from scanhelp import camera_days, finished, tiny_model

from avrl_batch import storage
from avrl_batch.classes import SHADE
from avrl_batch.scan import ScanConfig, run_scan, sink
from avrl_batch.scan.naming import key_source_id, legacy_source_key, source_key
from avrl_batch.scan.plan import SourceTask, keyed_sources

UTC = timezone.utc


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultyProxy]:
    with FaultyProxy(s3_endpoint, max_hold_s=20.0) as p:
        yield p


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    path = tmp_path_factory.mktemp("model") / "tiny.avrl"
    model_id = tiny_model(path)
    return str(path), model_id


def _object_gets(log: list[Request], bucket: str, prefix: str) -> list[str]:
    return [r.path for r in log if r.method == "GET" and r.path.startswith(f"/{bucket}/{prefix}")]


def _lists(log: list[Request], bucket: str) -> int:
    return sum(r.method == "GET" and r.path.rstrip("/") == f"/{bucket}" for r in log)


def test_keys_carry_the_source_id() -> None:
    uri = "s3://b/cam01/2026-03-01/05.mp4"
    k1, k2 = source_key(uri, "e1", "m1"), source_key(uri, "e2", "m1")
    assert k1.startswith("05-") and k1 != k2
    assert key_source_id(k1) == key_source_id(k2)  # versions of one file, one model
    assert key_source_id(source_key(uri, "e1", "m2")) != key_source_id(k1)
    assert key_source_id(source_key("s3://b/cam02/2026-03-01/05.mp4", "e1", "m1")) != \
        key_source_id(k1)
    assert key_source_id(legacy_source_key(uri, "e1", "m1")) is None
    assert key_source_id("05-not-a-key") is None


def test_noop_rerun_reads_no_output_object(
    s3_bucket: str, s3_endpoint: str, proxy: FaultyProxy, model: tuple[str, str]
) -> None:
    """Every listed source finished (a camera/date/hour layout, where every file stem is
    shared by many files, and a history of days not listed): the rerun lists, reads the
    model and the settings, writes its manifest, and GETs no windows, events or error object;
    a changed file's old version is found by reading that one old events object."""
    model_path, model_id = model
    src, out = f"s3://{s3_bucket}/rec", f"s3://{s3_bucket}/scans"
    day = datetime(2026, 3, 1, tzinfo=UTC)
    for cam in range(3):
        for d in range(2):  # day 0: history not listed by the rerun; day 1: listed
            for hour in range(8):
                name = f"cam{cam:02d}/{(day + timedelta(days=d)):%Y-%m-%d}/{hour:02d}.mp4"
                storage.write_atomic(f"{src}/{name}", name.encode(), endpoint_url=s3_endpoint)
    listed = storage.list_sources(f"{src}", endpoint_url=s3_endpoint)
    for s in listed:
        cam = s.uri.split("/")[-3]
        finished(out, s.uri, s.version, model_id, day, cam, endpoint_url=s3_endpoint)
    cfg = ScanConfig(source=src, model=model_path, out=out, endpoint_url=proxy.url,
                     include=("*.mp4",), camera_pattern=r"(?P<camera>cam\d+)/")
    # and a rerun over one camera-day only (a nightly scan of new footage)
    cfg_day = replace(cfg, source=f"{src}/cam00/2026-03-02")
    for c in (cfg, cfg_day):
        proxy.log.clear()
        summary = run_scan(c)
        assert summary.sources_ok == 0 and summary.sources_skipped == summary.sources_listed > 0
        assert summary.superseded == [] and summary.write_failures == []
        assert _object_gets(proxy.log, s3_bucket, "scans/events") == []
        assert _object_gets(proxy.log, s3_bucket, "scans/windows") == []
        assert _object_gets(proxy.log, s3_bucket, "scans/errors") == []
        # sources, events/, errors/, _scans/ (no settings record yet: the manifests looked at)
        assert _lists(proxy.log, s3_bucket) <= 5
    # one file changes: its old version is the one object read
    changed = listed[5]
    storage.write_atomic(changed.uri, b"new content", endpoint_url=s3_endpoint)
    now = storage.list_sources(src, endpoint_url=s3_endpoint)
    keyed = keyed_sources(now, model_id)
    done, failed = sink.finished_objects(out, endpoint_url=proxy.url)
    proxy.log.clear()
    stale = sink.find_superseded(out, keyed, done, failed, model_id, endpoint_url=proxy.url)
    assert [(s.source_uri, s.version) for s in stale] == [(changed.uri, changed.version)]
    old_key = source_key(changed.uri, changed.version, model_id)
    assert len(_object_gets(proxy.log, s3_bucket, "scans/")) == 1
    assert _object_gets(proxy.log, s3_bucket, "scans/")[0].endswith(f"{old_key}.parquet")


def test_legacy_keys_count_as_finished(tmp_path: Path, model: tuple[str, str]) -> None:
    """Outputs written under the key form without a source id are the listed source's own:
    adopted as finished (nothing rescanned), and as an older version found by their stem."""
    _, model_id = model
    out = str(tmp_path / "out")
    uri, day = "/rec/cam01/cam01_20260301T080000Z.mp4", datetime(2026, 3, 1, 8, tzinfo=UTC)
    src = storage.Source(uri, 1, "1-1")
    legacy = legacy_source_key(uri, "1-1", model_id)
    finished(out, uri, "1-1", model_id, day, "cam01", key=legacy)
    keyed = keyed_sources([src], model_id)
    done, failed = sink.finished_objects(out)
    sink.adopt_legacy(keyed, done, failed, model_id)
    assert set(done) == {keyed[0][1]}
    # the file changed: the legacy object is its older version
    done, failed = sink.finished_objects(out)
    changed = keyed_sources([storage.Source(uri, 2, "2-2")], model_id)
    stale = sink.find_superseded(out, changed, done, failed, model_id)
    assert [(s.key, s.version) for s in stale] == [(legacy, "1-1")]


# ---------------------------------------------------------------------------------------------
# queries at scale


def _partitioned_out(out: str, model_id: str, *, endpoint_url: str | None = None,
                     cameras: int = 3, days: int = 3, uri_pad: int = 0,
                     windows: int = 2) -> list[SourceTask]:
    """Two sources per (camera, day), written by the sink's writers; ``uri_pad`` lengthens
    every source URI (a result that is large in memory from a small tree)."""
    return [
        finished(out, uri, "v1", model_id, start, cam, endpoint_url=endpoint_url,
                 windows=windows)
        for _, _, cam, uri, start in camera_days(cameras, days, "p" * uri_pad)
    ]


def test_camera_day_query_lists_only_its_partitions(
    s3_bucket: str, s3_endpoint: str, proxy: FaultyProxy
) -> None:
    """--camera and --since/--until walk date=/camera= folders one level at a time: no
    listing reaches into another day's or camera's folder, and the rows are those of a
    query over the whole tree with the same filters."""
    from avrl_batch.query import QueryFilters, run_query

    out = f"s3://{s3_bucket}/scans"
    _partitioned_out(out, "m1", endpoint_url=s3_endpoint)
    f = QueryFilters(cameras=("cam01",), since=datetime(2026, 3, 2, tzinfo=UTC),
                     until=datetime(2026, 3, 3, tzinfo=UTC))
    proxy.log.clear()
    got = run_query(out, table="windows", filters=f, endpoint_url=proxy.url)
    assert set(got["camera"].to_pylist()) == {"cam01"} and got.num_rows == 4
    assert {t.date() for t in got["start_time"].to_pylist()} == {datetime(2026, 3, 2).date()}
    prefixes = [r.query for r in proxy.log if r.method == "GET" and "list-type" in r.query]
    windows = [q for q in prefixes if "prefix=scans/windows/" in q]
    # windows/ (dates), the kept dates' folders (cameras), their cam01 folder
    assert windows and all("camera=cam00" not in q and "camera=cam02" not in q for q in windows)
    assert all("date=2026-03-03" not in q for q in windows)
    # the date before --since is kept (a recording that starts there may reach into it)
    assert any("date=2026-03-01/camera=cam01" in q for q in windows)
    everything = run_query(out, table="windows", endpoint_url=s3_endpoint)
    assert everything.num_rows == 36
    want = [r for r in everything.to_pylist() if r["camera"] == "cam01"
            and f.since <= r["start_time"] < f.until]
    assert got.to_pylist() == want


def test_query_streams_in_batches_and_cli_files_match(tmp_path: Path) -> None:
    """stream_query yields the ordered rows batch by batch; `avrl query -o` writes json,
    csv and parquet from the stream with the same rows as the whole-table result."""
    import json

    import pyarrow.parquet as pq

    from avrl_batch.cli import main
    from avrl_batch.query import run_query, stream_query, to_csv

    out = str(tmp_path / "out")
    _partitioned_out(out, "m1")
    whole = run_query(out, table="windows")
    with stream_query(out, table="windows", batch_rows=5) as result:
        batches = list(result)
    assert len(batches) > 1 and all(b.num_rows <= 5 for b in batches)
    assert sum(b.num_rows for b in batches) == whole.num_rows == 36
    assert [r for b in batches for r in b.to_pylist()] == whole.to_pylist()
    for ext in ("jsonl", "csv", "parquet"):
        dest = tmp_path / f"w.{ext}"
        main(["query", out, "-t", "windows", "-o", str(dest)])
        if ext == "jsonl":
            rows = [json.loads(line) for line in dest.read_text().splitlines()]
            assert [r["window_index"] for r in rows] == whole["window_index"].to_pylist()
        elif ext == "csv":
            assert dest.read_bytes() == to_csv(whole)
        else:
            assert pq.read_table(dest).equals(whole)


def test_writer_pool_bounds_its_queue_and_accounts_in_the_driver_thread() -> None:
    """At most 2 × threads sources wait to be written; each result is accounted for once,
    in the submitting thread; draining accounts for all of them."""
    import threading
    import time

    from avrl_batch.scan.pipeline import _Writers

    driver, accounted, waiting = threading.get_ident(), [], []
    with _Writers(2) as writers:
        for i in range(12):
            writers.submit(lambda i=i: (time.sleep(0.02), i)[1],
                           lambda i: accounted.append((i, threading.get_ident())))
            waiting.append(len(writers.pending))
    assert max(waiting) <= 4
    assert sorted(i for i, _ in accounted) == list(range(12))
    assert {t for _, t in accounted} == {driver}
    inline: list[int] = []
    with _Writers(0) as writers:  # 0: written by the driver, accounted at once
        writers.submit(lambda: 7, inline.append)
        assert inline == [7]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_writer_pool_writes_every_source_once(
    where: str, tmp_path: Path, s3_bucket: str, s3_endpoint: str
) -> None:
    """Finished sources written through the scan's writer pool (the bench's path: a model
    that costs nothing): every source is finished exactly once, all its windows readable."""
    from avrl_batch.bench.finalise import WINDOWS_PER_SOURCE, finalise_once, finished_sources
    from avrl_batch.query import run_query

    endpoint = s3_endpoint if where == "s3" else None
    out = f"s3://{s3_bucket}/out" if where == "s3" else str(tmp_path / "out")
    fins = finished_sources(40, cameras=4)
    r = finalise_once(fins, out, writers=4, endpoint_url=endpoint)
    assert r["sources_per_s"] > 0
    done, failed = sink.finished_keys(out, endpoint_url=endpoint)
    assert done == {f.task.key for f in fins} and not failed
    windows = run_query(out, table="windows", endpoint_url=endpoint)
    assert windows.num_rows == 40 * WINDOWS_PER_SOURCE
    assert len({(w["source_uri"], w["window_index"]) for w in windows.to_pylist()}) == \
        windows.num_rows


def test_writer_pool_reports_failed_writes_and_goes_on(tmp_path: Path) -> None:
    """Writes that fail in the writer threads (OUT is a file) are write failures, one per
    source, with no error object; the scan's accounting goes on to the last source."""
    from avrl_batch.bench.finalise import MODEL_ID, WINDOW_S, finished_sources
    from avrl_batch.scan import pipeline
    from avrl_batch.scan.plan import ScanPlan, WindowSpec

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    fins = finished_sources(6)
    cfg = ScanConfig(source="/archive", model="m.avrl", out=str(blocker), writers=3)
    plan = ScanPlan(todo=[f.task for f in fins], failed=[], skipped=[],
                    spec=WindowSpec(WINDOW_S, WINDOW_S, 1, 1, 1), model_id=MODEL_ID)
    summary = pipeline.ScanSummary(scan_id="s", model_id=MODEL_ID, out=str(blocker),
                                   dry_run=False, sources_listed=6)
    ledger = pipeline._Ledger(summary, len(plan.todo), 0.0, None)
    with pipeline._Writers(cfg.writers) as writers:
        for fin in fins:
            pipeline._write_finished(cfg, plan, ledger, fin, SHADE, {}, writers)
    assert ledger.finished == 6 and summary.sources_failed == 6 and summary.sources_ok == 0
    assert len(summary.write_failures) == 6
    assert {e["stage"] for e in summary.errors} == {"write"}
