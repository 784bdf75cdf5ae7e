"""User errors of prepare / train / evaluate end in one clear line (exit 2), before any Ray work."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from avrl_batch.classes import SHADE
from avrl_batch.cli import main
from avrl_batch.config import preset
from avrl_batch.train.prepare import PreparedData, resolve_clip_uri


def _run_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def _manifest(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["uri", "label", "split", "dark"])
        w.writeheader()
        w.writerows(rows)
    return path


def test_missing_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _run_error(["prepare", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")], capsys)
    assert "manifest not found" in err and "nope.csv" in err


def test_unknown_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _manifest(
        tmp_path / "m.csv",
        [
            {"uri": "a.mp4", "label": "run", "split": "train", "dark": "false"},
            {"uri": "b.mp4", "label": "riot", "split": "train", "dark": "false"},
        ],
    )
    # labels beyond SHADE's: which are normal must be said
    err = _run_error(["prepare", str(m), "--out", str(tmp_path / "o")], capsys)
    assert err == (
        "error: which of riot, run are normal (calm footage)? name them with --normal LABEL"
    )
    # --classes fixes the set: a label outside it is refused, naming the row and the classes
    fixed = ["--classes", "arrest,run,calm", "--normal", "calm"]
    err = _run_error(["prepare", str(m), "--out", str(tmp_path / "o"), *fixed], capsys)
    assert "unknown label 'riot' in row 2 (b.mp4)" in err and "arrest, run, calm" in err
    err = _run_error(["prepare", str(m), "--out", str(tmp_path / "o"), "--classes", "run,riot",
                      "--normal", "calm"], capsys)
    assert err == "error: normal label 'calm' is not one of the classes (run, riot)"


def test_empty_train_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _manifest(
        tmp_path / "m.csv", [{"uri": "a.mp4", "label": "run", "split": "test", "dark": "0"}]
    )
    err = _run_error(["prepare", str(m), "--out", str(tmp_path / "o")], capsys)
    assert "no clips in the 'train' split" in err


def _train_only_dataset(root: Path) -> Path:
    cfg = preset("tiny")
    root.mkdir()
    data = PreparedData(
        uri=str(root),
        prepare_id="x",
        preset="tiny",
        frames=cfg.frames,
        size=cfg.size,
        window_s=cfg.window_s,
        audio_examples=cfg.audio_examples,
        class_names=SHADE.names,
        manifest="m.csv",
        counts={"train": {"run": 3}},
        shards={"train": ["shards/x/split=train/a.parquet"]},
    )
    (root / "prepared.json").write_text(data.to_json())
    return root


def test_empty_eval_and_val_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _train_only_dataset(tmp_path / "prep")
    err = _run_error(["evaluate", str(tmp_path / "m.avrl"), "--data", str(data)], capsys)
    assert "has no 'test' clips" in err and "train (3)" in err
    err = _run_error(["train", str(data), "--out", str(tmp_path / "run")], capsys)
    assert "no 'val' or 'test' clips" in err
    argv = ["evaluate", str(tmp_path / "m.avrl"), "--data", str(data), "--patch", "temporal"]
    assert "--patch needs --ratio in (0, 1]" in _run_error(argv, capsys)


def test_geometry_mismatch_and_missing_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _train_only_dataset(tmp_path / "prep")
    argv = ["train", str(data), "--out", str(tmp_path / "r"), "--preset", "small"]
    err = _run_error(argv, capsys)
    assert "rerun `avrl prepare --preset small`" in err
    err = _run_error(["train", str(tmp_path / "none"), "--out", str(tmp_path / "r")], capsys)
    assert "no prepared dataset" in err


def test_clip_uris_resolve_against_the_manifest_folder() -> None:
    assert resolve_clip_uri("/d/m.parquet", "clips/a.mp4") == "/d/clips/a.mp4"
    assert resolve_clip_uri("s3://b/p/m.csv", "clips/a.mp4") == "s3://b/p/clips/a.mp4"
    assert resolve_clip_uri("s3://b/p/m.csv", "s3://o/x.mp4") == "s3://o/x.mp4"
    assert resolve_clip_uri("m.csv", "a.mp4") == "a.mp4"


def test_train_config_gives_the_cli_defaults_of_a_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from avrl_batch.config import ADAM_LR, TrainConfig, train_config
    from avrl_batch.errors import ConfigError

    # from-scratch presets train with Adam at ADAM_LR; the others with the paper's SGD
    assert train_config("tiny") == TrainConfig(optimizer="adam", lr=ADAM_LR)
    assert train_config("tiny96", epochs=3).optimizer == "adam"
    assert train_config("paper") == TrainConfig()
    assert train_config("small", optimizer="adam") == TrainConfig(optimizer="adam", lr=ADAM_LR)
    assert train_config("tiny", lr=0.05, optimizer="sgd") == TrainConfig(lr=0.05)
    assert train_config("tiny", seed=None).seed == TrainConfig().seed  # None: the default
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        train_config("huge")
    with pytest.raises(ConfigError, match=r"--audio-dropout must be in \[0, 1\), got 1.0"):
        train_config("tiny", audio_dropout=1.0)
    data = _train_only_dataset(tmp_path / "prep")
    argv = ["train", str(data), "--out", str(tmp_path / "r"), "--audio-dropout", "1"]
    assert "--audio-dropout must be in [0, 1)" in _run_error(argv, capsys)
