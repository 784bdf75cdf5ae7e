"""AVRL network: pure torch, no file or network access, no device moves.

    from avrl_batch.model import build_model, video_input
    model = build_model(cfg)                       # AVRL, random weights, CPU
    video = video_input(frames_uint8, cfg.mean, cfg.std)   # (B,T,H,W,3) u8 -> (B,3,T,H,W) f32
    logits = model(video, audio, has_audio)        # (B, cfg.num_classes)
"""

from avrl_batch.model.fusion import AVRL, build_model, video_input
from avrl_batch.model.r3d import ResNet3D, r3d, r3d_10, r3d_18, r3d_34
from avrl_batch.model.vggish import VGGishTrunk

__all__ = [
    "AVRL",
    "ResNet3D",
    "VGGishTrunk",
    "build_model",
    "r3d",
    "r3d_10",
    "r3d_18",
    "r3d_34",
    "video_input",
]
