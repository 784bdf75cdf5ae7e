"""Regression tests from the review of the scan output contract and the CLI (DESIGN.md §4,
issues 5 and 6): a real output tree written by the scan's own sink and timeline code, read
back through the real `avrl` entry point (in-process `cli.main`, so user errors go through
the same one-line/exit-2 path as the console script). No Ray: each test takes well under a
second or two."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from avrl_batch.classes import SHADE
from avrl_batch.cli import main
from avrl_batch.scan import sink
from avrl_batch.scan.naming import source_key
from avrl_batch.scan.plan import SourceTask
from avrl_batch.scan.timeline import TimelineConfig, events_from_windows
from avrl_batch.schema import GROUND_TRUTH

UTC = timezone.utc
MODEL_A = "avrl-tiny-aaaaaaaaaaaa"
MODEL_B = "avrl-tiny-bbbbbbbbbbbb"
WINDOW_S = 2.0


def write_source(
    out: Path,
    uri: str,
    camera: str | None,
    start: datetime | None,
    fight: tuple[int, int] | None,
    *,
    n: int = 10,
    model_id: str = MODEL_A,
) -> int:
    """One scanned source through the sink and the timeline (the code a scan runs):
    ``n`` windows, ``fight`` = (first, last) window of a confident fight. Returns #events."""
    task = SourceTask(
        uri=uri, version="1-1", size=1, key=source_key(uri, "1-1", model_id), camera=camera,
        start_time=start, duration_s=n * WINDOW_S, has_audio=True, segments=(),
    )
    probs = np.full((n, len(SHADE.names)), 0.02, np.float32)  # (N, C)
    probs[:, SHADE.names.index("normal1")] = 0.84
    if fight is not None:
        a, b = fight
        probs[a : b + 1] = 0.01
        probs[a : b + 1, SHADE.names.index("fight")] = 0.92
    idx = np.arange(n)
    windows = sink.windows_table(
        task, idx, idx * WINDOW_S, (idx + 1) * WINDOW_S, np.ones(n, bool), probs,
        classes=SHADE, model_id=model_id, scan_id="20260301T000000Z-abcdef",
    )
    events = events_from_windows(windows, TimelineConfig(), classes=SHADE)
    assert sink.write_source(str(out), task, windows, events)
    return events.num_rows


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("contract") / "out"
    write_source(out, "/archive/cam01/cam01_20260301T080000Z.mp4", "cam01",
                 datetime(2026, 3, 1, 8, 0, tzinfo=UTC), (2, 4))
    write_source(out, "/archive/cam02/cam02_20260301T235950Z.mp4", "cam02",
                 datetime(2026, 3, 1, 23, 59, 50, tzinfo=UTC), (6, 8))
    return out


