"""The per-worker training function of ``avrl train`` (runs inside Ray Train workers).

Each worker builds the same network (same seed), wraps it in DDP with
``ray.train.torch.prepare_model`` (gloo on CPU, NCCL on GPU), streams its shard of the prepared
clips with ``iter_torch_batches`` and reports one metrics row per epoch. Validation counts are
summed over workers so every worker sees the same global validation loss, which keeps the
plateau schedule (and so the learning rate) identical on all of them.

Resumption: the loop starts from ``ray.train.get_checkpoint()`` when there is one (a restarted
worker group after a failure, or a rerun of the same output with ``--resume``) and continues at
the epoch after the saved one with the optimiser, scheduler and metric history restored; a run
extended to more epochs re-plans its cosine schedule from the current rate (``fit_schedule``).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from avrl_batch.config import ModelConfig, TrainConfig

STATE_FILE = "state.pt"


# ---------------------------------------------------------------------------------------------
# pieces that need no Ray (used by the loop, the DDP test and evaluation)


def batch_inputs(
    batch: dict[str, torch.Tensor],
    cfg: ModelConfig,
    device: torch.device,
    *,
    flip_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """A batch of shard columns -> (video, audio, has_audio, labels) on ``device``.

    Frames cross to the device as uint8 (a quarter of float32's bytes) and are normalised there.
    ``flip_p`` flips each clip's frames horizontally with that probability (training only).
    """
    from avrl_batch.model import video_input

    labels = batch["label"].to(device=device, dtype=torch.long)
    has_audio = batch["has_audio"].to(device=device, dtype=torch.bool)
    video = audio = None
    if cfg.modality in ("av", "video"):
        frames = batch["frames"].to(device)  # (B, T, H, W, 3) uint8
        if flip_p > 0:
            flip = torch.rand(frames.shape[0], generator=generator) < flip_p  # (B,) on CPU
            if bool(flip.any()):
                frames = frames.clone()
                idx = flip.nonzero().flatten().to(device)
                frames[idx] = frames[idx].flip(3)  # W axis of (B, T, H, W, 3)
        video = video_input(frames, cfg.mean, cfg.std)  # (B, 3, T, H, W)
    if cfg.modality in ("av", "audio"):
        audio = batch["logmel"].to(device=device, dtype=torch.float32)  # (B, E, 96, 64)
    return video, audio, has_audio, labels


def forward_loss(
    model: nn.Module,
    video: torch.Tensor | None,
    audio: torch.Tensor | None,
    has_audio: torch.Tensor,
    labels: torch.Tensor,
    *,
    audio_dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the batch and the logits (B, C)."""
    logits = model(video, audio, has_audio, audio_dropout=audio_dropout)
    return F.cross_entropy(logits.float(), labels), logits


def make_optimizer(model: nn.Module, tc: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """The paper's SGD (or Adam, ``tc.optimizer``) and the schedule: the paper's plateau
    schedule on validation loss (down to ``min_lr``), or cosine annealing to ``min_lr`` over
    ``tc.epochs`` (``tc.schedule``). Step it once per epoch with ``step_schedule``."""
    if tc.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay
        )
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay
        )
    if tc.schedule == "cosine":
        sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=max(tc.epochs, 1), eta_min=tc.min_lr
        )
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            mode="min",
            factor=tc.plateau_factor,
            patience=tc.plateau_patience,
            min_lr=tc.min_lr,
        )
    return opt, sched


def step_schedule(sched: Any, val_loss: float | None) -> None:
    """End of an epoch: the plateau schedule needs a finite validation loss (no val clips on
    this run: it holds still); cosine steps regardless."""
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if val_loss is not None and math.isfinite(val_loss):
            sched.step(val_loss)
    else:
        sched.step()


def fit_schedule(
    opt: torch.optim.Optimizer, sched: Any, tc: TrainConfig, done_epochs: int
) -> Any:
    """The restored schedule of a run resumed after ``done_epochs`` epochs, fitted to
    ``tc.epochs``. A cosine schedule whose horizon is another number of epochs (``--resume
    --epochs N`` extended the run) is re-planned: from the rate the next epoch would have
    trained with, annealing to ``min_lr`` over the epochs left. Re-planning the whole run to
    the new horizon instead would put the rate back up. A plateau schedule has no horizon."""
    if not isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
        return sched
    ends_after = done_epochs + sched.T_max - sched.last_epoch  # the epoch it reaches min_lr
    left = tc.epochs - done_epochs
    if ends_after == tc.epochs or left < 1:
        return sched
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]  # the new curve's start: the current rate
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=left, eta_min=tc.min_lr)


