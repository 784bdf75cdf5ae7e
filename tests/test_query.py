"""`avrl query`: DuckDB results equal a direct pyarrow read with the same filters, locally and
on S3 (moto server); --sql joins the views; user errors are one line and exit 2."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from outputs import write_output_tree

from avrl_batch.classes import SHADE
from avrl_batch.errors import ConfigError, StorageError
from avrl_batch.query import OutputTree, QueryFilters, parse_time, run_query
from avrl_batch.schema import EVENTS, TABLES

UTC = timezone.utc
CLI = [sys.executable, "-c", "from avrl_batch.cli import main; main()"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scan") / "out"
    write_output_tree(root)
    return root


def direct_read(root: Path, table: str, f: QueryFilters) -> list[dict[str, Any]]:
    """The oracle: every Parquet file read on its own, filtered in plain Python."""
    rows: list[dict[str, Any]] = []
    for path in sorted((root / table).rglob("*.parquet")):
        t = pq.read_table(path, schema=TABLES[table])
        rows.extend(t.to_pylist())

    def keep(r: dict[str, Any]) -> bool:
        if table == "errors":
            return True
        st = r["start_time"]
        score = r["peak_score"] if table == "events" else r["score"]
        return (
            (not f.labels or r["label"] in f.labels)
            and (not f.cameras or r["camera"] in f.cameras
                 or (r["camera"] is None and "unknown" in f.cameras))
            and (f.since is None or (st is not None and st >= f.since))
            and (f.until is None or (st is not None and st < f.until))
            and (f.min_score is None or score >= f.min_score)
            and (
                not f.anomalies_only
                or (r["is_anomaly"] if table == "windows" else r["label"] not in SHADE.normal)
            )
        )

    return sorted(filter(keep, rows), key=sort_key(table))


def sort_key(table: str):
    far = datetime.max.replace(tzinfo=UTC)
    if table == "events":
        return lambda r: (r["start_time"] or far, r["camera"], r["source_uri"], r["start_s"],
                          r["label"])
    if table == "windows":
        return lambda r: (r["start_time"] or far, r["camera"], r["source_uri"], r["window_index"])
    return lambda r: r["source_uri"]


T = parse_time
FILTER_CASES = {
    "none": ("events", QueryFilters()),
    "labels": ("events", QueryFilters(labels=("fight", "shoot"))),
    "camera+min_score": (
        "events", QueryFilters(cameras=("cam02", "Gate 3 (north)"), min_score=0.85)
    ),
    "since-only (midnight-crossing recording)": (
        "windows", QueryFilters(since=T("2026-03-02T00:00:30Z"), until=T("2026-03-02T09:30:10Z"))
    ),
    "windows anomalies by camera": (
        "windows", QueryFilters(cameras=("cam01",), anomalies_only=True, min_score=0.5)
    ),
    "date range": ("events", QueryFilters(since=T("2026-03-02"), labels=("fight", "chase"))),
    "errors": ("errors", QueryFilters()),
}


@pytest.mark.parametrize("case", list(FILTER_CASES))
def test_query_equals_direct_read_local(tree: Path, case: str) -> None:
    table, f = FILTER_CASES[case]
    got = run_query(str(tree), table=table, filters=f)
    assert got.schema == TABLES[table]
    want = direct_read(tree, table, f)
    assert want, "every case must select something"
    assert got.to_pylist() == want


def test_partitions_are_pruned_before_reading(tree: Path) -> None:
    out = OutputTree.open(str(tree))
    every = out.pruned_files("events", QueryFilters())
    assert len(every) == 7
    cam = out.pruned_files("events", QueryFilters(cameras=("cam02",)))
    assert len(cam) == 2 and all("/camera=cam02/" in u for u in cam)
    # a camera id that is not path-safe is found under the sink's safe partition name
    gate = out.pruned_files("events", QueryFilters(cameras=("Gate 3 (north)",)))
    assert len(gate) == 2 and all("/camera=Gate_3_north/" in u for u in gate)
    # until 2 March: the 2 March partitions go, date=unknown stays (its rows decide)
    early = out.pruned_files("windows", QueryFilters(until=T("2026-03-02")))
    dates = sorted(u.split("/date=")[1].split("/")[0] for u in early)
    assert dates == ["2026-03-01"] * 3 + ["unknown"]
    # since 4 March noon: a 2 March recording of up to 48 h may still have rows, 1 March not
    late = out.pruned_files("windows", QueryFilters(since=T("2026-03-04T12:00:00Z")))
    assert {u.split("/date=")[1].split("/")[0] for u in late} == {"2026-03-02", "unknown"}
    assert out.pruned_files("windows", QueryFilters(since=T("2026-03-05"))) == [
        u for u in early if "/date=unknown/" in u
    ]
    # since 2 March 00:00:30: the recording that started on 1 March at 23:59 has rows then
    f = QueryFilters(since=T("2026-03-02T00:00:30Z"), cameras=("cam01",))
    mid = run_query(str(tree), table="windows", filters=f)
    assert "cam01_20260301T235900Z" in mid.column("source_uri")[0].as_py()


def test_windows_of_an_unfinished_source_are_not_shown(tmp_path: Path) -> None:
    root = tmp_path / "out"
    write_output_tree(root)
    marker = next(root.glob("events/date=2026-03-02/camera=cam02/*.parquet"))
    marker.unlink()  # as if the scan died between the windows and the events write
    got = run_query(str(root), table="windows", filters=QueryFilters(cameras=("cam02",)))
    assert got.num_rows == 60  # only cam02's finished 1 March recording
    assert set(got.column("source_uri").to_pylist()) == {
        "s3://archive/cam02/cam02_20260301T120000Z.mp4"
    }


def test_camera_unknown_matches_rows_without_a_camera(tmp_path: Path) -> None:
    root = tmp_path / "out"
    write_output_tree(root)
    # a recording whose camera could not be told: null column, camera=unknown partition
    src = next(root.glob("windows/date=unknown/camera=Gate_3_north/*.parquet"))
    for table in ("windows", "events"):
        path = root / table / "date=unknown" / "camera=Gate_3_north" / src.name
        t = pq.read_table(path, schema=TABLES[table])
        t = t.set_column(t.schema.get_field_index("camera"), "camera",
                         pa.nulls(t.num_rows, pa.string()))
        dest = root / table / "date=unknown" / "camera=unknown"
        dest.mkdir(parents=True)
        pq.write_table(t, dest / src.name)
        path.unlink()
    f = QueryFilters(cameras=("unknown",))
    got = run_query(str(root), table="windows", filters=f)
    assert got.num_rows == 40 and got.to_pylist() == direct_read(root, "windows", f)
    assert run_query(str(root), filters=f).column("camera").to_pylist() == [None]


def test_relative_paths_and_file_uris(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = direct_read(tree, "windows", QueryFilters(cameras=("cam01",)))
    f = QueryFilters(cameras=("cam01",))
    assert run_query(tree.as_uri(), table="windows", filters=f).to_pylist() == want
    monkeypatch.chdir(tree.parent)
    assert run_query("out/", table="windows", filters=f).to_pylist() == want


def test_limit_and_order(tree: Path) -> None:
    got = run_query(str(tree), limit=3)
    assert got.to_pylist() == direct_read(tree, "events", QueryFilters())[:3]


def test_sql_joins_events_to_windows(tree: Path) -> None:
    sql = """
        SELECT e.event_id, e.n_windows, count(w.window_index) AS joined,
               max(w.probs[list_position(['arrest','chase','fight','knockdown','run','shoot',
                   'scatter'], e.label)]) AS peak
        FROM events e JOIN windows w
          ON w.source_uri = e.source_uri AND w.start_s >= e.start_s AND w.end_s <= e.end_s
        GROUP BY e.event_id, e.n_windows ORDER BY e.event_id
    """
    got = run_query(str(tree), sql=sql).to_pylist()
    events = {r["event_id"]: r for r in direct_read(tree, "events", QueryFilters())}
    assert sorted(r["event_id"] for r in got) == sorted(events)
    for r in got:
        assert r["joined"] == r["n_windows"]  # every window of an event is found by the join
        assert r["peak"] == pytest.approx(events[r["event_id"]]["peak_score"])


def test_sql_sees_filtered_views(tree: Path) -> None:
    got = run_query(
        str(tree), sql="SELECT DISTINCT camera FROM windows ORDER BY 1",
        filters=QueryFilters(cameras=("Gate 3 (north)",)),
    )
    assert got.column("camera").to_pylist() == ["Gate 3 (north)"]


def test_times_parse() -> None:
    eight = datetime(2026, 3, 1, 8, tzinfo=UTC)
    assert parse_time("2026-03-01T08:00:00Z") == eight
    assert parse_time("2026-03-01T09:00:00+01:00") == eight
    assert parse_time("2026-03-01T08:00") == eight  # naive = UTC
    assert parse_time("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    for bad in ("yesterday", "2026-13-01", "01/03/2026"):
        with pytest.raises(ConfigError, match="ISO 8601"):
            parse_time(bad)


def test_empty_tree_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no scan output"):
        run_query(str(tmp_path))


def test_an_output_with_only_errors_still_has_every_view(tmp_path: Path) -> None:
    write_output_tree(tmp_path / "full")
    only = tmp_path / "only-errors"
    (only / "errors").mkdir(parents=True)
    for p in (tmp_path / "full" / "errors").iterdir():
        p.rename(only / "errors" / p.name)
    ev = run_query(str(only), filters=QueryFilters(labels=("fight",)))
    assert ev.num_rows == 0 and ev.schema == EVENTS
    n = run_query(str(only), sql="SELECT count(*) AS n FROM windows, errors")
    assert n.column("n").to_pylist() == [0]


# ---- the command, in a subprocess (what a user sees) -----------------------------------------


def avrl(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([*CLI, *args], capture_output=True, text=False, env=env, timeout=120)


def test_cli_formats_equal_direct_read(tree: Path, tmp_path: Path) -> None:
    f = QueryFilters(labels=("fight",), since=T("2026-03-01T10:00:00Z"))
    want = direct_read(tree, "events", f)
    args = ["query", str(tree), "--label", "fight", "--since", "2026-03-01T11:00:00+01:00"]
    r = avrl(*args, "--format", "parquet", "--output", str(tmp_path / "x.parquet"))
    assert r.returncode == 0, r.stderr.decode()
    got = pq.read_table(tmp_path / "x.parquet")
    assert got.schema.equals(EVENTS) and got.to_pylist() == want
    # piped: JSON lines by default
    r = avrl(*args)
    lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert [x["event_id"] for x in lines] == [w["event_id"] for w in want]
    assert lines[0]["start_time"].endswith("Z") and lines[0]["thumbnail"]
    # csv without the thumbnails, probs as JSON arrays
    r = avrl("query", str(tree), "-t", "windows", "--camera", "cam02", "--format", "csv",
             "--limit", "5")
    import pyarrow.csv as pacsv

    csv = pacsv.read_csv(io.BytesIO(r.stdout))
    assert csv.num_rows == 5 and "probs" in csv.column_names
    assert len(json.loads(csv.column("probs")[0].as_py())) == len(SHADE.names)
    assert "thumbnail" not in csv.column_names
    assert csv.column("camera").to_pylist() == ["cam02"] * 5


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--sql", "SELECT nope FROM events"],
            'error: --sql: Binder Error: Referenced column "nope"',
        ),
        (["--sql", "SELEC 1"], "error: --sql: Parser Error"),
        (["--since", "last tuesday"], "error: bad --since 'last tuesday': use ISO 8601"),
        (["--until", "2026-02-30"], "error: bad --until"),
        (["--label", "brawl"], "error: unknown label 'brawl'"),
        (["--format", "parquet"], "error: --format parquet needs --output FILE"),
    ],
)
def test_cli_user_errors_are_one_line(
    tree: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # in-process: the same CLI error path without an interpreter start per case (a subprocess
    # shows it end to end in test_cli_empty_output_tree); an uncaught exception fails here
    from avrl_batch.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["query", str(tree), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith(message), err


def test_cli_empty_output_tree(tmp_path: Path) -> None:
    r = avrl("query", str(tmp_path))
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err
    assert err.startswith("error: no scan output under") and "avrl scan" in err


# ---- S3 on a moto server ----------------------------------------------------------------------


def upload(tree: Path, endpoint: str, bucket: str, prefix: str) -> str:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    for p in sorted(tree.rglob("*")):
        if p.is_file():
            s3.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(tree).as_posix()}")
    return f"s3://{bucket}/{prefix}"


@pytest.mark.slow
def test_query_on_s3_equals_direct_read(tree: Path, s3_endpoint: str, s3_bucket: str,
                                        tmp_path: Path) -> None:
    uri = upload(tree, s3_endpoint, s3_bucket, "scans/2026")
    for table, f in (FILTER_CASES["camera+min_score"], FILTER_CASES["since-only (midnight-"
                                                                    "crossing recording)"],
                     FILTER_CASES["errors"]):
        got = run_query(uri, table=table, filters=f, endpoint_url=s3_endpoint)
        assert got.to_pylist() == direct_read(tree, table, f)
    pruned = OutputTree.open(uri, endpoint_url=s3_endpoint).pruned_files(
        "events", QueryFilters(cameras=("cam01",)))
    assert len(pruned) == 3 and all(u.startswith(f"{uri}/events/date=") for u in pruned)
    # the command, endpoint from the environment like boto3
    r = avrl("query", uri, "--camera", "cam01", "--label", "run", "--label", "scatter",
             "-o", str(tmp_path / "s3.parquet"), env_extra={"AWS_ENDPOINT_URL": s3_endpoint})
    assert r.returncode == 0, r.stderr.decode()
    want = direct_read(tree, "events", QueryFilters(cameras=("cam01",), labels=("run", "scatter")))
    assert len(want) == 2
    assert pq.read_table(tmp_path / "s3.parquet").to_pylist() == want
    r = avrl("query", uri, "--endpoint-url", s3_endpoint, "--format", "json", "--sql",
             "SELECT e.label, count(*) AS n FROM events e JOIN windows w USING (source_uri) "
             "WHERE w.is_anomaly GROUP BY 1 ORDER BY 1")
    assert r.returncode == 0, r.stderr.decode()
    assert [json.loads(x)["label"] for x in r.stdout.decode().splitlines()] == sorted(
        {e["label"] for e in direct_read(tree, "events", QueryFilters())})
    empty = f"s3://{s3_bucket}/nothing-here"
    r = avrl("query", empty, "--endpoint-url", s3_endpoint)
    assert r.returncode == 2 and r.stderr.decode().startswith("error: no scan output")


# ---- one version, one model -----------------------------------------------------------------


def _write_version(
    out: Path, uri: str, version: str, model_id: str, scan_id: str, fight: tuple[int, int]
) -> None:
    """One finished source as the scan sink writes it: 10 windows, a fight over ``fight``."""
    import numpy as np
    from outputs import window_row

    from avrl_batch.scan import sink
    from avrl_batch.scan.naming import source_key
    from avrl_batch.scan.plan import SourceTask
    from avrl_batch.scan.timeline import TimelineConfig, events_from_windows
    from avrl_batch.schema import WINDOWS

    start = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    rows = []
    for i in range(10):
        probs = np.full(len(SHADE.names), 0.01, np.float32)
        probs[SHADE.names.index("fight" if fight[0] <= i <= fight[1] else "normal1")] = 0.92
        rows.append(window_row(uri, "cam01", i, 2.0 * i, 2.0 * i + 2, start, probs,
                               model_id=model_id, scan_id=scan_id))
    windows = pa.Table.from_pylist(rows, schema=WINDOWS)
    events = events_from_windows(windows, TimelineConfig(), classes=SHADE, version=version)
    task = SourceTask(uri, version, 1, source_key(uri, version, model_id), "cam01", start,
                      20.0, True, ())
    sink.write_source(str(out), task, windows, events, model_id=model_id)


def test_only_the_newest_version_of_one_model_is_shown(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Two versions of a file both finished (a scan still running, or killed before it removed
    the old one) and a second model's results: query and report show one model (the newest
    scan's, said in a note; --model picks) and of each source its newest version, filters
    included; event ids differ between versions."""
    from avrl_batch.cli import main
    from avrl_batch.report import build_report

    out = tmp_path / "out"
    a, b = "s3://cams/cam01/cam01_a.mp4", "s3://cams/cam01/cam01_b.mp4"
    _write_version(out, a, "v1", "model-m", "20260301T000000Z-aaaaaa", (2, 4))
    _write_version(out, b, "v1", "model-m", "20260301T000000Z-aaaaaa", (1, 1))
    _write_version(out, a, "v2", "model-m", "20260302T000000Z-bbbbbb", (6, 8))
    # model m's v1 of b lost its windows in a killed removal: its events must not show
    _write_version(out, b, "v0", "model-m", "20260228T000000Z-cccccc", (3, 3))
    next(p for p in out.glob("windows/*/*/*.parquet")
         if pq.read_table(p)["scan_id"][0].as_py().endswith("cccccc")).unlink()
    _write_version(out, a, "v2", "model-n", "20260303T000000Z-dddddd", (0, 0))

    notes: list[str] = []
    shown = run_query(str(out), note=notes.append)  # events of the newest scan's model
    assert set(shown["model_id"].to_pylist()) == {"model-n"} and shown.num_rows == 1
    assert "2 models" in notes[0] and "showing model-n" in notes[0] and "--model" in notes[0]
    ev = run_query(str(out), model_id="model-m")
    got = sorted((r["source_uri"], r["start_s"]) for r in ev.to_pylist())
    assert got == [(a, 12.0), (b, 2.0)]  # a's v2 fight, b's v1 fight; no v1 of a, no v0 of b
    windows = run_query(str(out), table="windows", model_id="model-m",
                        filters=QueryFilters(labels=("fight",)))
    assert sorted(windows["start_s"].to_pylist()) == [2.0, 12.0, 14.0, 16.0]
    per_source = run_query(
        str(out), model_id="model-m",
        sql="SELECT source_uri, count(*) AS n, min(scan_id) AS s FROM windows GROUP BY 1",
    ).to_pylist()
    assert sorted((r["source_uri"], r["n"], r["s"][-6:]) for r in per_source) == [
        (a, 10, "bbbbbb"), (b, 10, "aaaaaa")
    ]
    # every version's event ids are distinct (the version is part of the id)
    every = pa.concat_tables(pq.read_table(p) for p in out.glob("events/*/*/*.parquet"))
    ids = every["event_id"].to_pylist()
    assert len(ids) == len(set(ids)) == every.num_rows
    with pytest.raises(ConfigError, match="no results of model model-x .*model-n, model-m"):
        run_query(str(out), model_id="model-x")
    report = build_report(str(out), model_id="model-m")
    assert report.n_events == 2
    capfd.readouterr()
    main(["query", str(out), "--format", "json"])
    captured = capfd.readouterr()
    assert [json.loads(x)["model_id"] for x in captured.out.splitlines()] == ["model-n"]
    assert captured.err.startswith("note: ") and len(captured.err.strip().splitlines()) == 1
