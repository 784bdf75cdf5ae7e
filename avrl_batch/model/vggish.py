"""VGGish conv trunk, with torchvggish's layer layout so its ``vggish-10086976.pth`` loads by name.

``features`` is the same ``nn.Sequential`` as torchvggish's ``make_layers()``: convs at indices
0, 3, 6, 8, 11, 13 (ReLU after each, max-pools at 2, 5, 10, 15). The PCA post-processor and the
``embeddings`` MLP are not part of the model: the paper takes the global average of the trunk
output as the audio feature. ``weights.py`` accepts and drops the embedding tensors explicitly.
"""

from __future__ import annotations

import torch
from torch import nn

# VGGish example geometry: 0.96 s of 10 ms hops x 64 mel bands
EXAMPLE_FRAMES = 96
MEL_BANDS = 64

# widths of VGGish at audio_width = 64; "M" is a 2x2 max-pool
_LAYOUT = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M")


def make_features(audio_width: int = 64, batchnorm: bool = False) -> nn.Sequential:
    """torchvggish's ``make_layers()`` with every width scaled by ``audio_width / 64``.

    ``batchnorm`` puts a BatchNorm2d after every conv (then the layer indices no longer match
    torchvggish's, so its weights do not load): for trunks trained from scratch only."""
    layers: list[nn.Module] = []
    in_channels = 1
    for v in _LAYOUT:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out = int(v) * audio_width
            layers.append(nn.Conv2d(in_channels, out, kernel_size=3, padding=1))
            if batchnorm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            in_channels = out
    return nn.Sequential(*layers)


class VGGishTrunk(nn.Module):
    """Log-mel examples (B, E, 96, 64) -> audio feature (B, 8 * audio_width).

    Every example goes through the trunk on its own (as in VGGish); the feature is the mean over
    all examples of the window and over the trunk's 6 x 4 output grid.
    """

    def __init__(self, *, audio_width: int = 64, batchnorm: bool = False) -> None:
        super().__init__()
        self.features = make_features(audio_width, batchnorm)
        self.out_dim = 8 * audio_width
        # torchvision VGG's initialisation: PyTorch's default conv init shrinks activations about
        # threefold per layer, so after six convs (no BatchNorm here) a from-scratch trunk
        # outputs near-constant features and the head cannot learn from them
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        b, e, t, f = logmel.shape
        x = logmel.reshape(b * e, 1, t, f)  # (B*E, 1, 96, 64): one image per example
        x = self.features(x)  # (B*E, C, 6, 4)
        x = x.reshape(b, e, x.shape[1], -1)  # (B, E, C, 24)
        return x.mean(dim=(1, 3))  # (B, C)
