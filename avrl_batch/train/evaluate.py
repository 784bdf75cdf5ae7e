"""``avrl evaluate``: the paper's measurements on prepared clips, in-process (no Ray needed).

- per-class top-1 accuracy, one row per model (Table II layout; several models = Table V)
- overall accuracy and the mean of the per-class accuracies
- a confusion matrix image (Fig. 4)
- the dark subset (Table IV): ``subset="dark"``
- patch robustness (Fig. 6): ``patch="temporal"`` blanks a contiguous run of ``ratio`` of the
  T frames; ``patch="spatial"`` blanks a square covering ``ratio`` of each frame's area, at the
  same place in every frame. Positions are drawn per clip from a fixed seed, so two models see
  the same occlusions. Blanked pixels are 0 (black), like a covered lens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from avrl_batch import storage
from avrl_batch.errors import ConfigError, DataError
from avrl_batch.train.loop import STATE_FILE
from avrl_batch.train.prepare import PreparedData, load_prepared, read_split

PATCHES = ("temporal", "spatial")
SUBSETS = ("all", "dark", "light")


@dataclass(frozen=True)
class EvalResult:
    model: str  # the model file's URI
    model_id: str
    modality: str
    fusion: str
    split: str
    subset: str
    patch: str | None
    ratio: float
    class_names: tuple[str, ...]
    per_class_acc: tuple[float | None, ...]  # None where the class has no clips
    per_class_n: tuple[int, ...]
    mean_class_acc: float
    overall_acc: float
    n: int
    confusion: tuple[tuple[int, ...], ...]  # rows = true class, columns = predicted

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_id": self.model_id,
            "modality": self.modality,
            "fusion": self.fusion,
            "split": self.split,
            "subset": self.subset,
            "patch": self.patch,
            "ratio": self.ratio,
            "per_class_acc": dict(zip(self.class_names, self.per_class_acc, strict=True)),
            "per_class_n": dict(zip(self.class_names, self.per_class_n, strict=True)),
            "mean_class_acc": self.mean_class_acc,
            "overall_acc": self.overall_acc,
            "n": self.n,
            "class_names": list(self.class_names),
            "confusion": [list(r) for r in self.confusion],
        }


def load_model_uri(uri: str, *, endpoint_url: str | None = None) -> Any:
    """A ``LoadedModel`` from a model file (local path or object URI) or from a training
    checkpoint folder (``OUT/checkpoints/epoch_NNNN``, local or S3)."""
    from avrl_batch.errors import StorageError, WeightsError
    from avrl_batch.modelfile import model_from_bytes

    state_uri = storage.join(uri, STATE_FILE) if not uri.endswith(".avrl") else None
    if state_uri is not None and storage.exists(state_uri, endpoint_url=endpoint_url):
        return _load_checkpoint(state_uri, endpoint_url)
    try:
        data = storage.read_bytes(uri, endpoint_url=endpoint_url)
    except StorageError as exc:
        raise WeightsError(f"model file not found: {uri} ({exc})") from exc
    return model_from_bytes(data, source=uri)


def _load_checkpoint(state_uri: str, endpoint_url: str | None) -> Any:
    from avrl_batch.config import ModelConfig
    from avrl_batch.model import build_model
    from avrl_batch.modelfile import LoadedModel, load_weights_only, model_id_for

    state = load_weights_only(storage.read_bytes(state_uri, endpoint_url=endpoint_url), state_uri)
    cfg = ModelConfig.from_dict(state["model_config"])
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    meta = {"checkpoint": state_uri, "epoch": int(state["epoch"]), "history": state["history"]}
    return LoadedModel(model=model, cfg=cfg, model_id=model_id_for(cfg, state["model"]), meta=meta)


def occlude(frames: np.ndarray, patch: str | None, ratio: float, seed: int = 0) -> np.ndarray:
    """A copy of frames (N, T, H, W, 3) uint8 with the Fig. 6 occlusion applied per clip."""
    if patch is None or ratio <= 0:
        return frames
    if patch not in PATCHES:
        raise ConfigError(f"unknown patch {patch!r}; choose temporal or spatial")
    if not 0 < ratio <= 1:
        raise ConfigError(f"--ratio must be in (0, 1], got {ratio}")
    out = frames.copy()
    n, t, h, w, _ = frames.shape
    rng = np.random.default_rng(seed)
    for i in range(n):
        if patch == "temporal":
            k = min(t, max(1, round(ratio * t)))
            s = int(rng.integers(0, t - k + 1))
            out[i, s : s + k] = 0  # k consecutive frames blank
        else:
            side_h = min(h, max(1, round(h * ratio**0.5)))
            side_w = min(w, max(1, round(w * ratio**0.5)))
            y = int(rng.integers(0, h - side_h + 1))
            x = int(rng.integers(0, w - side_w + 1))
            out[i, :, y : y + side_h, x : x + side_w] = 0  # same square on every frame
    return out


def predict(loaded: Any, clips: dict[str, np.ndarray], *, batch_size: int = 32) -> np.ndarray:
    """Predicted class index per clip (N,), in eval mode, batch by batch on the CPU."""
    import torch

    from avrl_batch.train.loop import batch_inputs

    cfg = loaded.cfg
    model = loaded.model.eval()
    n = len(clips["label"])
    preds = []
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            batch = {
                "frames": torch.from_numpy(clips["frames"][s : s + batch_size]),
                "logmel": torch.from_numpy(clips["logmel"][s : s + batch_size]),
                "label": torch.from_numpy(clips["label"][s : s + batch_size]),
                "has_audio": torch.from_numpy(clips["has_audio"][s : s + batch_size]),
            }
            video, audio, has_audio, _ = batch_inputs(batch, cfg, torch.device("cpu"))
            preds.append(model(video, audio, has_audio).argmax(1).numpy())
    return np.concatenate(preds) if preds else np.zeros(0, np.int64)


def score(
    labels: np.ndarray, preds: np.ndarray, class_names: tuple[str, ...]
) -> tuple[list[float | None], list[int], float, float, np.ndarray]:
    """Per-class top-1 accuracy, clips per class, mean per-class accuracy, overall accuracy,
    and the confusion matrix (C, C) with rows = true class."""
    c = len(class_names)
    conf = np.zeros((c, c), np.int64)
    np.add.at(conf, (labels, preds), 1)
    per_n = conf.sum(1)
    per_acc = [float(conf[i, i] / per_n[i]) if per_n[i] else None for i in range(c)]
    seen = [a for a in per_acc if a is not None]
    mean = float(np.mean(seen)) if seen else float("nan")
    overall = float(np.trace(conf) / max(1, conf.sum()))
    return per_acc, [int(x) for x in per_n], mean, overall, conf


def select_clips(
    prepared: PreparedData, split: str, subset: str, *, endpoint_url: str | None = None
) -> dict[str, np.ndarray]:
    if subset not in SUBSETS:
        raise ConfigError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    clips = read_split(prepared, split, endpoint_url=endpoint_url)
    if subset != "all":
        keep = clips["dark"] if subset == "dark" else ~clips["dark"]
        clips = {k: v[keep] for k, v in clips.items()}
        if not keep.any():
            raise DataError(f"{prepared.uri}: the '{split}' split has no {subset} clips")
    return clips


def evaluate(
    model_uris: list[str],
    data_uri: str,
    *,
    split: str = "test",
    subset: str = "all",
    patch: str | None = None,
    ratio: float = 0.0,
    seed: int = 0,
    endpoint_url: str | None = None,
) -> list[EvalResult]:
    """Evaluate each model on the same clips (and the same occlusions); one result per model."""
    if patch is not None and ratio <= 0:
        raise ConfigError("--patch needs --ratio in (0, 1], e.g. --ratio 0.5")
    prepared = load_prepared(data_uri, endpoint_url=endpoint_url)
    clips = select_clips(prepared, split, subset, endpoint_url=endpoint_url)
    clips["frames"] = occlude(clips["frames"], patch, ratio, seed)
    results = []
    for uri in model_uris:
        loaded = load_model_uri(uri, endpoint_url=endpoint_url)
        prepared.check_fits(loaded.cfg)
        preds = predict(loaded, clips)
        per_acc, per_n, mean, overall, conf = score(clips["label"], preds, prepared.class_names)
        results.append(
            EvalResult(
                model=uri,
                model_id=loaded.model_id,
                modality=loaded.cfg.modality,
                fusion=loaded.cfg.fusion,
                split=split,
                subset=subset,
                patch=patch,
                ratio=ratio if patch else 0.0,
                class_names=tuple(prepared.class_names),
                per_class_acc=tuple(per_acc),
                per_class_n=tuple(per_n),
                mean_class_acc=mean,
                overall_acc=overall,
                n=int(len(preds)),
                confusion=tuple(tuple(int(x) for x in row) for row in conf),
            )
        )
    return results


def results_table(results: list[EvalResult], title: str | None = None) -> Any:
    """A rich Table in the layout of the paper's Table II: rows = models, columns = classes,
    then the mean per-class and the overall accuracy (percent)."""
    from rich.table import Table
    from rich.text import Text

    r0 = results[0]
    if title is None:
        title = f"top-1 accuracy (%) on {r0.split}"
        if r0.subset != "all":
            title += f", {r0.subset} subset"
        if r0.patch:
            title += f", {r0.patch} patch ratio {r0.ratio:g}"
        title += f" ({r0.n} clips)"
    # Text: class names and model ids come from the model file, never rich markup
    table = Table(title=Text(title))
    table.add_column("model", no_wrap=True)
    for name in r0.class_names:
        table.add_column(Text(name), justify="right")
    table.add_column("mean", justify="right", style="bold")
    table.add_column("overall", justify="right")

    def pct(x: float | None) -> str:
        return "-" if x is None or x != x else f"{100 * x:.1f}"

    for r in results:
        label = f"{r.modality}" + (f"/{r.fusion}" if r.modality == "av" else "")
        table.add_row(
            Text(f"{label} {r.model_id}"),
            *[pct(a) for a in r.per_class_acc],
            pct(r.mean_class_acc),
            pct(r.overall_acc),
        )
    return table


def plot_confusion(results: list[EvalResult], path: str) -> None:
    """Row-normalised confusion matrices (Fig. 4), one panel per model, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(results)
    fig, axes = plt.subplots(1, k, figsize=(5.2 * k, 4.8), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        conf = np.asarray(r.confusion, dtype=float)
        norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        c = len(r.class_names)
        ax.set_xticks(range(c), r.class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(c), r.class_names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(c):
            for j in range(c):
                if conf[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
        name = r.modality + (f"/{r.fusion}" if r.modality == "av" else "")
        ax.set_title(f"{name}: mean {100 * r.mean_class_acc:.1f}%", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
