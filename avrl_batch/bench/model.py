"""`avrl bench model`: inference throughput of AVRL per preset, fusion, batch size and variant.

A *variant* is how the forward pass runs, named by "+"-joined options:

- ``fp32``: plain float32 (the reference every other variant is compared with);
- ``fp16`` / ``bf16``: ``torch.autocast`` to that dtype (fp16 on CUDA only; bf16 on CPU runs
  where the CPU has bf16 kernels, and is usually slower where it has none);
- ``cl``: ``channels_last_3d`` memory format for the video branch (weights and input);
- ``compile``: ``torch.compile`` (inductor) of the whole network; the compile itself happens
  in the warm-up, which is not timed.

Each timed step is what the scan's predictor does per batch: uint8 frames (B, T, H, W, 3)
and float16 log-mel cross to the device (pinned memory on CUDA), are normalised there and
run through the network; on CUDA the step ends with a synchronize. GFLOPs per clip come from
``torch.utils.flop_counter.FlopCounterMode`` (2 x multiply-adds) on a float32 forward.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from avrl_batch.bench.report import Measured, envelope, load_average, markdown_table, median
from avrl_batch.errors import ConfigError

OPTIONS = ("fp32", "fp16", "bf16", "cl", "compile")
CPU_VARIANTS = ("fp32", "cl", "bf16")
CUDA_VARIANTS = ("fp32", "fp16", "bf16", "fp16+cl", "bf16+cl", "fp16+cl+compile")


def parse_variant(name: str, device: str) -> frozenset[str]:
    opts = frozenset(name.split("+"))
    bad = opts - set(OPTIONS)
    if bad:
        raise ConfigError(
            f"unknown variant option(s) {', '.join(sorted(bad))} in {name!r}; "
            f"combine {', '.join(OPTIONS)} with '+', e.g. fp16+cl"
        )
    if "fp16" in opts and "bf16" in opts:
        raise ConfigError(f"variant {name!r} asks for both fp16 and bf16; pick one")
    if "fp16" in opts and device == "cpu":
        raise ConfigError("fp16 autocast is a CUDA variant; on CPU try bf16 or fp32")
    return opts


def resolve_device(device: str) -> Any:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible here; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")
    return torch.device(device)


def gflops_per_clip(cfg: Any) -> float:
    """Forward GFLOPs (2 x MACs) of one window through the network, float32."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from avrl_batch.model import build_model

    model = build_model(cfg).eval()
    video = torch.zeros(1, 3, cfg.frames, cfg.size, cfg.size)
    audio = torch.zeros(1, cfg.audio_examples, 96, 64)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(video, audio)
    return counter.get_total_flops() / 1e9


class _Runner:
    """One (model config, batch, variant) on a device, ready to time."""

    def __init__(self, cfg: Any, batch: int, opts: frozenset[str], device: Any) -> None:
        import torch

        from avrl_batch.model import build_model

        torch.manual_seed(0)
        self.cfg, self.device, self.opts = cfg, device, opts
        self.on_cuda = device.type == "cuda"
        model = build_model(cfg).eval().to(device)
        self.cl = "cl" in opts
        if self.cl and model.video is not None:
            # the video branch only: channels_last_3d is a 5-D layout; VGGish is 2-D convs
            model.video.to(memory_format=torch.channels_last_3d)
        if "compile" in opts:
            # dynamo caches compiled code per Python function (AVRL.forward), shared by every
            # model of the run; after 8 recompiles (presets x batch sizes x layouts) it silently
            # falls back to eager. A fresh cache per runner measures each compiled model.
            torch._dynamo.reset()
        self.model = torch.compile(model) if "compile" in opts else model
        self.dtype = torch.float16 if "fp16" in opts else torch.bfloat16 if "bf16" in opts else None
        g = torch.Generator().manual_seed(1)
        frames = torch.randint(
            0, 256, (batch, cfg.frames, cfg.size, cfg.size, 3), dtype=torch.uint8, generator=g
        )  # (B, T, H, W, 3): what the decode tasks hand to the predictor
        logmel = torch.randn(
            batch, cfg.audio_examples, 96, 64, generator=g
        ).half()  # (B, E, 96, 64)
        if self.on_cuda:
            frames, logmel = frames.pin_memory(), logmel.pin_memory()
        self.frames, self.logmel = frames, logmel
        self.has_audio = torch.ones(batch, dtype=torch.bool)

    def step(self) -> None:
        import torch

        from avrl_batch.model import video_input

        dev, nb = self.device, self.on_cuda
        with (
            torch.inference_mode(),
            torch.autocast(
                device_type=dev.type,
                dtype=self.dtype or torch.float32,
                enabled=self.dtype is not None,
            ),
        ):
            video = video_input(self.frames.to(dev, non_blocking=nb), self.cfg.mean, self.cfg.std)
            if self.cl:
                video = video.contiguous(memory_format=torch.channels_last_3d)
            audio = self.logmel.to(dev, non_blocking=nb).float()
            logits = self.model(video, audio, self.has_audio.to(dev, non_blocking=nb))
            logits.float().cpu()  # the probabilities go back to the host, as in the scan
        if self.on_cuda:
            torch.cuda.synchronize()


