"""``avrl train --init MODEL``: start a network from another model file's weights (pure torch).

Every tensor of the parent whose name and shape match the new network is taken (the trunks,
the missing-audio vector and, when the classes are the same, the head); the head starts new
when the classes differ. ``--freeze`` keeps a trunk's weights fixed during training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from avrl_batch.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from avrl_batch.config import ModelConfig
    from avrl_batch.modelfile import LoadedModel

_TRUNKS = {  # parameter name prefixes of each --freeze choice
    "video": ("video.",), "audio": ("audio.",), "trunks": ("video.", "audio.")}


def init_state(cfg: ModelConfig, parent: LoadedModel) -> dict[str, torch.Tensor]:
    """The parent's tensors that fit the network of ``cfg``, by name and shape; the head's
    only when both have the same classes. ConfigError when no trunk tensor fits (another
    preset or width)."""
    import torch

    from avrl_batch.model import build_model

    with torch.device("meta"):
        want = build_model(cfg).state_dict()
    same_classes = parent.cfg.classes == cfg.classes
    state = {
        k: t.detach().clone()
        for k, t in parent.model.state_dict().items()
        if (same_classes or not k.startswith("head."))
        and k in want
        and tuple(want[k].shape) == tuple(t.shape)
    }
    if not any(k.startswith(("video.", "audio.")) for k in state):
        raise ConfigError(
            f"--init {parent.model_id}: none of its trunk weights fit a {cfg.preset!r} network "
            f"(the parent is {parent.cfg.preset!r}); fine-tune with the parent's preset"
        )
    return state


def apply_init(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` (from :func:`init_state`) into ``model``; the other tensors keep their
    fresh initialisation."""
    model.load_state_dict(state, strict=False)


def freeze(model: nn.Module, what: str | None) -> int:
    """Stop gradients for the ``what`` trunk(s) (``config.FREEZE``, checked by TrainConfig;
    None: nothing); returns how many tensors were frozen. Their BatchNorm statistics still
    adapt to the new footage."""
    if what is None:
        return 0
    n = 0
    for name, p in model.named_parameters():
        if name.startswith(_TRUNKS[what]):
            p.requires_grad_(False)
            n += 1
    return n
