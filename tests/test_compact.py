"""`avrl compact`: a partition's per-source objects rewritten into few files, invisible to
every reader and safe next to a running scan.

Real parts: outputs written by the scan sink's own writers (or by real scans on a local Ray),
the moto S3 server, and pyarrow, DuckDB and Polars reading the compacted tables with no
avrl code.
"""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest
from scanhelp import camera_days, finished, recording, tiny_model

from avrl_batch import storage
from avrl_batch.errors import ConfigError, StorageError
from avrl_batch.query import run_query
from avrl_batch.scan import ScanConfig, run_scan, sink
from avrl_batch.scan import compact as compaction
from avrl_batch.scan.plan import keyed_sources
from avrl_batch.scan.retimeline import retimeline
from avrl_batch.scan.timeline import TimelineConfig

UTC = timezone.utc
MODEL = "avrl-tiny-0123456789ab"
OLD_SCAN, NEW_SCAN = "20260301T000000Z-aaaaaa", "20260302T000000Z-bbbbbb"
TABLES = ("events", "windows", "unreadable", "errors")


def _snapshot(out: str, endpoint_url: str | None = None) -> dict[str, list[dict]]:
    """What `avrl query` shows of every table, in its order."""
    return {t: run_query(out, table=t, endpoint_url=endpoint_url).to_pylist() for t in TABLES}


def _files_per_partition(out: str, endpoint_url: str | None = None) -> Counter:
    per: Counter = Counter()
    for table in compaction.COMPACTED_TABLES:
        base = storage.join(out, table)
        for uri in storage.list_files(base, suffix=".parquet", endpoint_url=endpoint_url):
            per[(table, *storage.relative_parts(base, uri)[:-1])] += 1
    return per


def _small_output(out: str, endpoint_url: str | None = None, *, cameras: int = 2,
                  days: int = 2) -> list[str]:
    """Finished sources over ``cameras`` x ``days`` partitions (two a camera-day, events in
    some, unreadable spans in one), a failed one, and an older version of one source left
    beside its newer one (a scan killed before it removed it). Returns the source URIs."""
    uris = []
    for c, d, cam, uri, start in camera_days(cameras, days):
        first = (c, d, start.hour) == (0, 0, 8)
        spans = [(4.0, 6.0, "DecodeFailed", "corrupt data")] if first else None
        anomaly = (1, 3) if start.hour == 20 else None
        finished(out, uri, "v2", MODEL, start, cam, endpoint_url=endpoint_url,
                 windows=6, spans=spans, anomaly=anomaly, scan_id=NEW_SCAN)
        uris.append(uri)
    # the older version of the first source: same URI and model, another version and scan
    first = datetime(2026, 3, 1, 8, tzinfo=UTC)
    finished(out, uris[0], "v1", MODEL, first, "cam00", endpoint_url=endpoint_url, windows=3,
             anomaly=(0, 1), scan_id=OLD_SCAN)
    failed = "s3://archive/cam00/cam00_20260301T120000Z.mp4"
    from avrl_batch.scan.plan import SourceError

    key = keyed_sources([storage.Source(failed, 1, "v1")], MODEL)[0][1]
    sink.write_error(out, SourceError(failed, key, "probe", "NotMedia", "not a media file"),
                     NEW_SCAN, version="v1", model_id=MODEL, endpoint_url=endpoint_url)
    return uris