def avrl(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the real CLI entry point; (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    cap = capfd.readouterr()
    return code, cap.out, cap.err


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)


# ---- --sql results of every DuckDB type in every machine format ---------------------------

# DuckDB's sum() of an integer is a HUGEINT (Arrow decimal128(38, 0)), CAST(... AS DATE) a
# date32, a timestamp difference an INTERVAL (Arrow month_day_nano_interval): none of them
# survived json (TypeError), and the interval broke csv and parquet too.
TYPED_SQL = (
    "SELECT camera, sum(n_windows) AS windows, CAST(min(start_time) AS DATE) AS day, "
    "max(end_time - start_time) AS longest, CAST(min(start_time)::TIMESTAMP AS TIME) AS clock, "
    "avg(peak_score)::DECIMAL(6, 3) AS peak, list(start_time) AS starts, "
    "{'label': min(label), 'n': count(*)} AS info "
    "FROM events GROUP BY camera ORDER BY camera"
)


def test_sql_of_any_type_prints_as_json(tree: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code, out, err = avrl(capfd, "query", str(tree), "--sql", TYPED_SQL, "--format", "json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["camera"] for r in rows] == ["cam01", "cam02"]
    cam01, cam02 = rows
    assert cam01["windows"] == 3 and isinstance(cam01["windows"], int)
    assert cam01["day"] == "2026-03-01"
    assert cam02["day"] == "2026-03-02"  # 23:59:50 + 12 s: the event starts after midnight UTC
    assert cam01["longest"] == pytest.approx(6.0)  # seconds
    assert cam01["clock"] == "08:00:04"
    assert cam01["peak"] == pytest.approx(0.92, abs=1e-3)
    assert cam01["starts"] == ["2026-03-01T08:00:04Z"]
    assert cam01["info"] == {"label": "fight", "n": 1}


def test_sql_of_any_type_writes_csv_and_parquet(
    tree: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code, out, err = avrl(capfd, "query", str(tree), "--sql", TYPED_SQL, "--format", "csv")
    assert code == 0, err
    csv = pacsv.read_csv(io.BytesIO(out.encode())).to_pylist()
    assert csv[0]["windows"] == 3 and csv[0]["longest"] == pytest.approx(6.0)
    assert json.loads(csv[0]["starts"]) == ["2026-03-01T08:00:04Z"]
    assert json.loads(csv[1]["info"]) == {"label": "fight", "n": 1}

    target = tmp_path / "typed.parquet"
    code, out, err = avrl(capfd, "query", str(tree), "--sql", TYPED_SQL, "-o", str(target))
    assert code == 0, err
    table = pq.read_table(target)
    assert table.schema.field("windows").type == pa.int64()
    assert table.schema.field("longest").type == pa.duration("us")
    assert table.column("longest").to_pylist()[0] == timedelta(seconds=6)


@pytest.mark.parametrize(
    "sql",
    ["SELECT label FROM events ORDER BY camera;  ",
     "SELECT label FROM events ORDER BY camera -- the first"],
)
def test_sql_with_a_trailing_semicolon_or_comment_and_limit(
    tree: Path, capfd: pytest.CaptureFixture[str], sql: str
) -> None:
    code, out, err = avrl(
        capfd, "query", str(tree), "--sql", sql, "--limit", "1", "--format", "json"
    )
    assert code == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [{"label": "fight"}]


# ---- output files -------------------------------------------------------------------------


def test_output_files_go_into_new_folders(
    tree: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "new" / "deeper" / "events.csv"
    code, _, err = avrl(capfd, "query", str(tree), "-o", str(target))
    assert code == 0, err
    assert len(pacsv.read_csv(target)) == 2
    page = tmp_path / "reports" / "scan.html"
    code, out, err = avrl(capfd, "report", str(tree), "--html", str(page))
    assert code == 0, err
    assert page.read_text().count('data-event-id="') >= 2


def test_unwritable_output_is_a_one_line_error(
    tree: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = avrl(capfd, "query", str(tree), "-o", str(blocker / "x.csv"))
    one_line_error(code, err, "cannot write", "x.csv")
    code, _, err = avrl(capfd, "report", str(tree), "--html", str(tmp_path))  # a folder
    one_line_error(code, err, "cannot write", str(tmp_path))


# ---- --truth: only this scan's events -----------------------------------------------------


def test_truth_match_counts_only_this_models_events(tmp_path: Path) -> None:
    """Two models scanned into one OUT: F1 of model B must not count model A's events."""
    from avrl_batch.scan.matching import match_output

    out = tmp_path / "out"
    uri = str(tmp_path / "cam01" / "cam01_20260301T080000Z.mp4")
    other = str(tmp_path / "cam09" / "cam09_20260301T080000Z.mp4")
    start = datetime(2026, 3, 1, 8, tzinfo=UTC)
    # model A fires early (a false positive for B's scan to inherit), B on the truth
    write_source(out, uri, "cam01", start, (0, 1), model_id=MODEL_A)
    write_source(out, uri, "cam01", start, (5, 7), model_id=MODEL_B)
    # a source that this scan did not list (another scan of another folder into OUT)
    write_source(out, other, "cam09", start, (0, 2), model_id=MODEL_B)
    truth = tmp_path / "truth.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [{"source_uri": uri, "camera": "cam01", "label": "fight", "start_s": 10.0,
              "end_s": 16.0}],
            schema=GROUND_TRUTH,
        ),
        truth,
    )
    m = match_output(str(out), str(truth), model_id=MODEL_B, sources=[uri])
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0), m
    assert m["f1"] == 1.0


# ---- timeline thresholds ------------------------------------------------------------------


def test_enter_below_the_default_exit_names_the_option(
    tree: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code, _, err = avrl(
        capfd, "scan", str(tmp_path), "--model", str(tmp_path / "m.avrl"), "--out",
        str(tmp_path / "o"), "--enter", "0.3",
    )
    one_line_error(code, err, "--exit", "--enter")


# ---- help ---------------------------------------------------------------------------------


def _command_paths(group: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command of a click group as the words that run it, sub-commands of groups
    included (a group has ``commands``: typer's vendored click and click alike)."""
    paths = []
    for name, command in sorted(group.commands.items()):  # type: ignore[attr-defined]
        if hasattr(command, "commands"):
            paths += _command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def test_every_command_has_an_example(capfd: pytest.CaptureFixture[str]) -> None:
    import typer

    from avrl_batch import cli

    code, out, _ = avrl(capfd, "--help")
    assert code == 0
    cli._register_commands()
    commands = _command_paths(typer.main.get_command(cli.app))
    assert {("scan",), ("query",), ("bench", "scan"), ("submit", "train")} <= set(commands)
    for cmd in commands:
        code, text, err = avrl(capfd, *cmd, "--help")
        assert code == 0, err
        assert "Example" in text, cmd
    _, text, _ = avrl(capfd, "import-weights", "--help")
    assert ".avrl" in text  # the model file other commands load (not a .pt checkpoint)


# ---- model files from an older avrl ---------------------------------------------------------


def test_model_file_saved_before_a_config_field_was_added_still_loads(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model file written by a version of avrl whose ModelConfig lacked a field that has
    since been added (with a default) keeps loading, with the same id: the id is checked
    against the config stored in the file, not against its re-serialisation by today's
    ModelConfig (which made every old model 'altered or corrupt')."""
    import dataclasses

    import torch

    from avrl_batch.config import ModelConfig, preset
    from avrl_batch.model import build_model
    from avrl_batch.modelfile import model_from_bytes, model_to_bytes

    torch.manual_seed(0)
    cfg = preset("tiny")
    # a field whose value is its default: what an older ModelConfig without it implied
    later = next(
        f.name for f in dataclasses.fields(ModelConfig)
        if f.default is not dataclasses.MISSING and getattr(cfg, f.name) == f.default
    )
    full = ModelConfig.to_dict
    with monkeypatch.context() as m:  # the older avrl: its configs had no such field
        m.setattr(ModelConfig, "to_dict", lambda self: {
            k: v for k, v in full(self).items() if k != later
        })
        data = model_to_bytes(build_model(cfg), cfg)
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    assert later not in payload["config"]
    old_file = tmp_path / "old.avrl"
    old_file.write_bytes(data)

    loaded = model_from_bytes(data, source=str(old_file))
    assert loaded.model_id == payload["model_id"]
    assert getattr(loaded.cfg, later) == getattr(cfg, later)
    code, out, err = avrl(capfd, "info", "--model", str(old_file), "--json")
    assert code == 0, err
    assert json.loads(out)["model_id"] == payload["model_id"]

    # tampering is still caught: the stored config no longer matches the id
    payload["config"]["window_s"] = payload["config"]["window_s"] * 2
    buf = io.BytesIO()
    torch.save(payload, buf)
    with pytest.raises(Exception, match="does not match its model id"):
        model_from_bytes(buf.getvalue(), source="tampered")


# ---- scan: an output that cannot be written fails first --------------------------------------


def test_scan_to_an_unwritable_output_fails_before_any_work(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """OUT under a regular file: one line, exit 2, before Ray starts (not after every source
    was decoded and inferred, at the first write)."""
    import torch

    import avrl_batch.scan.pipeline as pipeline
    from avrl_batch.config import preset
    from avrl_batch.model import build_model
    from avrl_batch.modelfile import save_model

    def no_ray(address: str | None) -> bool:
        raise AssertionError("the scan started Ray although OUT cannot be written")

    monkeypatch.setattr(pipeline, "_ensure_ray", no_ray)
    torch.manual_seed(0)
    cfg = preset("tiny")
    model = tmp_path / "m.avrl"
    save_model(model, build_model(cfg), cfg)
    archive = tmp_path / "archive" / "cam01"
    archive.mkdir(parents=True)
    (archive / "cam01_20260301T080000Z.mp4").write_bytes(b"listed, never probed")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = avrl(
        capfd, "scan", str(tmp_path / "archive"), "--model", str(model), "--out",
        str(blocker / "scans"),
    )
    one_line_error(code, err, "cannot write", str(blocker))
    assert blocker.read_text() == "not a folder"


def test_local_write_under_a_file_is_a_storage_error(tmp_path: Path) -> None:
    """The temp-file cleanup of a local write that could not even make its folder raised
    NotADirectoryError over the StorageError (a traceback instead of one line)."""
    from avrl_batch import storage
    from avrl_batch.errors import StorageError

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="cannot write"):
        storage.write_atomic(storage.join(str(blocker), "sub", "x.parquet"), b"data")


def test_failed_scan_leaves_no_output_folder_and_clean_stdout(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A scan that stops at a user error (here: no such archive) after the write check prints
    only the error line (no stray empty line on stdout from the progress bar, which breaks
    pipes) and leaves no empty OUT folders behind."""
    import torch

    from avrl_batch.config import preset
    from avrl_batch.model import build_model
    from avrl_batch.modelfile import save_model

    torch.manual_seed(0)
    cfg = preset("tiny")
    model = tmp_path / "m.avrl"
    save_model(model, build_model(cfg), cfg)
    out = tmp_path / "new" / "scans"
    code, stdout, err = avrl(
        capfd, "scan", str(tmp_path / "nope"), "--model", str(model), "--out", str(out)
    )
    one_line_error(code, err, "no such file or directory")
    assert stdout == ""
    assert not (tmp_path / "new").exists()


def test_write_check_on_s3(s3_endpoint: str, s3_bucket: str) -> None:
    """The OUT write check on a real S3 API (moto server): a writable prefix keeps no trace,
    a bucket that does not exist is one StorageError line."""
    import boto3

    from avrl_batch.errors import StorageError

    sink.check_writable(f"s3://{s3_bucket}/scans/run1", endpoint_url=s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    assert s3.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0
    with pytest.raises(StorageError) as info:
        sink.check_writable("s3://no-such-bucket-avrl/scans", endpoint_url=s3_endpoint)
    assert "\n" not in str(info.value) and "no-such-bucket-avrl" in str(info.value)


# ---- rich markup in user data ----------------------------------------------------------------

BRACKETS_CAM = "[/gate] [bold]north"  # a closing tag that matches nothing crashed rich


def test_table_output_shows_brackets_in_data_literally(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Camera ids and paths are data, not rich markup: `[/gate]` raised MarkupError (a
    traceback) and `[bold]` vanished from the table."""
    out = tmp_path / "out"
    uri = str(tmp_path / "[site 1]" / "cam_20260301T080000Z.mp4")
    write_source(out, uri, BRACKETS_CAM, datetime(2026, 3, 1, 8, tzinfo=UTC), (1, 2))
    target = tmp_path / "events.txt"
    code, _, err = avrl(capfd, "query", str(out), "-o", str(target))  # .txt: the rich table
    assert code == 0, err
    text = target.read_text()
    assert "[/gate]" in text and "[bold]north" in text


def test_scan_summary_prints_brackets_literally(capfd: pytest.CaptureFixture[str]) -> None:
    """The end-of-scan summary (and the dry-run plan) print failed sources' paths and
    messages as text: a path with `[/x]` made the summary crash after the scan had run."""
    from avrl_batch.commands.scan import _print_summary

    bad = "/archive/[/x]/[red]cam_20260301T080000Z.mp4"
    summary = {
        "dry_run": False, "scan_id": "20260301T000000Z-abcdef", "model_id": MODEL_A,
        "sources_listed": 1, "sources_ok": 0, "sources_failed": 1, "sources_skipped": 0,
        "windows": 0, "events": 0, "events_by_label": {}, "footage_s": 0.0, "wall_s": 1.0,
        "footage_hours_per_hour": 0.0, "peak_rss_mb": {},
        "errors": [{"source_uri": bad, "stage": "probe", "error_type": "Truncated",
                    "message": "[Errno 5] cut off at [/moov]"}],
        "manifest": "/out/[x]/_scans/s.json",
    }
    _print_summary(summary)
    plan = {
        "dry_run": True, "model_id": MODEL_A,
        "plan": {"sources": [{"uri": bad, "camera": BRACKETS_CAM, "start_time": None,
                              "duration_s": 1.0, "has_audio": True, "segments": 1}],
                 "sources_todo": 1, "segments": 1, "footage_hours": 0.0, "sources_skipped": 0,
                 "sources_failed_probe": 1,
                 "probe_errors": [{"uri": bad, "error_type": "X", "message": "[/y]"}]},
    }
    _print_summary(plan)
    out = capfd.readouterr().out.replace("\n", "")
    for literal in ("[/x]/[red]cam", "cut off at [/moov]", "/out/[x]/_scans", "[/gate]", "[/y]"):
        assert literal in out, literal


def test_probe_table_shows_a_bracketed_path_literally(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from avrl_batch.media.encode import encode_av

    video = tmp_path / "[cams]" / "gate.mp4"
    video.parent.mkdir()
    frames = (np.full((32, 32, 3), i * 20, np.uint8) for i in range(5))
    encode_av(video, frames, fps=5)
    code, out, err = avrl(capfd, "probe", str(video))
    assert code == 0, err
    assert "[cams]" in out.replace("\n", "").replace(" ", "")