def _time(runner: _Runner, runs: int, min_run_s: float) -> tuple[Measured, int]:
    """Median over ``runs`` runs; a run repeats the step enough times to last ``min_run_s``
    (tiny models take milliseconds per batch), found from the warm-up."""
    t0 = time.perf_counter()
    runner.step()  # warm-up: allocator, oneDNN primitive cache, torch.compile
    runner.step()
    per = max((time.perf_counter() - t0) / 2, 1e-6)
    iters = max(1, int(min_run_s / per))
    m = Measured("")
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(iters):
            runner.step()
        m.add((time.perf_counter() - t) / iters)
    return m, iters


def bench_model(
    *,
    presets: tuple[str, ...] = ("tiny", "small"),
    fusions: tuple[str, ...] = ("concat",),
    batch_sizes: tuple[int, ...] = (1, 8),
    paper_batch_sizes: tuple[int, ...] = (1,),
    variants: tuple[str, ...] | None = None,
    device: str = "cpu",
    runs: int = 3,
    min_run_s: float = 0.5,
    threads: int | None = None,
) -> dict[str, Any]:
    """Clips/s and GFLOPs/s for every preset x fusion x batch x variant; speed-ups of each
    variant over fp32 at the same (preset, fusion, batch), measured in the same run."""
    import torch

    from avrl_batch.config import preset as get_preset

    load0 = load_average()
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    variants = variants or (CUDA_VARIANTS if dev.type == "cuda" else CPU_VARIANTS)
    parsed = {v: parse_variant(v, dev.type) for v in variants}
    if "fp32" not in parsed:
        parsed = {"fp32": frozenset({"fp32"}), **parsed}  # the reference for "helped"
    rows: list[dict[str, Any]] = []
    for p in presets:
        for fusion in fusions:
            cfg = get_preset(p, fusion=fusion)
            if fusion == "add" and cfg.video_dim != cfg.audio_dim:
                cfg = replace(cfg, audio_width=cfg.width)  # add needs equal feature sizes
            gf = gflops_per_clip(cfg)
            for b in paper_batch_sizes if p == "paper" else batch_sizes:
                # the paper model runs ~3 s per clip on 2 CPU cores: one step per run
                run_s = 0.0 if p == "paper" else min_run_s
                base = None
                for vname, opts in parsed.items():
                    m, iters = _time(_Runner(cfg, b, opts, dev), runs, run_s)
                    clips_s = b / m.median_s
                    row = {
                        "preset": p,
                        "fusion": fusion,
                        "batch": b,
                        "variant": vname,
                        "device": str(dev),
                        "gflops_per_clip": round(gf, 3),
                        "s_per_batch": round(m.median_s, 5),
                        "s_per_batch_runs": [round(s, 5) for s in m.seconds],
                        "steps_per_run": iters,
                        "clips_per_s": round(clips_s, 3),
                        "gflops_per_s": round(gf * clips_s, 4),
                    }
                    if vname == "fp32":
                        base = clips_s
                    row["speedup_vs_fp32"] = round(clips_s / base, 3) if base else None
                    rows.append(row)
    by_variant = {
        v: round(median([r["speedup_vs_fp32"] for r in rows if r["variant"] == v]), 3)
        for v in parsed
    }
    # a variant "helped" when its median speed-up over every measured row beats fp32 by 5 %
    helped = sorted(v for v, x in by_variant.items() if v != "fp32" and x > 1.05)
    return envelope(
        "model",
        {
            "runs": runs,
            "device": str(dev),
            "results": rows,
            "median_speedup_by_variant": by_variant,
            "helped": helped,
        },
        load_before=load0,
    )


def table(doc: dict[str, Any]) -> list[str]:
    header = (
        "preset", "fusion", "batch", "variant", "GFLOPs/clip", "clips/s", "GFLOPs/s", "vs fp32"
    )
    return markdown_table(
        header,
        (
            (r["preset"], r["fusion"], str(r["batch"]), r["variant"],
             f"{r['gflops_per_clip']:.2f}", f"{r['clips_per_s']:.2f}", f"{r['gflops_per_s']:.1f}",
             f"{r['speedup_vs_fp32']:.2f}")
            for r in doc["results"]
        ),
    )