def test_compaction_shows_the_same_rows_and_plain_readers_read_it(tmp_path: Path) -> None:
    """One file a (table, partition) afterwards; `avrl query` shows the same rows before and
    after; pyarrow, DuckDB and Polars read the compacted tables with no avrl code and see
    what the query shows (the older version left by a killed scan is dropped); a second
    compaction has nothing to do."""
    out = str(tmp_path / "out")
    _small_output(out)
    before = _snapshot(out)
    assert len({r["source_uri"] for r in before["windows"]}) == 8
    assert before["events"] and before["unreadable"]
    # a scan's per-source objects are a few rows, written uncompressed (sink.parquet_bytes);
    # the compacted files are zstd
    one = storage.list_files(f"{out}/windows", suffix=".parquet")[0]
    assert pq.ParquetFile(one).metadata.row_group(0).column(0).compression == "UNCOMPRESSED"
    assert duckdb.sql(f"SELECT count(*) FROM '{one}'").fetchall()[0][0] == pq.read_metadata(
        one).num_rows
    dry = compaction.compact(out, dry_run=True)
    assert dry.partitions_compacted == 4 and dry.sources_compacted == 8
    assert _snapshot(out) == before and not (tmp_path / "out" / "_compacted").exists()

    summary = compaction.compact(out)
    assert summary.errors == [] and summary.partitions_compacted == 4
    assert summary.sources_compacted == 8 and summary.sources_dropped == 1
    assert _snapshot(out) == before
    per = _files_per_partition(out)
    assert max(per.values()) == 1 and len(per) == 9  # windows + events in 4, unreadable in 1
    assert not storage.exists(compaction.lock_uri(out))
    markers = storage.list_files(str(tmp_path / "out" / "_compacted"), suffix=".parquet")
    assert len(markers) == 8

    # no avrl code: the tables as anyone reads them (hive partitioning off: the camera column
    # keeps the real id)
    for table in ("windows", "events", "unreadable"):
        shown = sorted((r["source_uri"], r["start_s"]) for r in before[table])
        folder = f"{out}/{table}"
        arrow = pq.read_table(folder, partitioning=None)
        for f in storage.list_files(folder, suffix=".parquet"):
            assert pq.ParquetFile(f).metadata.row_group(0).column(0).compression == "ZSTD"
        duck = duckdb.sql(
            f"SELECT source_uri, start_s FROM read_parquet('{folder}/**/*.parquet', "
            "hive_partitioning=false)").fetchall()
        polars = pl.read_parquet(f"{folder}/**/*.parquet", hive_partitioning=False)
        assert sorted(zip(arrow["source_uri"].to_pylist(), arrow["start_s"].to_pylist(),
                          strict=True)) == shown
        assert sorted(duck) == shown
        assert sorted(zip(polars["source_uri"].to_list(), polars["start_s"].to_list(),
                          strict=True)) == shown

    again = compaction.compact(out)
    assert again.partitions_compacted == 0 and _snapshot(out) == before

    # a smaller --target-mb makes a file a source; the default then merges them again
    other = str(tmp_path / "other")
    _small_output(other)
    compaction.compact(other, target_mb=1e-6)
    assert max(_files_per_partition(other).values()) == 2 and _snapshot(other) == before
    assert compaction.compact(other).partitions_compacted == 4
    assert max(_files_per_partition(other).values()) == 1 and _snapshot(other) == before


def test_compacted_sources_stay_finished_and_an_old_version_goes_with_its_marker(
    s3_bucket: str, s3_endpoint: str
) -> None:
    """On S3: the scan's bookkeeping finds a compacted source by its marker (finished, no
    object read); a changed file's compacted old version is confirmed from the marker and
    removed by deleting it, after which its rows are hidden from queries and the next
    compaction drops them."""
    out = f"s3://{s3_bucket}/scans"
    uris = _small_output(out, s3_endpoint)
    compaction.compact(out, endpoint_url=s3_endpoint)
    done, failed = sink.finished_objects(out, endpoint_url=s3_endpoint)
    listed = [storage.Source(u, 1, "v2") for u in uris]
    keyed = keyed_sources(listed, MODEL)
    assert {k for _, k in keyed} <= set(done) and len(failed) == 1
    assert all("/_compacted/" in done[k] for _, k in keyed)
    assert sink.find_superseded(out, keyed, done, failed, MODEL, endpoint_url=s3_endpoint) == []

    # the first source changes: a new version is written (per-source objects) ...
    changed = uris[0]
    start = datetime(2026, 3, 1, 8, tzinfo=UTC)
    finished(out, changed, "v3", MODEL, start, "cam00", endpoint_url=s3_endpoint, windows=4,
             scan_id="20260303T000000Z-cccccc")
    keyed3 = keyed_sources([storage.Source(changed, 1, "v3")], MODEL)
    done, failed = sink.finished_objects(out, endpoint_url=s3_endpoint)
    stale = sink.find_superseded(out, keyed3, done, failed, MODEL, endpoint_url=s3_endpoint)
    assert [(s.source_uri, s.version) for s in stale] == [(changed, "v2")]
    assert stale[0].uris[-1].endswith(f"/_compacted/date=2026-03-01/camera=cam00/{stale[0].key}"
                                      ".parquet")
    # ... and the old one removed: only the new version's 4 windows are shown
    assert sink.remove_superseded(stale, done, failed, endpoint_url=s3_endpoint) == stale
    shown = run_query(out, table="windows", endpoint_url=s3_endpoint)
    assert shown["source_uri"].to_pylist().count(changed) == 4
    cam00 = f"{out}/windows/date=2026-03-01/camera=cam00"
    hidden_rows = _rows_in(cam00, s3_endpoint)
    assert hidden_rows == 6 + 6 + 4  # the old version's rows still in the compacted file
    before = _snapshot(out, s3_endpoint)
    again = compaction.compact(out, endpoint_url=s3_endpoint)
    assert again.sources_compacted == 1 and again.errors == []
    assert _snapshot(out, s3_endpoint) == before
    rows = _rows_in(cam00, s3_endpoint)
    assert rows == 6 + 4  # the hidden version dropped