def _autocast(device: torch.device) -> tuple[Any, torch.amp.GradScaler | None]:
    """Mixed precision on GPU only: bf16 where the GPU has it (no scaler needed), else fp16 with
    a gradient scaler. CPU trains in fp32 (CPU autocast is slower than fp32 for 3D convs)."""
    import contextlib

    if device.type != "cuda":
        return contextlib.nullcontext(), None
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class EpochCounts:
    """Loss sum and per-class correct/total counts of one pass over a shard, on the CPU."""

    def __init__(self, n_classes: int) -> None:
        self.loss_sum = torch.zeros(1, dtype=torch.float64)
        self.correct = torch.zeros(n_classes, dtype=torch.float64)
        self.total = torch.zeros(n_classes, dtype=torch.float64)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n_cls = self.correct.shape[0]
        pred = logits.detach().argmax(1).cpu()
        y = labels.cpu()
        self.loss_sum += float(loss.detach()) * y.shape[0]
        self.total += torch.bincount(y, minlength=n_cls).double()
        self.correct += torch.bincount(y[pred == y], minlength=n_cls).double()

    def metrics(self, class_names: tuple[str, ...]) -> dict[str, Any]:
        """The counts summed over all workers (every worker must call this, in the same order)
        -> loss, acc, mean_class_acc, per_class_acc, n."""
        loss_sum = float(_all_reduce_sum(self.loss_sum)[0])
        correct = _all_reduce_sum(self.correct)
        total = _all_reduce_sum(self.total)
        n = int(total.sum())
        per_class = [
            (float(c) / float(t)) if t > 0 else None for c, t in zip(correct, total, strict=True)
        ]
        seen = [a for a in per_class if a is not None]
        return {
            "loss": loss_sum / max(1, n),
            "acc": float(correct.sum()) / max(1, n),
            "mean_class_acc": sum(seen) / len(seen) if seen else None,
            "per_class_acc": dict(zip(class_names, per_class, strict=True)),
            "n": n,
        }


# ---------------------------------------------------------------------------------------------
# the Ray Train function

# called on every worker as each epoch begins, after the previous epoch's checkpoint was
# reported: (epoch, world rank, world size). Pickled to the workers with the loop config.
EpochHook = Callable[[int, int, int], None]


@dataclass
class _Worker:
    """What one worker's epochs share: its place in the group, the network and its optimiser,
    its dataset shards and the run's metric history."""

    cfg: ModelConfig
    tc: TrainConfig
    rank: int
    world: int
    device: torch.device
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    autocast: Any
    scaler: torch.amp.GradScaler | None
    train_shard: Any
    val_shard: Any
    history: list[dict[str, Any]]
    resumed_from: int

    @property
    def local_batch(self) -> int:
        return max(1, self.tc.batch_size // self.world)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: {"model": ModelConfig dict, "train": TrainConfig dict,
    optional "epoch_hook": an ``EpochHook``, optional "init_state": an object ref of the
    weights to start from (``finetune.init_state``)}."""
    cfg = ModelConfig.from_dict(config["model"])
    tc = TrainConfig(**config["train"])
    hook: EpochHook | None = config.get("epoch_hook")
    w = _start_worker(cfg, tc, config.get("init_state"))
    gen = torch.Generator()
    for epoch in range(w.resumed_from + 1, tc.epochs + 1):
        if hook is not None:
            hook(epoch, w.rank, w.world)
        t_epoch = time.monotonic()
        gen.manual_seed(tc.seed * 100_003 + epoch * 1009 + w.rank)  # flips differ per worker/epoch
        torch.manual_seed(tc.seed * 100_003 + epoch * 1009 + w.rank)  # audio dropout draws
        train_counts, data_wait = _train_epoch(w, epoch, gen)
        t_train = time.monotonic() - t_epoch
        train_m = train_counts.metrics(tuple(cfg.class_names))
        val_m = _validate(w).metrics(tuple(cfg.class_names))
        lr = w.opt.param_groups[0]["lr"]  # the rate this epoch trained with
        step_schedule(w.sched, val_m["loss"] if val_m["n"] > 0 else None)
        row = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_m["loss"],
            "train_acc": train_m["acc"],
            "val_loss": val_m["loss"],
            "val_acc": val_m["acc"],
            "val_mean_class_acc": val_m["mean_class_acc"],
            "val_per_class_acc": val_m["per_class_acc"],
            "train_clips": train_m["n"],
            "val_clips": val_m["n"],
            "world_size": w.world,
            "resumed_from_epoch": w.resumed_from,
            "epoch_s": time.monotonic() - t_epoch,
            "train_s": t_train,
            "data_wait_s": data_wait,
        }
        w.history.append(row)
        _report(w, row, epoch)


def _start_worker(cfg: ModelConfig, tc: TrainConfig, init_ref: Any = None) -> _Worker:
    """The same initial network on every worker (same seed; the ``--init`` parent's weights
    where they fit, ``--freeze`` applied), restored from ``ray.train.get_checkpoint()`` when
    there is one, then wrapped in DDP."""
    import ray
    import ray.train
    import ray.train.torch

    from avrl_batch.model import build_model
    from avrl_batch.train.finetune import apply_init, freeze

    ctx = ray.train.get_context()
    torch.manual_seed(tc.seed)  # identical initial weights on every worker
    model = build_model(cfg)
    if init_ref is not None:
        apply_init(model, ray.get(init_ref))
    freeze(model, tc.freeze)
    opt, sched = make_optimizer(model, tc)
    history, resumed_from = _restore(model, opt, sched)
    sched = fit_schedule(opt, sched, tc, resumed_from)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(model)
    autocast, scaler = _autocast(device)
    return _Worker(
        cfg=cfg,
        tc=tc,
        rank=ctx.get_world_rank(),
        world=ctx.get_world_size(),
        device=device,
        model=model,
        opt=opt,
        sched=sched,
        autocast=autocast,
        scaler=scaler,
        train_shard=ray.train.get_dataset_shard("train"),
        val_shard=ray.train.get_dataset_shard("val"),
        history=history,
        resumed_from=resumed_from,
    )


def _restore(
    model: nn.Module, opt: torch.optim.Optimizer, sched: Any
) -> tuple[list[dict[str, Any]], int]:
    """Load the run's latest checkpoint, if any, into the model, optimiser and scheduler;
    returns the metric history and the epoch it was saved after (0: a fresh start)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return [], 0
    # a private copy per worker: as_directory() shares one download folder between the
    # workers of a node, and a worker could read a file another is still writing
    with tempfile.TemporaryDirectory() as d:
        checkpoint.to_directory(d)
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return list(state["history"]), int(state["epoch"])


