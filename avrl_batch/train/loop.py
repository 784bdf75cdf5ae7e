"""The per-worker training function of ``avrl train`` (runs inside Ray Train workers).

Each worker builds the same network (same seed), wraps it in DDP with
``ray.train.torch.prepare_model`` (gloo on CPU, NCCL on GPU), streams its shard of the prepared
clips with ``iter_torch_batches`` and reports one metrics row per epoch. Validation counts are
summed over workers so every worker sees the same global validation loss, which keeps the
plateau schedule (and so the learning rate) identical on all of them.

Resumption: the loop starts from ``ray.train.get_checkpoint()`` when there is one (a restarted
worker group after a failure, or a rerun of the same output with ``--resume``) and continues at
the epoch after the saved one with the optimiser, scheduler and metric history restored.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict
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


def _metrics_from_counts(
    loss_sum: float, correct: torch.Tensor, total: torch.Tensor, class_names: tuple[str, ...]
) -> dict[str, Any]:
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


def _maybe_fail(config: dict[str, Any], epoch: int, rank: int, world: int) -> None:
    """Test hook for fault injection (``fail_at_epoch`` + ``fail_marker`` in the loop config):
    the highest-rank worker raises once at the start of that epoch. The marker file makes it
    once: the restarted worker group finds it and trains on.

    It first waits until Ray Train has registered the previous epoch's checkpoint (listed in
    the run's ``checkpoint_manager_snapshot.json``): Ray Train V2's controller handles a
    worker error before reports still queued from the same poll, so a failure within a poll
    interval (2 s) of a report can drop that report and resume one epoch earlier. A real
    crash mid-epoch is far from the report; the wait makes the test see that case."""
    at = config.get("fail_at_epoch")
    marker = config.get("fail_marker")
    if at is None or epoch != at or rank != world - 1 or not marker:
        return
    if os.path.exists(marker):
        return
    snapshot = config.get("fail_snapshot")
    if snapshot and epoch > 1:
        from avrl_batch import storage

        previous = f"epoch_{epoch - 1:04d}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            endpoint = config.get("endpoint_url")
            if storage.exists(snapshot, endpoint_url=endpoint) and previous in storage.read_bytes(
                snapshot, endpoint_url=endpoint
            ).decode("utf-8", "replace"):
                break
            time.sleep(0.5)
    Path(marker).write_text(f"failed at epoch {epoch} on rank {rank}\n")
    raise RuntimeError(f"injected failure at epoch {epoch} (test hook fail_at_epoch)")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: {"model": ModelConfig dict, "train": TrainConfig dict,
    optional "fail_at_epoch"/"fail_marker" (test hook)}."""
    import ray.train
    import ray.train.torch

    from avrl_batch.model import build_model

    cfg = ModelConfig.from_dict(config["model"])
    tc = TrainConfig(**config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    torch.manual_seed(tc.seed)  # identical initial weights on every worker
    model = build_model(cfg)
    opt, sched = make_optimizer(model, tc)
    history: list[dict[str, Any]] = []
    start_epoch = 1
    resumed_from = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        # a private copy per worker: as_directory() shares one download folder between the
        # workers of a node, and a worker could read a file another is still writing
        with tempfile.TemporaryDirectory() as d:
            checkpoint.to_directory(d)
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = list(state["history"])
        resumed_from = int(state["epoch"])
        start_epoch = resumed_from + 1

    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(model)
    autocast, scaler = _autocast(device)
    local_batch = max(1, tc.batch_size // world)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    gen = torch.Generator()
    class_names = tuple(cfg.class_names)
    n_cls = len(class_names)

    for epoch in range(start_epoch, tc.epochs + 1):
        _maybe_fail(config, epoch, rank, world)
        t_epoch = time.monotonic()
        gen.manual_seed(tc.seed * 100_003 + epoch * 1009 + rank)  # flips differ per worker/epoch
        torch.manual_seed(tc.seed * 100_003 + epoch * 1009 + rank)  # audio dropout draws

        model.train()
        loss_sum = torch.zeros(1, dtype=torch.float64)
        correct = torch.zeros(n_cls, dtype=torch.float64)
        total = torch.zeros(n_cls, dtype=torch.float64)
        batches = train_shard.iter_torch_batches(
            batch_size=local_batch,
            device="cpu",
            local_shuffle_buffer_size=8 * local_batch,
            local_shuffle_seed=tc.seed + epoch * 7919 + rank,
        )
        data_wait = 0.0  # time blocked on the data stream: >> compute means data-bound
        t_wait = time.monotonic()
        for batch in batches:
            data_wait += time.monotonic() - t_wait
            video, audio, has_audio, labels = batch_inputs(
                batch, cfg, device, flip_p=tc.flip_p, generator=gen
            )
            with autocast:
                loss, logits = forward_loss(
                    model, video, audio, has_audio, labels, audio_dropout=tc.audio_dropout
                )
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            _accumulate(loss, logits, labels, loss_sum, correct, total)
            t_wait = time.monotonic()
        data_wait += time.monotonic() - t_wait
        t_train = time.monotonic() - t_epoch
        train_m = _metrics_from_counts(
            float(_all_reduce_sum(loss_sum)[0]),
            _all_reduce_sum(correct),
            _all_reduce_sum(total),
            class_names,
        )

        model.eval()
        loss_sum = torch.zeros(1, dtype=torch.float64)
        correct = torch.zeros(n_cls, dtype=torch.float64)
        total = torch.zeros(n_cls, dtype=torch.float64)
        with torch.no_grad():
            for batch in val_shard.iter_torch_batches(
                batch_size=max(local_batch, 16), device="cpu"
            ):
                video, audio, has_audio, labels = batch_inputs(batch, cfg, device)
                with autocast:
                    loss, logits = forward_loss(model, video, audio, has_audio, labels)
                _accumulate(loss, logits, labels, loss_sum, correct, total)
        val_m = _metrics_from_counts(
            float(_all_reduce_sum(loss_sum)[0]),
            _all_reduce_sum(correct),
            _all_reduce_sum(total),
            class_names,
        )
        lr = opt.param_groups[0]["lr"]  # the rate this epoch trained with
        step_schedule(sched, val_m["loss"] if val_m["n"] > 0 else None)

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
            "world_size": world,
            "resumed_from_epoch": resumed_from,
            "epoch_s": time.monotonic() - t_epoch,
            "train_s": t_train,
            "data_wait_s": data_wait,
        }
        history.append(row)
        _report(row, history, epoch, rank, model, opt, sched, tc, cfg)


def _accumulate(
    loss: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_sum: torch.Tensor,
    correct: torch.Tensor,
    total: torch.Tensor,
) -> None:
    n_cls = correct.shape[0]
    pred = logits.detach().argmax(1).cpu()
    y = labels.cpu()
    loss_sum += float(loss.detach()) * y.shape[0]
    total += torch.bincount(y, minlength=n_cls).double()
    correct += torch.bincount(y[pred == y], minlength=n_cls).double()


def _report(
    row: dict[str, Any],
    history: list[dict[str, Any]],
    epoch: int,
    rank: int,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    tc: TrainConfig,
    cfg: ModelConfig,
) -> None:
    """Every worker reports (it is a barrier); rank 0 alone attaches the checkpoint."""
    import ray.train

    if rank != 0:
        ray.train.report(row)
        return
    inner = getattr(model, "module", model)  # unwrap DDP
    state = {
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "history": history,
        "model_config": cfg.to_dict(),
        "train_config": asdict(tc),
    }
    with tempfile.TemporaryDirectory() as d:
        torch.save(state, Path(d) / STATE_FILE)
        ray.train.report(
            row,
            checkpoint=ray.train.Checkpoint.from_directory(d),
            checkpoint_dir_name=f"epoch_{epoch:04d}",
        )
