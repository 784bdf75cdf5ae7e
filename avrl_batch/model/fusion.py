"""AVRL: the video branch, the audio branch, their fusion and the Table I head (docs/design.md §2).

Fusion strategies (``ModelConfig.fusion``; only used when ``modality == "av"``):

- ``concat``    cat(f_v, f_a)                      -> video_dim + audio_dim
- ``concat_ln`` LayerNorm(cat(f_v, f_a))           -> video_dim + audio_dim
- ``concat_um`` cat(f_v, S * f_a), S = um_scale    -> video_dim + audio_dim
- ``add``       f_v + f_a                          -> video_dim (needs video_dim == audio_dim)
- ``lf``        low-level fusion: the outer product f_a f_a^T, resized to the frame size, is a
                4th input channel on every frame; the video branch sees it -> video_dim

Modality ``video`` / ``audio`` keep one branch only (Table V ablation); the other input is
accepted and ignored.

Missing audio: where ``has_audio`` is False the audio feature is replaced by the learned vector
``missing_audio``. Modality dropout is the ``audio_dropout`` argument of ``forward`` (a
probability; it acts only in training mode) so the caller's training loop owns the schedule and
evaluation can never drop audio by accident.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avrl_batch.config import ModelConfig
from avrl_batch.errors import ConfigError
from avrl_batch.model.r3d import ResNet3D, r3d
from avrl_batch.model.vggish import VGGishTrunk


class AVRL(nn.Module):
    """The two-branch network. ``forward(video, audio, has_audio) -> logits (B, num_classes)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        uses_video = cfg.modality in ("av", "video")
        uses_audio = cfg.modality in ("av", "audio")
        fusion = cfg.fusion if cfg.modality == "av" else None
        self.fusion = fusion
        if fusion == "add" and cfg.video_dim != cfg.audio_dim:
            raise ConfigError(
                f"fusion 'add' needs equal feature sizes, got video {cfg.video_dim} and audio "
                f"{cfg.audio_dim}; set width and audio_width equal or pick another fusion"
            )

        self.video: ResNet3D | None = None
        if uses_video:
            in_channels = 4 if fusion == "lf" else 3
            self.video = r3d(cfg.depth, width=cfg.width, in_channels=in_channels)
        self.audio: VGGishTrunk | None = None
        self.missing_audio: nn.Parameter | None = None
        if uses_audio:
            self.audio = VGGishTrunk(
                audio_width=cfg.audio_width, batchnorm=cfg.audio_batchnorm
            )
            # zeros = "no activation" in the ReLU-pooled audio space; training moves it
            self.missing_audio = nn.Parameter(torch.zeros(cfg.audio_dim))
        self.fusion_norm: nn.LayerNorm | None = None
        if fusion == "concat_ln":
            self.fusion_norm = nn.LayerNorm(cfg.video_dim + cfg.audio_dim)

        if fusion in ("concat", "concat_ln", "concat_um"):
            head_in = cfg.video_dim + cfg.audio_dim
        elif fusion in ("add", "lf") or cfg.modality == "video":
            head_in = cfg.video_dim
        else:  # audio only
            head_in = cfg.audio_dim
        h1, h2 = cfg.head_hidden
        self.head = nn.Sequential(
            nn.Linear(head_in, h1),
            nn.ReLU(inplace=True),
            nn.Linear(h1, h2),
            nn.ReLU(inplace=True),
            nn.Linear(h2, cfg.num_classes),
        )

    def audio_feature(
        self,
        audio: torch.Tensor | None,
        has_audio: torch.Tensor | None,
        batch: int,
        audio_dropout: float = 0.0,
    ) -> torch.Tensor:
        """f_a (B, audio_dim), with the learned missing-audio vector where there is no audio."""
        assert self.audio is not None and self.missing_audio is not None
        missing = self.missing_audio.unsqueeze(0).expand(batch, -1)  # (B, audio_dim)
        if audio is None:
            return missing
        device = self.missing_audio.device
        present = (
            torch.ones(batch, dtype=torch.bool, device=device)
            if has_audio is None
            else has_audio.to(device=device, dtype=torch.bool)
        )
        if self.training and audio_dropout > 0:
            present = present & (torch.rand(batch, device=device) >= audio_dropout)
        f_a = self.audio(audio)  # (B, audio_dim)
        return torch.where(present.unsqueeze(1), f_a, missing)  # (B, audio_dim)

    def forward(
        self,
        video: torch.Tensor | None,
        audio: torch.Tensor | None = None,
        has_audio: torch.Tensor | None = None,
        *,
        audio_dropout: float = 0.0,
    ) -> torch.Tensor:
        """video (B, 3, T, H, W) normalised; audio (B, E, 96, 64) log-mel; has_audio (B,) bool.

        ``audio=None`` means no window has audio; ``has_audio=None`` means every window has.
        """
        if self.video is None:  # audio only
            if audio is None:
                raise ValueError("the audio-only model needs audio (B, E, 96, 64)")
            f_a = self.audio_feature(audio, has_audio, audio.shape[0], audio_dropout)
            return self.head(f_a)
        assert video is not None, "this model needs video (B, 3, T, H, W)"
        if self.cfg.subtract_background:
            video = video - video.mean(dim=2, keepdim=True)  # (B, 3, T, H, W) minus (B, 3, 1, H, W)
        batch = video.shape[0]
        if self.audio is None:  # video only
            return self.head(self.video(video))

        f_a = self.audio_feature(audio, has_audio, batch, audio_dropout)  # (B, Da)
        if self.fusion == "lf":
            _, _, t, h, w = video.shape
            amap = f_a.unsqueeze(2) * f_a.unsqueeze(1)  # (B, Da, Da) outer product
            amap = F.interpolate(
                amap.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False
            )  # (B, 1, H, W)
            amap = amap.unsqueeze(2).expand(-1, -1, t, -1, -1)  # (B, 1, T, H, W)
            x = torch.cat([video, amap.to(video.dtype)], dim=1)  # (B, 4, T, H, W)
            return self.head(self.video(x))

        f_v = self.video(video)  # (B, Dv)
        if self.fusion == "add":
            fused = f_v + f_a  # (B, Dv)
        elif self.fusion == "concat_um":
            fused = torch.cat([f_v, self.cfg.um_scale * f_a], dim=1)  # (B, Dv + Da)
        else:
            fused = torch.cat([f_v, f_a], dim=1)  # (B, Dv + Da)
            if self.fusion_norm is not None:
                fused = self.fusion_norm(fused)
        return self.head(fused)


def build_model(cfg: ModelConfig) -> AVRL:
    """The AVRL network for ``cfg``, randomly initialised on the CPU (no I/O, no device moves)."""
    return AVRL(cfg)


def video_input(
    frames: torch.Tensor,
    mean: tuple[float, float, float] | torch.Tensor,
    std: tuple[float, float, float] | torch.Tensor,
) -> torch.Tensor:
    """uint8 frames (B, T, H, W, 3) -> normalised float32 (B, 3, T, H, W) on the same device.

    Run it after the host-to-device copy: uint8 crosses the bus at a quarter of float32's bytes.
    """
    if frames.dim() != 5 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(
            f"expected uint8 frames (B, T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}"
        )
    x = frames.permute(0, 4, 1, 2, 3).contiguous()  # (B, 3, T, H, W), still uint8
    x = x.to(torch.float32).div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    return x.sub_(m).div_(s)
