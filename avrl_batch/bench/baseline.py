"""`avrl bench baseline`: what research code does, against the scan, side by side.

The naive baseline, per file (the way a clip classifier's evaluation script is usually
turned into a long-video scanner):

1. decode the whole video into memory with PyAV's default settings: every frame converted
   to full-size RGB and kept (``frame.to_ndarray(format="rgb24")`` into a list, then one
   stacked array);
2. load the whole audio track with ``librosa.load(path, sr=16000, mono=True)``; where librosa
   cannot read the container (MP4/MKV need audioread's FFmpeg backend, i.e. a system
   ``ffmpeg`` binary, which PyAV-only installs lack) the whole track is decoded into memory
   with PyAV and resampled with ``librosa.resample`` instead (recorded as ``audio_loader``);
3. for each window: sample T frames at a fixed step, resize them (torch bilinear), cut the
   window's audio and compute its VGGish log-mel, run the model on that one clip.

Peak memory is the baseline process's own peak RSS (``avrl_batch.memory.peak_rss_mb``: each
baseline run is a fresh subprocess, so it is that run's peak). The scan is
``bench.scan.scan_once`` on the same files and model file, with all cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from avrl_batch.bench.report import cpu_seconds, envelope, load_average, median
from avrl_batch.memory import peak_rss_mb


def _load_audio(path: str) -> tuple[np.ndarray | None, str]:
    """Whole track, 16 kHz mono float32 (N,), and which loader produced it."""
    import warnings

    import librosa

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns on its audioread fallback
            y, _ = librosa.load(path, sr=16_000, mono=True)
        return y.astype(np.float32), "librosa.load"
    except Exception as exc:  # noqa: BLE001 - any loader failure means: use the fallback
        reason = f"{type(exc).__name__}: {str(exc)[:120]}"
    import av

    with av.open(path) as container:
        if not container.streams.audio:
            return None, "none (no audio stream)"
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))  # (n,) mono float32
        y = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)  # (N,)
    y = librosa.resample(y, orig_sr=rate, target_sr=16_000)  # soxr_hq, librosa's default
    return y.astype(np.float32), f"pyav whole-track + librosa.resample (librosa.load: {reason})"


def naive_scan_file(path: str, model_path: str) -> dict[str, Any]:
    """The baseline on one file; returns windows, wall time, peak RSS and the audio loader."""

    import av
    import torch
    import torch.nn.functional as F

    from avrl_batch.media.logmel import log_mel_examples_16k_fixed
    from avrl_batch.media.video import sample_times
    from avrl_batch.model import video_input
    from avrl_batch.modelfile import load_model

    t0 = time.perf_counter()
    loaded = load_model(model_path)
    model, cfg = loaded.model.eval(), loaded.cfg
    # 1. every frame, full size, RGB, in memory
    with av.open(path) as container:
        # PyAV's defaults (slice threading), as research scripts leave them
        vs = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(vs)]
        fps = float(vs.average_rate)
    video = np.stack(frames)  # (N, H, W, 3) uint8: the whole file
    del frames
    # 2. the whole audio track
    wave, loader = _load_audio(path)
    duration = len(video) / fps
    n_windows = int(np.ceil(duration / cfg.window_s - 1e-9))
    e = cfg.audio_examples
    # 3. clip by clip
    with torch.inference_mode():
        for k in range(n_windows):
            ws = k * cfg.window_s
            we = min(ws + cfg.window_s, duration)
            idx = np.minimum((sample_times(ws, we, cfg.frames) * fps).astype(int), len(video) - 1)
            clip = torch.from_numpy(video[idx]).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
            clip = F.interpolate(clip, size=(cfg.size, cfg.size), mode="bilinear")
            clip = clip.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)  # (T, S, S, 3)
            v = video_input(clip.unsqueeze(0), cfg.mean, cfg.std)  # (1, 3, T, S, S)
            if wave is not None:
                seg = wave[int(ws * 16_000) : int(we * 16_000)]
                lm = torch.from_numpy(log_mel_examples_16k_fixed(seg, e)).unsqueeze(0)
                logits = model(v, lm.float(), torch.ones(1, dtype=torch.bool))
            else:
                logits = model(v, None, None)
            torch.softmax(logits, dim=1)
    return {
        "windows": n_windows,
        "footage_s": duration,
        "wall_s": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb(),
        "audio_loader": loader,
        "cpu_s": cpu_seconds(),
    }


def naive_scan(files: list[str], model_path: str) -> dict[str, Any]:
    """All files in one process (research scripts loop over files); peak RSS over all."""
    out: dict[str, Any] = {"windows": 0, "footage_s": 0.0, "files": len(files)}
    t0 = time.perf_counter()
    for f in files:
        r = naive_scan_file(f, model_path)
        out["windows"] += r["windows"]
        out["footage_s"] += r["footage_s"]
        out["peak_rss_mb"] = r["peak_rss_mb"]
        out["audio_loader"] = r["audio_loader"]
        out["cpu_s"] = r["cpu_s"]  # cumulative for the process
    out["wall_s"] = time.perf_counter() - t0
    return out


def run_naive_subprocess(files: list[str], model_path: str) -> dict[str, Any]:
    """The baseline in a fresh interpreter, so its peak RSS is its own."""
    cmd = [sys.executable, "-m", "avrl_batch.bench.baseline", model_path, *files]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        from avrl_batch.errors import AvrlError

        tail = res.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise AvrlError(f"the baseline run failed: {tail[0]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def video_files(source: str | Path) -> list[str]:
    from avrl_batch import storage

    return [s.uri for s in storage.list_sources(str(source), include=storage.DEFAULT_VIDEO_GLOBS)]


def bench_baseline(
    source: str | Path,
    *,
    preset: str = "small",
    runs: int = 3,
    workers: int | None = None,
    work: str | Path = "/tmp/avrl-bench/work",
    segment_s: float | None = None,
) -> dict[str, Any]:
    """Naive baseline vs ``avrl scan`` on the same files and model, interleaved run by run:
    throughput (hours of footage per hour) and peak memory, and their ratios."""
    import os

    from avrl_batch.bench.scan import ensure_model, scan_once

    load0 = load_average()
    work = Path(work)
    model = ensure_model(work, preset)
    files = video_files(source)
    if not files:
        from avrl_batch.errors import ConfigError

        raise ConfigError(f"no video files under {source}; point it at a folder of recordings")
    local = [f[len("file://") :] if f.startswith("file://") else f for f in files]
    n_workers = workers or len(os.sched_getaffinity(0))
    naive_runs: list[dict[str, Any]] = []
    scan_runs: list[dict[str, Any]] = []
    for _ in range(runs):
        naive_runs.append(run_naive_subprocess(local, str(model)))
        scan_runs.append(
            scan_once(
                source, model, work / "out-vs-baseline", workers=n_workers, segment_s=segment_s
            )
        )
    footage = naive_runs[0]["footage_s"]
    naive_hph = median([r["footage_s"] / r["wall_s"] for r in naive_runs])
    scan_hph = median([r["hours_per_hour"] for r in scan_runs])
    naive_mem = median([r["peak_rss_mb"] for r in naive_runs])
    scan_worker = median([r["sampled"]["worker_max_mb"] for r in scan_runs])
    scan_total = median(
        [r["sampled"]["workers_sum_mb"] + r["driver_peak_rss_mb"] for r in scan_runs]
    )
    naive_cpu_hph = median([r["footage_s"] / r["cpu_s"] for r in naive_runs])
    scan_cpu_hph = median([r["hours_per_cpu_hour"] for r in scan_runs])
    doc = {
        "preset": preset,
        "runs": runs,
        "files": [Path(f).name for f in local],
        # footage hours per CPU-hour (robust to other load on a shared machine)
        "cpu_speedup": round(scan_cpu_hph / naive_cpu_hph, 3),
        "footage_s": round(footage, 3),
        "baseline": {
            "hours_per_hour": round(naive_hph, 3),
            "hours_per_hour_runs": [round(r["footage_s"] / r["wall_s"], 3) for r in naive_runs],
            "peak_rss_mb": round(naive_mem, 1),
            "peak_rss_mb_runs": [round(r["peak_rss_mb"], 1) for r in naive_runs],
            "audio_loader": naive_runs[0]["audio_loader"],
            "hours_per_cpu_hour": round(naive_cpu_hph, 3),
            "windows": naive_runs[0]["windows"],
        },
        "scan": {
            "workers": n_workers,
            "hours_per_hour": round(scan_hph, 3),
            "hours_per_hour_runs": [round(r["hours_per_hour"], 3) for r in scan_runs],
            "hours_per_hour_with_ray_start": round(
                median([r["hours_per_hour_with_ray_start"] for r in scan_runs]), 3
            ),
            "peak_worker_mb": round(scan_worker, 1),
            "hours_per_cpu_hour": round(scan_cpu_hph, 3),
            # every Ray worker's peak plus the driver's: all the memory the scan used
            "total_mb": round(scan_total, 1),
            "windows": scan_runs[0]["windows"],
        },
        "speedup": round(scan_hph / naive_hph, 3),
        "memory_ratio_worker": round(naive_mem / scan_worker, 3) if scan_worker else None,
        "memory_ratio_total": round(naive_mem / scan_total, 3) if scan_total else None,
        "targets": {"speedup": 5.0, "memory_ratio": 5.0},
    }
    return envelope("baseline", doc, load_before=load0)


def table(doc: dict[str, Any]) -> list[str]:
    b, s = doc["baseline"], doc["scan"]
    nan = float("nan")
    return [
        "| | h footage / h | h footage / CPU-h | peak memory MiB |",
        "|---|---|---|---|",
        f"| naive baseline (1 process) | {b['hours_per_hour']:.2f} | "
        f"{b.get('hours_per_cpu_hour', nan):.2f} | {b['peak_rss_mb']:.0f} |",
        f"| avrl scan, {s['workers']} decode workers | {s['hours_per_hour']:.2f} | "
        f"{s.get('hours_per_cpu_hour', nan):.2f} | "
        f"{s['peak_worker_mb']:.0f} per worker, {s['total_mb']:.0f} all processes |",
        f"| ratio | {doc['speedup']:.2f}x | {doc.get('cpu_speedup', nan):.2f}x | "
        f"{doc['memory_ratio_worker']:.1f}x per worker, {doc['memory_ratio_total']:.1f}x total |",
        f"audio: {b['audio_loader']}",
    ]


if __name__ == "__main__":  # the subprocess of run_naive_subprocess: MODEL FILE...
    print(json.dumps(naive_scan(sys.argv[2:], sys.argv[1])))