def _rows_in(folder: str, endpoint_url: str | None) -> int:
    """Rows in the Parquet files of a folder, whoever shows them."""
    return sum(
        pq.read_metadata(io.BytesIO(storage.read_bytes(u, endpoint_url=endpoint_url))).num_rows
        for u in storage.list_files(folder, suffix=".parquet", endpoint_url=endpoint_url)
    )


class _Killed(BaseException):
    """A compaction process dying: no except clause of the library catches it."""


def test_a_compaction_killed_at_any_write_or_delete_leaves_the_same_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kill the compaction before each of its writes and deletes in turn: after every kill
    the queries show the same rows, the scan's bookkeeping finds the same finished sources,
    and the next compaction finishes the job."""
    base = str(tmp_path / "base")
    uris = _small_output(base, cameras=1, days=2)
    want = _snapshot(base)
    keyed = keyed_sources([storage.Source(u, 1, "v2") for u in uris], MODEL)
    want_done = {k for _, k in keyed}
    real_write, real_delete = storage.write_atomic, storage.delete
    calls = {"n": 0, "kill_at": -1}

    def counted(real):
        def wrapper(uri, *a, **k):
            if not uri.endswith(compaction.LOCK_NAME):
                calls["n"] += 1
                if calls["n"] == calls["kill_at"]:
                    raise _Killed(uri)
            return real(uri, *a, **k)
        return wrapper

    monkeypatch.setattr(storage, "write_atomic", counted(real_write))
    monkeypatch.setattr(storage, "delete", counted(real_delete))
    probe = str(tmp_path / "probe")
    shutil.copytree(base, probe)
    compaction.compact(probe)
    steps = calls["n"]
    assert steps > 10
    for kill_at in range(1, steps + 1):
        out = str(tmp_path / f"k{kill_at}")
        shutil.copytree(base, out)
        calls.update(n=0, kill_at=kill_at)
        with pytest.raises(_Killed):
            compaction.compact(out)
        calls["kill_at"] = -1
        storage.delete(compaction.lock_uri(out))  # what the user does after a kill
        assert _snapshot(out) == want, f"killed at step {kill_at}"
        done, _ = sink.finished_objects(out)
        assert want_done <= set(done), f"killed at step {kill_at}"
        compaction.compact(out)
        assert _snapshot(out) == want, f"compacted after a kill at step {kill_at}"
        assert max(_files_per_partition(out).values()) == 1
        shutil.rmtree(out)


def test_a_compaction_on_a_clock_behind_the_last_ones_still_writes_the_newest_generation(
    tmp_path: Path,
) -> None:
    """Readers take a partition's newest generation: one written by a machine whose clock is
    behind (here: the last generation's files renamed 70 years ahead) must still sort after
    it, or the sources it takes in would vanish."""
    out = str(tmp_path / "out")
    _small_output(out, cameras=1, days=1)
    compaction.compact(out)
    for f in Path(out).rglob("compact-*.parquet"):
        f.rename(f.with_name("compact-2099" + f.name[len("compact-2026"):]))
    start = datetime(2026, 3, 1, 12, tzinfo=UTC)
    finished(out, "s3://archive/cam00/cam00_20260301T120000Z-b.mp4", "v1", MODEL, start,
             "cam00", windows=3, scan_id=NEW_SCAN)
    before = _snapshot(out)
    got = compaction.compact(out)
    assert got.sources_compacted == 1 and _snapshot(out) == before
    assert max(_files_per_partition(out).values()) == 1
    assert all(f.name.startswith("compact-2099") for f in Path(out).rglob("compact-*.parquet"))


def test_one_compaction_at_a_time_and_none_beside_a_rescan(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    _small_output(out, cameras=1, days=1)
    storage.write_atomic(compaction.lock_uri(out), b"{}")
    with pytest.raises(ConfigError, match="another compaction"):
        compaction.compact(out)
    with pytest.raises(ConfigError, match="compaction of .* is running"):
        retimeline(out, TimelineConfig())
    storage.delete(compaction.lock_uri(out))
    sink.write_settings(out, {"model_id": MODEL, "window_s": 2.0, "stride_s": 2.0,
                              "camera_pattern": None, "timezone": "UTC", "rescanning": True})
    with pytest.raises(ConfigError, match="--rescan .* has not finished"):
        compaction.compact(out)
    with pytest.raises(ConfigError, match="--target-mb"):
        compaction.compact(out, target_mb=0)
    with pytest.raises(StorageError, match="no scan output under"):
        compaction.compact(str(tmp_path / "typo"))
    assert not (tmp_path / "typo").exists()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("model") / "tiny.avrl"
    tiny_model(path)
    return str(path)


def _comparable(rows: dict[str, list[dict]]) -> dict[str, list[tuple]]:
    """The rows of two scans of the same files compared: every value but the scan's id, with
    scores rounded (batching may change the last bits of a float)."""
    keep = {
        "windows": ("source_uri", "window_index", "start_s", "end_s", "label", "has_audio"),
        "events": ("event_id", "source_uri", "label", "start_s", "end_s", "n_windows"),
        "unreadable": ("source_uri", "start_s", "end_s", "reason"),
        "errors": ("source_uri", "stage", "error_type"),
    }
    return {t: sorted(tuple(r[c] for c in cols) for r in rows[t]) for t, cols in keep.items()}


@pytest.mark.slow
def test_a_scan_and_compactions_racing_lose_and_duplicate_nothing(
    ray_local: None, model: str, tmp_path: Path
) -> None:
    """A scan that adds new recordings and replaces changed ones runs while compactions run
    one after another into the same OUT; afterwards the output shows exactly what a scan of
    the same files into an empty OUT shows (each source once, its newest version), a rerun
    has nothing to do, and each partition holds one file a table. Then the compacted output
    takes a --rescan (refused while a compaction holds the lock) and `avrl retimeline`."""
    rec, out = tmp_path / "rec", str(tmp_path / "out")
    day = datetime(2026, 3, 1, 8, tzinfo=UTC)
    names = [f"cam{c:02d}/cam{c:02d}_{day + timedelta(hours=h):%Y%m%dT%H%M%SZ}.mp4"
             for c in range(2) for h in range(5)]
    for i, name in enumerate(names[:6]):
        recording(rec / name, 4, seed=i)
    first = run_scan(ScanConfig(source=str(rec), model=model, out=out))
    assert first.sources_ok == 6
    compaction.compact(out)
    for i, name in enumerate(names):  # two files change, four are new
        if i in (1, 4) or i >= 6:
            recording(rec / name, 6, seed=100 + i)
    cfg = ScanConfig(source=str(rec), model=model, out=out)
    result: dict = {}
    scan = threading.Thread(target=lambda: result.update(summary=run_scan(cfg)))
    scan.start()
    rounds = 0
    while scan.is_alive() or rounds == 0:
        got = compaction.compact(out, target_mb=0.001)  # a file per source: more to move
        assert got.errors == []
        rounds += 1
        time.sleep(0.02)  # leave the scan its CPU (2 cores)
    scan.join()
    second = result["summary"]
    assert (second.sources_ok, second.sources_skipped) == (6, 4)
    assert len(second.superseded) == 2 and second.write_failures == []
    assert rounds >= 2
    compaction.compact(out)

    reference = str(tmp_path / "reference")
    assert run_scan(replace(cfg, out=reference)).sources_ok == 10
    shown = _snapshot(out)
    assert _comparable(shown) == _comparable(_snapshot(reference))
    assert Counter(r["source_uri"] for r in shown["events"]) == Counter(
        r["source_uri"] for r in _snapshot(reference)["events"])
    assert max(_files_per_partition(out).values()) == 1
    rerun = run_scan(cfg)
    assert (rerun.sources_ok, rerun.sources_skipped) == (0, 10)

    storage.write_atomic(compaction.lock_uri(out), b"{}")
    with pytest.raises(ConfigError, match="compaction of .* is running"):
        run_scan(replace(cfg, rescan=True))
    storage.delete(compaction.lock_uri(out))
    # retimeline turns compacted sources back into per-source objects with new events
    redone = retimeline(out, TimelineConfig(enter=0.0, exit=0.0))
    assert redone.sources == 10 and redone.errors == []
    events = run_query(out, table="events")
    assert Counter(events["source_uri"].to_pylist()) == Counter(
        {f"{rec}/{n}": 1 for n in names})  # enter 0: one event the whole recording
    assert storage.list_files(f"{out}/_compacted") == []
    compaction.compact(out)
    assert run_query(out, table="events").sort_by("source_uri").equals(
        events.sort_by("source_uri"))
