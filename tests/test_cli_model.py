"""``avrl info`` and ``avrl import-weights`` through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from avrl_batch.cli import main
from avrl_batch.modelfile import load_model


def avrl(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run the console script's entry point (avrl_batch.cli:main) in a fresh process: real exit
    code, real stderr. Not ``-m avrl_batch.cli``: commands register on the imported module."""
    return subprocess.run(
        [sys.executable, "-c", "from avrl_batch.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in err, err


def test_info_paper_json(capsys) -> None:
    main(["info", "--preset", "paper", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["params"]["video_trunk"] == 63_513_536  # 3D-ResNet-34 without fc
    assert info["params"]["audio_trunk"] == 4_499_712
    assert info["params"]["total"] == sum(
        info["params"][k] for k in ("video_trunk", "audio_trunk", "fusion", "head")
    )
    assert info["inputs"] == {"video": [1, 3, 50, 240, 240], "audio": [1, 4, 96, 64]}
    gf = info["gflops_per_clip"]
    assert 370 < gf["video_trunk"] < 380  # PERF_NOTES: 376 for 3D-ResNet-34 at 50 x 240^2
    parts = ("video_trunk", "audio_trunk", "fusion", "head")
    assert gf["total"] == pytest.approx(sum(gf[k] for k in parts), abs=1e-3)


def test_info_table_and_variants(capsys) -> None:
    main(["info", "--preset", "tiny", "--fusion", "lf"])
    out = capsys.readouterr().out
    assert "video_trunk" in out and "total" in out and "lf" in out
    main(["info", "--preset", "small", "--modality", "audio", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["params"]["video_trunk"] == 0 and info["inputs"]["video"] is None


def test_help_and_user_errors_are_one_line(tmp_path) -> None:
    proc = avrl("--help")
    assert proc.returncode == 0 and "info" in proc.stdout and "import-weights" in proc.stdout

    assert_one_line_error(avrl("info", "--preset", "huge"), "unknown preset 'huge'")
    assert_one_line_error(avrl("info", "--preset", "tiny", "--fusion", "sum"), "unknown fusion")

    junk = tmp_path / "r3d.pth"
    junk.write_bytes(b"this is not a checkpoint" * 10)
    assert_one_line_error(
        avrl("import-weights", "--r3d", str(junk), "--out", str(tmp_path / "m.pt")),
        str(junk), "not a readable PyTorch weights file",
    )  # fmt: skip

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # creates a file if ever unpickled

    evil = tmp_path / "vggish.pth"
    torch.save({"features.0.weight": Payload()}, evil)
    assert_one_line_error(
        avrl("import-weights", "--vggish", str(evil), "--out", str(tmp_path / "m.pt")),
        str(evil), "refused",
    )  # fmt: skip
    evil_model = tmp_path / "model.pt"
    torch.save({"format": "avrl-model", "version": 1, "x": Payload()}, evil_model)
    assert_one_line_error(avrl("info", "--model", str(evil_model)), "refused")
    assert not marker.exists()
    assert not (tmp_path / "m.pt").exists()


def test_import_weights_writes_a_loadable_model(tmp_path, capsys) -> None:
    from torchvggish.torchvggish import VGG, make_layers

    torch.manual_seed(3)
    oracle = VGG(make_layers(), postprocess=False).eval()
    vggish = tmp_path / "vggish-10086976.pth"
    torch.save(oracle.state_dict(), vggish)
    out = tmp_path / "models" / "audio.pt"
    proc = avrl("import-weights", "--vggish", str(vggish), "--out", str(out),
                "--preset", "paper", "--modality", "audio")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    loaded = load_model(out)
    assert loaded.model_id in proc.stdout and loaded.meta["vggish"] == vggish.name
    logmel = torch.randn(4, 1, 96, 64)
    with torch.no_grad():
        ours = loaded.model.audio.features(logmel)
        ref = oracle.features(logmel)
    assert (ours - ref).abs().max().item() <= 1e-5

    capsys.readouterr()
    main(["info", "--model", str(out), "--json"])
    assert json.loads(capsys.readouterr().out)["model_id"] == loaded.model_id

    # the same import twice is the same model (seeded head, content-hash id); in-process from
    # here on: the subprocess runs above already prove the real exit codes
    again = tmp_path / "again.pt"
    main(["import-weights", "--vggish", str(vggish), "--out", str(again),
          "--preset", "paper", "--modality", "audio"])  # fmt: skip
    assert load_model(again).model_id == loaded.model_id

    # weights that do not fit the preset: one line naming the key and both shapes
    with pytest.raises(SystemExit) as exit_info:
        main(["import-weights", "--vggish", str(vggish), "--out", str(tmp_path / "t.pt"),
              "--preset", "tiny"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "'features.0.weight' has shape (64, 1, 3, 3)" in err and "(8, 1, 3, 3)" in err
