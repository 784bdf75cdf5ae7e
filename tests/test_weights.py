"""Pretrained-weight import (torchvggish, 3D-ResNets-PyTorch) and the AVRL model file."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from avrl_batch.config import BLOCKS, preset
from avrl_batch.errors import WeightsError
from avrl_batch.model import build_model
from avrl_batch.model.weights import apply_pretrained, r3d_state, vggish_state
from avrl_batch.modelfile import (
    load_model,
    load_weights_only,
    model_from_bytes,
    model_to_bytes,
    save_model,
)

# ---- torchvggish ---------------------------------------------------------------------------


def test_vggish_trunk_equals_torchvggish_features(tmp_path) -> None:
    # the oracle: torchvggish's own VGG, built directly (its vggish() factory would download)
    from torchvggish.torchvggish import VGG, make_layers

    torch.manual_seed(1)
    oracle = VGG(make_layers(), postprocess=False).eval()
    path = tmp_path / "vggish-10086976.pth"
    torch.save(oracle.state_dict(), path)  # the published file is exactly this state dict

    model = build_model(preset("paper", modality="audio")).eval()
    filled = apply_pretrained(model, vggish=load_weights_only(path, str(path)))
    # every trunk tensor placed; the 6 embedding tensors were read and dropped
    assert filled == sorted(f"audio.{k}" for k in oracle.state_dict() if k.startswith("features."))
    assert len(oracle.state_dict()) == len(filled) + 6

    logmel = torch.randn(2, 3, 96, 64) * 2 - 3  # (B, E, 96, 64)
    with torch.no_grad():
        ours = model.audio.features(logmel.reshape(6, 1, 96, 64))  # (6, 512, 6, 4)
        ref = oracle.features(logmel.reshape(6, 1, 96, 64))
        pooled = model.audio(logmel)  # (B, 512)
    assert ref.shape == (6, 512, 6, 4)
    assert (ours - ref).abs().max().item() <= 1e-5
    expected = ref.reshape(2, 3, 512, 24).mean(dim=(1, 3))  # (B, 512)
    assert (pooled - expected).abs().max().item() <= 1e-5


def test_vggish_wrong_width_names_the_key() -> None:
    from torchvggish.torchvggish import VGG, make_layers

    src = VGG(make_layers(), postprocess=False).state_dict()
    tiny = build_model(preset("tiny")).state_dict()
    with pytest.raises(WeightsError, match=r"'features\.0\.weight' has shape \(64, 1, 3, 3\)"):
        vggish_state(src, tiny, "vggish.pth")
    with pytest.raises(WeightsError, match="unexpected key 'classifier.weight'"):
        vggish_state({**src, "classifier.weight": torch.zeros(1)}, tiny, "vggish.pth")


# ---- kenshohara/3D-ResNets-PyTorch ----------------------------------------------------------


def kenshohara_state_dict(depth: int, width: int = 64, n_classes: int = 700) -> dict:
    """The key names and shapes models/resnet.py produces (BasicBlock, shortcut B), generated
    by name here rather than taken from our own module, so the test checks the mapping."""
    g = torch.Generator().manual_seed(depth)
    sd: dict[str, torch.Tensor] = {}

    def bn(name: str, c: int) -> None:
        sd[f"{name}.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.bias"] = torch.randn(c, generator=g)
        sd[f"{name}.running_mean"] = torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    sd["conv1.weight"] = torch.randn(width, 3, 7, 7, 7, generator=g)
    bn("bn1", width)
    in_planes = width
    for stage, blocks in enumerate(BLOCKS[depth], start=1):
        planes = width * 2 ** (stage - 1)
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            sd[f"{p}.conv1.weight"] = torch.randn(planes, in_planes, 3, 3, 3, generator=g)
            bn(f"{p}.bn1", planes)
            sd[f"{p}.conv2.weight"] = torch.randn(planes, planes, 3, 3, 3, generator=g)
            bn(f"{p}.bn2", planes)
            if i == 0 and stage > 1:
                shape = (planes, in_planes, 1, 1, 1)
                sd[f"{p}.downsample.0.weight"] = torch.randn(shape, generator=g)
                bn(f"{p}.downsample.1", planes)
            in_planes = planes
    sd["fc.weight"] = torch.randn(n_classes, 8 * width, generator=g)
    sd["fc.bias"] = torch.randn(n_classes, generator=g)
    return sd


def test_r3d34_checkpoint_is_consumed_whole(tmp_path) -> None:
    src = kenshohara_state_dict(34)
    path = tmp_path / "r3d34_K_200ep.pth"
    torch.save({"epoch": 200, "arch": "resnet-34", "state_dict": src}, path)
    model = build_model(preset("paper", modality="video"))
    filled = apply_pretrained(model, r3d=load_weights_only(path, str(path)))
    # every non-fc tensor placed, and every tensor of our trunk came from the file
    assert filled == sorted(f"video.{k}" for k in src if not k.startswith("fc."))
    assert set(filled) == {f"video.{k}" for k in model.video.state_dict()}
    ours = model.state_dict()
    for key in ("conv1.weight", "layer3.5.conv2.weight", "layer4.0.downsample.0.weight",
                "layer2.0.downsample.1.running_var", "bn1.bias"):  # fmt: skip
        assert torch.equal(ours[f"video.{key}"], src[key]), key


def test_r3d_legacy_module_prefix_and_missing_counters() -> None:
    src = kenshohara_state_dict(10, width=8)
    legacy = {
        f"module.{k}": v for k, v in src.items() if not k.endswith("num_batches_tracked")
    }  # DataParallel, PyTorch < 0.4.1
    model = build_model(preset("tiny", modality="video"))
    filled = apply_pretrained(model, r3d={"state_dict": legacy, "epoch": 1})
    assert len(filled) == len(legacy) - 2  # all but fc.weight / fc.bias
    assert torch.equal(model.video.layer1[0].conv2.weight, src["layer1.0.conv2.weight"])


def test_r3d_wrong_shape_and_missing_key_are_named() -> None:
    target = build_model(preset("tiny", modality="video")).state_dict()
    src = kenshohara_state_dict(10, width=8)
    bad = dict(src, **{"layer3.0.conv2.weight": torch.zeros(32, 32, 3, 3, 1)})
    with pytest.raises(WeightsError) as err:
        r3d_state({"state_dict": bad}, target, "r3d.pth")
    msg = str(err.value)
    assert "r3d.pth" in msg and "'layer3.0.conv2.weight'" in msg
    assert "(32, 32, 3, 3, 1)" in msg and "(32, 32, 3, 3, 3)" in msg and "\n" not in msg
    missing = {k: v for k, v in src.items() if k != "layer4.0.bn2.running_mean"}
    with pytest.raises(WeightsError, match="missing key 'layer4.0.bn2.running_mean'"):
        r3d_state(missing, target, "r3d.pth")
    # a depth-18 checkpoint into a depth-10 model: the first extra block is named
    with pytest.raises(WeightsError, match="unexpected key 'layer1.1"):
        r3d_state(kenshohara_state_dict(18, width=8), target, "r3d.pth")


def test_lf_fourth_channel_starts_at_zero() -> None:
    src = kenshohara_state_dict(10, width=8)
    model = build_model(preset("tiny", fusion="lf"))
    apply_pretrained(model, r3d=src)
    w = model.video.conv1.weight  # (8, 4, 7, 7, 7)
    assert w.shape == (8, 4, 7, 7, 7)
    assert torch.equal(w[:, :3], src["conv1.weight"]) and torch.count_nonzero(w[:, 3]) == 0


# ---- the AVRL model file --------------------------------------------------------------------


def test_model_file_round_trip_and_deterministic_id(tmp_path) -> None:
    cfg = preset("tiny", fusion="concat_ln")
    torch.manual_seed(0)
    model = build_model(cfg)
    meta = {"val_accuracy": 0.5, "epochs": 3}
    model_id = save_model(tmp_path / "m.pt", model, cfg, meta)
    assert model_id.startswith("avrl-tiny-") and len(model_id) == len("avrl-tiny-") + 12
    assert model_id == save_model(tmp_path / "again.pt", model, cfg, meta)

    loaded = load_model(tmp_path / "m.pt")
    assert loaded.model_id == model_id and loaded.cfg == cfg and loaded.meta == meta
    assert not loaded.model.training
    assert all(p.requires_grad and p.device.type == "cpu" for p in loaded.model.parameters())
    x = torch.randn(2, 3, cfg.frames, cfg.size, cfg.size)
    a = torch.randn(2, cfg.audio_examples, 96, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x, a, None), model(x, a, None))

    with torch.no_grad():  # any weight change is a new model id
        model.head[0].bias[0] += 1
    assert model_from_bytes(model_to_bytes(model, cfg)).model_id != model_id


def test_model_file_refuses_bad_input(tmp_path) -> None:
    cfg = preset("tiny")
    data = model_to_bytes(build_model(cfg), cfg)
    with pytest.raises(WeightsError, match="not a readable PyTorch weights file"):
        model_from_bytes(data[: len(data) // 2], "half.pt")  # truncated
    buf = io.BytesIO()
    torch.save({"state_dict": {}}, buf)
    with pytest.raises(WeightsError, match="not an AVRL model file"):
        model_from_bytes(buf.getvalue(), "other.pt")
    with pytest.raises(WeightsError, match="file not found"):
        load_model(tmp_path / "absent.pt")

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # would create a file if ever unpickled

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "avrl-model", "x": Payload()}, protocol=2))
    with pytest.raises(WeightsError, match="refused"):
        load_model(evil)
    assert not marker.exists()

    # a file whose tensors were edited no longer matches its id
    payload = torch.load(io.BytesIO(data), weights_only=True)
    payload["state_dict"]["head.0.bias"] += 1
    buf = io.BytesIO()
    torch.save(payload, buf)
    with pytest.raises(WeightsError, match="does not match its model id"):
        model_from_bytes(buf.getvalue(), "edited.pt")

    # a file that lacks a tensor is refused (the network is built on the meta device and
    # takes the file's tensors: none may be left unfilled)
    del payload["state_dict"]["head.0.bias"]
    buf = io.BytesIO()
    torch.save(payload, buf)
    with pytest.raises(WeightsError, match=r"inconsistent \(no weights for head.0.bias\)"):
        model_from_bytes(buf.getvalue(), "short.pt")
    payload["state_dict"]["head.0.bias"] = torch.zeros(3)  # the wrong shape
    buf = io.BytesIO()
    torch.save(payload, buf)
    with pytest.raises(WeightsError, match="inconsistent \\(size mismatch for head.0.bias"):
        model_from_bytes(buf.getvalue(), "reshaped.pt")