def _train_epoch(w: _Worker, epoch: int, gen: torch.Generator) -> tuple[EpochCounts, float]:
    """One pass over this worker's train shard: its counts and the seconds it waited for data
    (much more than the compute time: data-bound)."""
    w.model.train()
    counts = EpochCounts(w.cfg.num_classes)
    batches = w.train_shard.iter_torch_batches(
        batch_size=w.local_batch,
        device="cpu",
        local_shuffle_buffer_size=8 * w.local_batch,
        local_shuffle_seed=w.tc.seed + epoch * 7919 + w.rank,
    )
    data_wait = 0.0
    t_wait = time.monotonic()
    for batch in batches:
        data_wait += time.monotonic() - t_wait
        video, audio, has_audio, labels = batch_inputs(
            batch, w.cfg, w.device, flip_p=w.tc.flip_p, generator=gen
        )
        with w.autocast:
            loss, logits = forward_loss(
                w.model, video, audio, has_audio, labels, audio_dropout=w.tc.audio_dropout
            )
        w.opt.zero_grad(set_to_none=True)
        if w.scaler is not None:
            w.scaler.scale(loss).backward()
            w.scaler.step(w.opt)
            w.scaler.update()
        else:
            loss.backward()
            w.opt.step()
        counts.add(loss, logits, labels)
        t_wait = time.monotonic()
    data_wait += time.monotonic() - t_wait
    return counts, data_wait


def _validate(w: _Worker) -> EpochCounts:
    """One pass over this worker's val shard in eval mode: its counts."""
    w.model.eval()
    counts = EpochCounts(w.cfg.num_classes)
    with torch.no_grad():
        for batch in w.val_shard.iter_torch_batches(
            batch_size=max(w.local_batch, 16), device="cpu"
        ):
            video, audio, has_audio, labels = batch_inputs(batch, w.cfg, w.device)
            with w.autocast:
                loss, logits = forward_loss(w.model, video, audio, has_audio, labels)
            counts.add(loss, logits, labels)
    return counts


def _report(w: _Worker, row: dict[str, Any], epoch: int) -> None:
    """Every worker reports (it is a barrier); rank 0 alone attaches the checkpoint."""
    import ray.train

    if w.rank != 0:
        ray.train.report(row)
        return
    inner = getattr(w.model, "module", w.model)  # unwrap DDP
    state = {
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
        "optimizer": w.opt.state_dict(),
        "scheduler": w.sched.state_dict(),
        "history": w.history,
        "model_config": w.cfg.to_dict(),
        "train_config": asdict(w.tc),
    }
    with tempfile.TemporaryDirectory() as d:
        torch.save(state, Path(d) / STATE_FILE)
        ray.train.report(
            row,
            checkpoint=ray.train.Checkpoint.from_directory(d),
            checkpoint_dir_name=f"epoch_{epoch:04d}",
        )
