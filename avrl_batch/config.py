"""Frozen configuration dataclasses and the model presets.

Every setting that changes what the network computes lives in ``ModelConfig``; it is stored
inside the model file so that scan and evaluate rebuild exactly the network that was trained.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from avrl_batch.classes import SHADE, ClassSet
from avrl_batch.errors import ConfigError

FUSIONS = ("concat", "concat_ln", "concat_um", "add", "lf")
MODALITIES = ("av", "video", "audio")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("plateau", "cosine")
FREEZE = ("video", "audio", "trunks")  # what `avrl train --init M --freeze` keeps fixed

# kenshohara/3D-ResNets-PyTorch normalises 0-1 RGB with the Kinetics statistics.
KINETICS_MEAN = (0.4345, 0.4051, 0.3775)
KINETICS_STD = (0.2768, 0.2713, 0.2737)

# Bounds on every number a model file can set (inclusive). A model file is input: its config
# decides how big a network is built and how much every decode task allocates (frames x size^2
# x 3 bytes per window, one window per window_s of footage). The bounds leave room for any
# real model (paper: widths 64, 50 frames of 240^2, 4 s windows, head (512, 256)) and keep a
# window's frames under 100 MB (128 x 512^2 x 3) and a 300-s segment under 600 windows.
LIMITS: dict[str, tuple[float, float]] = {
    "width": (1, 256),  # 3D-ResNet conv1 channels; layer4 has 8x
    "audio_width": (1, 256),  # VGGish conv1 channels; the last block has 8x
    "frames": (1, 128),
    "size": (8, 512),  # pixels per side
    "window_s": (0.5, 60.0),  # seconds
    "head_hidden": (1, 4096),  # each of the two hidden layers
    "um_scale": (1e-3, 1e3),
    "classes": (2, 256),
}
CLASS_NAME_MAX_CHARS = 64
# a preset name becomes part of the model id, which names output objects
PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


@dataclass(frozen=True)
class ModelConfig:
    """What the AVRL network is. Defaults are the paper's (Gao et al., DESIGN.md §2)."""

    preset: str = "paper"
    # video branch: 3D-ResNet with BasicBlocks; depth 34 -> blocks (3, 4, 6, 3)
    depth: int = 34
    width: int = 64  # channels of conv1 / layer1; layers 2-4 double it -> feature = 8 * width
    frames: int = 50  # T frames sampled at a fixed step over the window
    size: int = 240  # frames resized to size x size
    # audio branch: VGGish trunk; widths 64-128-256-512 at audio_width = 64
    audio_width: int = 64
    # fusion + head
    fusion: str = "concat"
    modality: str = "av"
    head_hidden: tuple[int, int] = (512, 256)  # Table I: Linear(1024->512), Linear(512->256)
    um_scale: float = 10.0  # Concat+UM: audio feature multiplied by S
    # the classes in output order and the normal (no anomaly) ones: a trained model's come
    # from its data (`avrl prepare --classes/--normal`); the presets' are SHADE's
    class_names: tuple[str, ...] = SHADE.names
    normal_classes: tuple[str, ...] = tuple(sorted(SHADE.normal))
    # a window is this long in seconds: clips are trained at this length and scan windows
    # have it; the audio of a window gives floor((window_s - 0.96) / 0.96) + 1 examples
    window_s: float = 4.0
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    # subtract each window's temporal mean frame before the video trunk (static-camera
    # background suppression). The paper feeds raw frames (False); the from-scratch `tiny`
    # preset needs it: on 450 synthetic clips its video branch otherwise memorises the
    # backgrounds (video-only test accuracy 13% -> 37% after 20 epochs with it)
    subtract_background: bool = False
    # BatchNorm after every VGGish conv (VGGish has none, so its weights then do not load); the
    # from-scratch `tiny` preset uses it because its audio branch otherwise learns far slower
    # than the video branch and the fused model ignores the audio
    audio_batchnorm: bool = False

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {self.fusion!r}; choose one of {', '.join(FUSIONS)}")
        if self.modality not in MODALITIES:
            raise ConfigError(
                f"unknown modality {self.modality!r}; choose one of {', '.join(MODALITIES)}"
            )
        if self.depth not in BLOCKS:
            raise ConfigError(f"unsupported depth {self.depth}; choose one of {sorted(BLOCKS)}")
        self._check_bounds()
        self.classes  # noqa: B018 - validates names and normals (ConfigError)

    def _check_bounds(self) -> None:
        """Every size within ``LIMITS``, every field of its type; one ConfigError line naming
        the field otherwise."""
        if not isinstance(self.preset, str) or not PRESET_NAME.fullmatch(self.preset):
            raise ConfigError(
                f"preset name {self.preset!r} must be 1-32 letters, digits, '_', '.' or '-'"
            )
        for name in ("width", "audio_width", "frames", "size"):
            _check_int(name, getattr(self, name), LIMITS[name])
        for name in ("window_s", "um_scale"):
            _check_number(name, getattr(self, name), LIMITS[name])
        if not isinstance(self.head_hidden, tuple) or len(self.head_hidden) != 2:
            raise ConfigError(f"head_hidden must be two layer sizes, got {self.head_hidden!r:.80}")
        for size in self.head_hidden:
            _check_int("head_hidden", size, LIMITS["head_hidden"])
        _check_class_names(self.class_names)
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) != 3:
                raise ConfigError(f"{name} must be 3 numbers (RGB), got {values!r:.80}")
            for v in values:
                _check_number(name, v, (0.0 if name == "mean" else 1e-6, 1.0))
        for name in ("subtract_background", "audio_batchnorm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false")

    @property
    def classes(self) -> ClassSet:
        return ClassSet(tuple(self.class_names), frozenset(self.normal_classes))

    def with_classes(self, classes: ClassSet) -> ModelConfig:
        """This network with another class set (a new head size)."""
        return replace(
            self, class_names=classes.names, normal_classes=tuple(sorted(classes.normal))
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def video_dim(self) -> int:
        return 8 * self.width  # layer4 channels (512 at width 64)

    @property
    def audio_dim(self) -> int:
        return 8 * self.audio_width  # last VGGish conv block (512 at audio_width 64)

    @property
    def audio_examples(self) -> int:
        """Number of 0.96 s log-mel examples the audio of one window yields."""
        from avrl_batch.media.logmel import examples_for_duration

        return examples_for_duration(self.window_s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        # JSON and torch.save round-trips turn tuples into lists
        kwargs = {
            k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known
        }
        return cls(**kwargs)


def _check_int(name: str, value: Any, bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name}={value!r:.40} is out of range: an integer in [{lo}, {hi}]")


def _check_number(name: str, value: Any, bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not lo <= value <= hi:
        raise ConfigError(f"{name}={value!r:.40} is out of range: a number in [{lo}, {hi}]")


def _check_class_names(names: Any) -> None:
    lo, hi = LIMITS["classes"]
    if not isinstance(names, tuple) or not lo <= len(names) <= hi:
        count = len(names) if isinstance(names, tuple) else type(names).__name__
        raise ConfigError(f"class_names: {count} classes, expected {lo:.0f} to {hi:.0f} names")
    for name in names:
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= CLASS_NAME_MAX_CHARS
            or not name.isprintable()
        ):
            raise ConfigError(
                f"class name {name!r:.80} must be 1-{CLASS_NAME_MAX_CHARS} printable characters"
            )
    if len(set(names)) != len(names):
        raise ConfigError("class_names must be distinct")


# BasicBlock counts per stage. 34 and 18 are torchvision / kenshohara's; 10 is the shallowest
# member of the same family (one block per stage), used by the `tiny` preset.
BLOCKS: dict[int, tuple[int, int, int, int]] = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
}

PRESETS: dict[str, ModelConfig] = {
    # the paper's settings (DESIGN.md §2)
    "paper": ModelConfig(),
    # 3D-ResNet-18, 16 frames of 112x112: trains on a single GPU, scans fast on CPU
    "small": ModelConfig(preset="small", depth=18, frames=16, size=112, window_s=2.0),
    # narrow and shallow: a training step well under a second on 2 CPU cores (tests, CI, demo)
    "tiny": ModelConfig(
        preset="tiny",
        depth=10,
        width=8,
        frames=8,
        size=48,
        audio_width=8,
        head_hidden=(64, 32),
        window_s=2.0,
        subtract_background=True,
        audio_batchnorm=True,
    ),
}
# the tiny network on 96x96 frames, the `bench` synthetic footage's own size. At 48x48 a person
# is 2-4 px wide and a fall or a second runner is hard to see: on the bench clips the video-only
# model reached ~42% mean per-class accuracy at 48 px (also with 4x the clips or twice the
# width) and ~48% at 96 px; the fused model 77% -> 86%. A training step costs about 4x tiny's.
PRESETS["tiny96"] = replace(PRESETS["tiny"], preset="tiny96", size=96)
# presets trained from scratch: Adam (lr 1e-3) is their default optimiser; the others use the
# paper's SGD (their trunks can start from pretrained weights)
FROM_SCRATCH = frozenset({"tiny", "tiny96"})


def _check_preset(name: str) -> None:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset with overrides (e.g. ``fusion="lf"``); raises ConfigError if unknown."""
    _check_preset(name)
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Defaults are the paper's: SGD, momentum 0.9, wd 1e-3, lr 1e-2,
    reduce-on-plateau down to 1e-7, batch 12, 80 epochs."""

    epochs: int = 80
    batch_size: int = 12  # global batch; split over workers
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 1e-3
    min_lr: float = 1e-7
    plateau_factor: float = 0.1
    plateau_patience: int = 5
    flip_p: float = 0.5  # random horizontal flip in training
    audio_dropout: float = 0.0  # probability of dropping a clip's audio (modality dropout)
    seed: int = 0
    # "sgd" is the paper's (with its momentum and weight decay); "adam" (lr 1e-3, same weight
    # decay) is what a from-scratch tiny model needs to learn in minutes on a CPU
    optimizer: str = "sgd"
    # "plateau" is the paper's (lr x plateau_factor when the validation loss stalls, down to
    # min_lr); "cosine" anneals lr to min_lr over `epochs` whatever validation says, which
    # steadies short runs on small validation splits (the demo's 27 clips)
    schedule: str = "plateau"
    # fine-tuning: the model file whose weights the network starts from (matching trunks; the
    # head too when the classes are the same) and the trunk(s) kept fixed ("video", "audio",
    # "trunks"; None: all train)
    init: str | None = None
    freeze: str | None = None

    def __post_init__(self) -> None:
        if self.freeze is not None and self.freeze not in FREEZE:
            raise ConfigError(
                f"unknown --freeze {self.freeze!r}; choose one of {', '.join(FREEZE)}"
            )
        if self.freeze is not None and self.init is None:
            raise ConfigError("--freeze needs --init MODEL: a fresh trunk would never learn")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}"
            )


# Adam's initial learning rate unless one is given (TrainConfig's lr, 1e-2, is the paper's for SGD)
ADAM_LR = 1e-3


def train_config(preset_name: str, **overrides: Any) -> TrainConfig:
    """The training settings for a model preset with overrides (``None`` = the default), as
    ``avrl train`` uses them: the paper's SGD, except Adam for the presets trained from scratch
    (``FROM_SCRATCH``); Adam starts at ``ADAM_LR`` unless ``lr`` is given. Raises ConfigError
    for an unknown preset, optimizer or schedule, or an audio dropout outside [0, 1)."""
    _check_preset(preset_name)
    given = {k: v for k, v in overrides.items() if v is not None}
    given.setdefault("optimizer", "adam" if preset_name in FROM_SCRATCH else "sgd")
    if given["optimizer"] == "adam":
        given.setdefault("lr", ADAM_LR)
    tc = TrainConfig(**given)
    if not 0 <= tc.audio_dropout < 1:
        raise ConfigError(f"--audio-dropout must be in [0, 1), got {tc.audio_dropout}")
    return tc
