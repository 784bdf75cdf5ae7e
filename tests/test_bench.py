"""`avrl bench`: the shape of the --json documents on tiny inputs (never the speed), the
footage maker, variant parsing and the worker-role classifier.

Speed targets are measured by the benchmarks themselves (README), not asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avrl_batch.bench.footage import make_footage
from avrl_batch.cli import main
from avrl_batch.errors import ConfigError


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s of 96x96 H.264 with B-frames and PCM audio (the long-recording kind, short)."""
    return make_footage(tmp_path_factory.mktemp("footage"), "h264-96p", 4.0)


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    capsys.readouterr()
    main(argv)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def check_envelope(doc: dict, bench: str) -> None:
    assert doc["schema"] == "avrl-bench/1"
    assert doc["bench"] == bench
    m = doc["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["usable_cores"] >= 1
    assert set(doc["load_avg_1m"]) == {"before", "after"}


def test_footage_is_what_it_says(clip: Path, tmp_path: Path) -> None:
    from avrl_batch.media import probe

    info = probe(str(clip))
    assert (info.width, info.height, info.video_codec) == (96, 96, "h264")
    assert info.has_audio and info.duration_s == pytest.approx(4.0, abs=0.25)
    # reused, not rewritten
    again = make_footage(clip.parent, "h264-96p", 4.0)
    assert again == clip and again.stat().st_mtime == clip.stat().st_mtime
    with pytest.raises(ConfigError, match="unknown footage kind"):
        make_footage(tmp_path, "h263-cif", 1.0)


def test_decode_json(clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(
        capsys,
        [
            "bench",
            "decode",
            str(clip),
            "--preset",
            "tiny",
            "--runs",
            "2",
            "--threads",
            "1",
            "--json",
        ],
    )
    check_envelope(doc, "decode")
    (row,) = doc["results"]
    assert row["codec"] == "h264" and row["threads"] == 1
    assert set(row["variants"]) == {"limit", "limit_av", "windows", "windows_video"}
    for v in row["variants"].values():
        assert len(v["runs_s"]) == 2 and v["median_s"] > 0 and v["x_realtime"] > 0
    w = row["variants"]["windows"]
    assert w["windows"] == 2  # 4 s in back-to-back 2 s windows (tiny preset)
    assert w["frames_converted"] <= 2 * 8  # T = 8 frames per window, only sampled ones
    lim = row["variants"]["limit"]["median_s"]
    # medians are stored rounded to 1e-4 s and the ratio to 1e-3; on a 4 s tiny clip a median is a
    # few ms, so the rounding alone moves the recomputed ratio by a percent or more
    ratio = lim / w["median_s"]
    tol = ratio * (5e-5 / lim + 5e-5 / w["median_s"]) + 5e-4
    assert row["ratio_windows_vs_limit"] == pytest.approx(ratio, rel=0.01, abs=tol)


def test_audio_end_json(clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avrl_batch.media.video import AUDIO_LAG_S

    doc = run_json(
        capsys,
        ["bench", "audio-end", str(clip), "--audio-end", "1", "--segment", "2", "--preset",
         "tiny", "--runs", "1", "--json"],
    )
    check_envelope(doc, "audio-end")
    full, cut = doc["variants"]["full_audio"], doc["variants"]["audio_ends"]
    assert full["windows"] == cut["windows"] == 2 and full["frames_decoded"] > 0
    assert cut["audio_frames_decoded"] < full["audio_frames_decoded"]
    assert cut["demuxed_past_segment_s"] <= AUDIO_LAG_S + 1.0
    assert doc["ratio_audio_ends_vs_full"] > 0 and doc["target"] == {"ratio_at_most": 1.2}


def test_model_json(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(
        capsys,
        [
            "bench",
            "model",
            "--presets",
            "tiny",
            "--fusions",
            "concat,lf",
            "--batch-sizes",
            "1,2",
            "--variants",
            "fp32,cl",
            "--runs",
            "2",
            "--min-run-s",
            "0.05",
            "--threads",
            "1",
            "--json",
        ],
    )
    check_envelope(doc, "model")
    rows = doc["results"]
    assert len(rows) == 2 * 2 * 2  # fusions x batch sizes x variants
    for r in rows:
        assert r["clips_per_s"] > 0 and r["gflops_per_clip"] > 0
        assert r["gflops_per_s"] == pytest.approx(r["gflops_per_clip"] * r["clips_per_s"], 0.01)
        assert len(r["s_per_batch_runs"]) == 2
        if r["variant"] == "fp32":
            assert r["speedup_vs_fp32"] == 1.0
    assert set(doc["median_speedup_by_variant"]) == {"fp32", "cl"}
    assert set(doc["helped"]) <= {"cl"}


@pytest.mark.slow
def test_load_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["bench", "load", "--presets", "tiny", "--runs", "1", "--work", str(tmp_path)]
    doc = run_json(capsys, [*argv, "--json", "--save", str(tmp_path / "load.json")])
    check_envelope(doc, "load")
    size_mb = (tmp_path / "load-tiny.avrl").stat().st_size / 2**20
    assert [r["mode"] for r in doc["results"]] == ["bytes", "file"]
    for r in doc["results"]:
        assert r["preset"] == "tiny" and r["file_mb"] == pytest.approx(size_mb, abs=0.05)
        # the loaded weights themselves are in memory at the peak
        assert r["peak_rise_mb"] >= size_mb and r["seconds"] > 0
        assert r["peak_over_file"] == pytest.approx(r["peak_rise_mb"] / size_mb, rel=0.01)
    capsys.readouterr()
    main(["bench", "show", str(tmp_path / "load.json")])
    assert "| tiny | bytes |" in capsys.readouterr().out


def test_finalise_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["bench", "finalise", "--sources", "20", "--writers", "0,3", "--out", str(out)]
    doc = run_json(capsys, [*argv, "--json", "--save", str(tmp_path / "fin.json")])
    check_envelope(doc, "finalise")
    assert doc["sources"] == 20 and set(doc["writers"]) == {"0", "3"}
    assert all(f["sources_per_s"] > 0 and f["s"] > 0 for f in doc["writers"].values())
    # each run wrote all 20 sources into its own folder
    runs = sorted(out.iterdir())
    assert len(runs) == 2
    assert all(len(list((r / "events").rglob("*.parquet"))) == 20 for r in runs)
    capsys.readouterr()
    main(["bench", "show", str(tmp_path / "fin.json")])
    assert "| 3 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*argv[:4], "--writers=-1", "--out", str(out)])
    assert "error: --writers must be integers of at least 0" in capsys.readouterr().err


def test_overhead_per_source_is_the_difference_per_file() -> None:
    """`bench scan --many N`: the last two results (N short files, one long file) give the
    overhead per source at the most workers."""
    from avrl_batch.bench.scan import overhead_per_source

    def res(wall: float, cpu: float) -> dict:
        return {w: {"scan_wall_s": wall / int(w), "cpu_s": cpu, "windows": 100}
                for w in ("1", "2")}

    doc = {"results": [{"by_workers": res(1.0, 1.0)}, {"by_workers": res(30.0, 50.0)},
                       {"by_workers": res(10.0, 20.0)}]}
    o = overhead_per_source(doc, 1000)
    assert o["workers"] == 2
    assert o["wall_ms_per_source"] == pytest.approx(10.0)
    assert o["cpu_ms_per_source"] == pytest.approx(30.0)


def test_an_mjpeg_file_is_windowed_over_its_video(tmp_path: Path) -> None:
    """An intact MJPEG/MKV recording whose audio runs past its video (Matroska declares
    2.021 s from the audio) is windowed over the video's 2.0 s: one 2-s window, decoded to
    its last sample time without a Truncated error."""
    from avrl_batch.bench.decode import windowed_decode
    from avrl_batch.media import probe

    path = make_footage(tmp_path, "mjpeg-720p", 2.0)
    assert probe(str(path)).duration_s == pytest.approx(2.0)
    out = windowed_decode(path, preset="tiny")
    assert out["windows"] == 1 and out["frames_decoded"] == 45  # up to t = 1.75 s + 1 frame


def test_model_flops_match_the_known_network() -> None:
    """FLOP counting is right: 3D-ResNet-18 on 16x112x112 is 16.6 GFLOPs (PERF_NOTES)."""
    from avrl_batch.bench.model import gflops_per_clip
    from avrl_batch.config import preset

    video_only = gflops_per_clip(preset("small", modality="video"))
    assert video_only == pytest.approx(16.6, rel=0.05)


def test_model_variant_errors() -> None:
    from avrl_batch.bench.model import parse_variant, resolve_device

    assert parse_variant("fp16+cl+compile", "cuda") == {"fp16", "cl", "compile"}
    with pytest.raises(ConfigError, match="CUDA variant"):
        parse_variant("fp16", "cpu")
    with pytest.raises(ConfigError, match="unknown variant"):
        parse_variant("int8", "cpu")
    with pytest.raises(ConfigError, match="both fp16 and bf16"):
        parse_variant("fp16+bf16", "cuda")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


def test_worker_roles() -> None:
    from avrl_batch.bench.scan import RssSampler

    assert RssSampler.role_of("ray::ReadItems->FlatMap(_decode_rows)") == "decode"
    assert RssSampler.role_of("ray::MapWorker(MapBatches(Predictor))") == "infer"
    assert RssSampler.role_of("ray::IDLE") == "other"
    assert RssSampler.role_of("/usr/bin/raylet --flags") is None


@pytest.mark.slow
def test_scan_and_baseline_json(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two real scans (each on its own fresh local Ray) and the memory comparison; then the
    naive baseline against a scan on the same file and model."""
    short = tmp_path / "short"
    long = tmp_path / "long"
    short.mkdir()
    long.mkdir()
    (short / "cam01.mkv").write_bytes(clip.read_bytes())
    make_footage(long, "h264-96p", 8.0).rename(long / "cam01.mkv")
    doc = run_json(
        capsys,
        [
            "bench",
            "scan",
            str(short),
            str(long),
            "--preset",
            "tiny",
            "--workers",
            "1",
            "--runs",
            "1",
            "--work",
            str(tmp_path / "w"),
            "--json",
        ],
    )
    check_envelope(doc, "scan")
    assert [Path(r["source"]).name for r in doc["results"]] == ["short", "long"]
    agg = doc["results"][1]["by_workers"]["1"]
    assert agg["windows"] == 4 and agg["footage_s"] == pytest.approx(8.0, abs=0.3)
    assert agg["hours_per_hour"] > 0 and len(agg["hours_per_hour_runs"]) == 1
    # real processes were sampled: a decode task and the inference actor ran
    assert agg["peak_decode_worker_mb"] > 50 and agg["peak_infer_actor_mb"] > 50
    assert agg["pipeline_decode_rss_mb"] > 50
    mem = doc["memory"]
    assert mem["short"]["footage_s"] < mem["long"]["footage_s"]
    assert mem["ratio_decode_worker"] > 0

    doc = run_json(
        capsys,
        [
            "bench",
            "baseline",
            str(short),
            "--preset",
            "tiny",
            "--runs",
            "1",
            "--workers",
            "1",
            "--work",
            str(tmp_path / "w"),
            "--json",
        ],
    )
    check_envelope(doc, "baseline")
    assert doc["baseline"]["windows"] == doc["scan"]["windows"] == 2
    assert doc["baseline"]["peak_rss_mb"] > 0 and doc["scan"]["peak_worker_mb"] > 0
    # librosa.load or the documented PyAV fallback: the report says which
    assert doc["baseline"]["audio_loader"].startswith(("librosa.load", "pyav whole-track"))
    assert doc["speedup"] == pytest.approx(
        doc["scan"]["hours_per_hour"] / doc["baseline"]["hours_per_hour"], rel=0.01
    )


def test_cpu_inference_threads_follow_the_free_cpus() -> None:
    """The CPU inference actor's torch threads (scan/pipeline.py): the free CPUs of a node
    less a quarter (at least one) kept for decode tasks, split between co-located actors.
    `avrl bench scan --workers 1,2` starts Ray with workers + 1 CPUs: 1 and 2 threads."""
    from avrl_batch.scan.pipeline import cpu_threads_per_actor

    assert cpu_threads_per_actor(2, 2, 1, 1) == 1  # bench, 1 worker (and tests' ray_local)
    assert cpu_threads_per_actor(3, 3, 1, 1) == 2  # bench, 2 workers
    assert cpu_threads_per_actor(16, 16, 1, 1) == 12
    assert cpu_threads_per_actor(16, 16, 2, 1) == 6  # two actors on one node split it
    assert cpu_threads_per_actor(16, 16, 2, 2) == 12  # one actor per node
    assert cpu_threads_per_actor(16, 5, 1, 1) == 1  # another scan holds most CPUs
    assert cpu_threads_per_actor(1, 1, 1, 1) == 1  # never zero
