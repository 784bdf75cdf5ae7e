"""Map published pretrained weights onto AVRL's parameter names: pure functions on state dicts.

Sources (the user supplies the files; nothing is downloaded):

- torchvggish ``vggish-10086976.pth``: ``features.{0,3,6,8,11,13}.{weight,bias}`` (the conv
  trunk, -> ``audio.features.*``) and ``embeddings.{0,2,4}.{weight,bias}`` (the 128-d embedding
  MLP, which the paper does not use: consumed and dropped on purpose).
- kenshohara/3D-ResNets-PyTorch checkpoints (``r3d34_K_200ep.pth``): a dict with
  ``state_dict`` (plus ``epoch``, ``arch``, ``optimizer``), or a bare state dict, with or without
  the ``module.`` prefix of DataParallel; trunk keys -> ``video.*``; ``fc.*`` (the Kinetics
  classifier) is dropped on purpose.

Every source tensor is either placed or explicitly dropped, and every trunk tensor of the model
is filled; anything else raises WeightsError naming the first offending key and its shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from avrl_batch.errors import WeightsError

# BatchNorm step counters: old checkpoints (PyTorch < 0.4.1) lack them and they do not affect
# the forward pass, so their absence is not an error.
_OPTIONAL_SUFFIX = "num_batches_tracked"


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _map_prefixed(
    src: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    prefix: str,
    source: str,
    *,
    adapt: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Place every ``src[k]`` at ``target[prefix + k]`` with an exact shape check.

    ``adapt`` maps a source key to a function (src_tensor, target_tensor) -> tensor for the one
    layer whose shape legitimately differs (conv1 with a 4th LF channel).
    """
    adapt = adapt or {}
    out: dict[str, torch.Tensor] = {}
    for key, value in src.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{source}: entry {key!r} is not a tensor ({type(value).__name__})")
        ours = prefix + key
        if ours not in target:
            raise WeightsError(
                f"{source}: unexpected key {key!r} {_shape(value)}: not part of the "
                f"{prefix.rstrip('.')} trunk of this model"
            )
        if key in adapt:
            value = adapt[key](value, target[ours])
        if _shape(value) != _shape(target[ours]):
            raise WeightsError(
                f"{source}: key {key!r} has shape {_shape(value)}, the model expects "
                f"{_shape(target[ours])} (wrong preset or width?)"
            )
        out[ours] = value.detach().to(target[ours].dtype).clone()
    for ours, value in target.items():
        if ours.startswith(prefix) and ours not in out and not ours.endswith(_OPTIONAL_SUFFIX):
            raise WeightsError(
                f"{source}: missing key {ours[len(prefix) :]!r} (expected shape {_shape(value)})"
            )
    return out


def _check_source(
    src: Any, target: Mapping[str, torch.Tensor], source: str, expected: str, *, branch: str,
    other: str,
) -> None:
    """``src`` is a mapping and the model has the ``branch`` it fills (a model of modality
    ``other`` alone has not)."""
    if not isinstance(src, Mapping):
        raise WeightsError(f"{source}: expected {expected}, got {type(src).__name__}")
    if not any(k.startswith(branch + ".") for k in target):
        raise WeightsError(f"{source}: this model has no {branch} branch (modality '{other}')")


def vggish_state(
    src: Mapping[str, Any], target: Mapping[str, torch.Tensor], source: str = "vggish"
) -> dict[str, torch.Tensor]:
    """torchvggish state dict -> ``{"audio.features.*": tensor}`` for model state ``target``."""
    _check_source(src, target, source, "a torchvggish state dict", branch="audio", other="video")
    trunk: dict[str, torch.Tensor] = {}
    for key, value in src.items():
        if key.startswith("embeddings."):
            continue  # the 128-d embedding MLP: the paper pools the trunk instead
        if not key.startswith("features."):
            raise WeightsError(f"{source}: unexpected key {key!r}: not a torchvggish state dict")
        trunk[key] = value
    return _map_prefixed(trunk, target, "audio.", source)


def _zero_fourth_channel(src: torch.Tensor, ours: torch.Tensor) -> torch.Tensor:
    """RGB conv1 (O, 3, 7, 7, 7) -> (O, 4, 7, 7, 7) for LF fusion: the audio-map channel starts at
    zero, so the imported network computes exactly the pretrained RGB function at step 0 and
    training grows the audio channel's filters from there (the map's scale has nothing to do
    with RGB statistics, so copying RGB filters into it would inject noise)."""
    if src.dim() == 5 and ours.dim() == 5 and src.shape[1] == 3 and ours.shape[1] == 4:
        extra = torch.zeros_like(src[:, :1])  # (O, 1, 7, 7, 7)
        return torch.cat([src, extra], dim=1)  # (O, 4, 7, 7, 7)
    return src


def r3d_state(
    ckpt: Mapping[str, Any], target: Mapping[str, torch.Tensor], source: str = "r3d"
) -> dict[str, torch.Tensor]:
    """kenshohara checkpoint (or bare state dict) -> ``{"video.*": tensor}`` for ``target``."""
    _check_source(ckpt, target, source, "a 3D-ResNets checkpoint", branch="video", other="audio")
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, Mapping):
        raise WeightsError(f"{source}: 'state_dict' is a {type(sd).__name__}, not a state dict")
    trunk: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        key = key.removeprefix("module.")  # DataParallel checkpoints
        if key.startswith("fc."):
            continue  # Kinetics classifier: AVRL has its own head
        trunk[key] = value
    return _map_prefixed(
        trunk, target, "video.", source, adapt={"conv1.weight": _zero_fourth_channel}
    )


def apply_pretrained(
    model: torch.nn.Module,
    *,
    vggish: Mapping[str, Any] | None = None,
    r3d: Mapping[str, Any] | None = None,
    vggish_source: str = "vggish",
    r3d_source: str = "r3d",
) -> list[str]:
    """Load the given sources into ``model`` in place; returns the model keys that were filled."""
    target = model.state_dict()
    update: dict[str, torch.Tensor] = {}
    if vggish is not None:
        update.update(vggish_state(vggish, target, vggish_source))
    if r3d is not None:
        update.update(r3d_state(r3d, target, r3d_source))
    merged = dict(target)
    merged.update(update)
    model.load_state_dict(merged, strict=True)
    return sorted(update)
