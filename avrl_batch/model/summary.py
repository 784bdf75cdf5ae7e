"""Size a model without running it: parameter counts and GFLOPs per clip, per part.

The network is built on the ``meta`` device (no memory, no compute) and one batch-1 clip goes
through torch's FLOP counter, so even the paper preset (50 x 240^2) is summarised in seconds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from avrl_batch.config import ModelConfig
from avrl_batch.model.fusion import build_model
from avrl_batch.model.vggish import EXAMPLE_FRAMES, MEL_BANDS

PARTS = ("video_trunk", "audio_trunk", "fusion", "head")


def _count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def model_summary(cfg: ModelConfig) -> dict[str, Any]:
    """Parameters and GFLOPs (2 x MACs, conv and matmul ops) per part for one clip at batch 1."""
    with torch.device("meta"):
        model = build_model(cfg).eval()
    total_params = _count(model)
    params = {
        "video_trunk": _count(model.video),
        "audio_trunk": _count(model.audio),
        "head": _count(model.head),
    }
    # what is left is fusion's own: the missing-audio vector and Concat+LN's LayerNorm
    params["fusion"] = total_params - sum(params.values())
    params["total"] = total_params

    video_shape = [1, 3, cfg.frames, cfg.size, cfg.size] if model.video is not None else None
    audio_shape = (
        [1, cfg.audio_examples, EXAMPLE_FRAMES, MEL_BANDS] if model.audio is not None else None
    )
    video = torch.empty(video_shape, device="meta") if video_shape else None
    audio = torch.empty(audio_shape, device="meta") if audio_shape else None
    has_audio = torch.ones(1, dtype=torch.bool, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(video, audio, has_audio)
    by_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    root = type(model).__name__
    flops = {
        "video_trunk": by_module.get(f"{root}.video", 0),
        "audio_trunk": by_module.get(f"{root}.audio", 0),
        "head": by_module.get(f"{root}.head", 0),
    }
    total_flops = counter.get_total_flops()
    flops["fusion"] = total_flops - sum(flops.values())
    flops["total"] = total_flops
    return {
        "preset": cfg.preset,
        "depth": cfg.depth,
        "fusion": cfg.fusion,
        "modality": cfg.modality,
        "num_classes": cfg.num_classes,
        "inputs": {"video": video_shape, "audio": audio_shape},
        "params": {k: params[k] for k in (*PARTS, "total")},
        "gflops_per_clip": {k: round(flops[k] / 1e9, 4) for k in (*PARTS, "total")},
    }
