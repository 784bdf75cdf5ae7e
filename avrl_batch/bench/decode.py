"""`avrl bench decode`: our windowed frame + audio decode against the decode limit.

The limit is a full decode of the same file's video stream with PyAV (frame threading
"AUTO", the same number of threads, no conversion, no audio): what FFmpeg must spend to
produce every frame, and so the most a frame sampler could hope to match when the windows
are back to back (every GOP holds a sampled frame, so every reference frame must be
decoded). Measured against it, side by side and interleaved run by run:

- ``windows``: ``media.iter_windows`` over the whole file with a preset's geometry and the
  default scan window/stride (= the model's window): frames + audio + log-mel, exactly what
  a scan's decode task does;
- ``windows_video``: the same without audio (how much of the gap the audio path costs);
- ``limit_av``: the full decode of the video *and* audio streams: the reference for
  ``windows`` (same footage, same streams); ``ratio_windows_vs_limit_av`` and
  ``cpu_ratio_windows_vs_limit_av`` are the headline figures, ``ratio_windows_vs_limit``
  (video-only limit) is kept for comparison with earlier runs.

Threads are set by restricting the process to N cores (FFmpeg sizes its pool from the
affinity mask), so "per core" means the same for every variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avrl_batch.bench.report import (
    Measured,
    cores,
    envelope,
    interleaved,
    load_average,
    median,
)


def full_decode(path: str | Path, *, audio: bool = False) -> dict[str, float]:
    """Decode every video frame (and audio frame if ``audio``) with no conversion."""
    import av

    n_video = n_audio = 0
    with av.open(str(path)) as container:
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"  # frame threading, like iter_windows (PERF_NOTES: ~1.6x)
        streams = [vs]
        if audio and container.streams.audio:
            streams.append(container.streams.audio[0])
        for packet in container.demux(*streams):
            for frame in packet.decode():
                if packet.stream.type == "video":
                    n_video += 1
                else:
                    n_audio += 1
                del frame
    return {"frames_decoded": n_video, "audio_frames": n_audio}


def windowed_decode(
    path: str | Path, *, preset: str = "small", audio: bool = True
) -> dict[str, float]:
    """What a scan's decode task does for one whole-file segment with ``preset``'s geometry."""
    from avrl_batch.config import preset as get_preset
    from avrl_batch.media import DecodeStats, iter_windows, probe

    cfg = get_preset(preset)
    info = probe(str(path))
    stats = DecodeStats()
    n = 0
    for _ in iter_windows(
        str(path),
        0.0,
        info.duration_s,
        window_s=cfg.window_s,
        stride_s=cfg.window_s,  # the scan's default stride: back-to-back windows
        frames=cfg.frames,
        size=cfg.size,
        audio=audio,
        stats=stats,
    ):
        n += 1
    return {
        "windows": n,
        "frames_decoded": stats.frames_decoded,
        "frames_converted": stats.frames_converted,
    }


def _warm_up(path: str | Path, preset: str) -> None:
    from avrl_batch.config import preset as get_preset
    from avrl_batch.media import iter_windows

    cfg = get_preset(preset)
    for _ in iter_windows(
        str(path),
        0.0,
        0.1,
        window_s=cfg.window_s,
        stride_s=cfg.window_s,
        frames=cfg.frames,
        size=cfg.size,
    ):
        pass
    full_decode_seconds(path, 1.0)


def full_decode_seconds(path: str | Path, seconds: float) -> None:
    """Decode the first ``seconds`` of video (warms the codec and the page cache)."""
    import av

    with av.open(str(path)) as container:
        vs = container.streams.video[0]
        for frame in container.decode(vs):
            if frame.time is not None and frame.time >= seconds:
                break


def bench_decode(
    files: list[str | Path],
    *,
    preset: str = "small",
    runs: int = 3,
    threads: tuple[int, ...] = (1,),
) -> dict[str, Any]:
    """Decode figures per file and thread count; medians over ``runs``; ratios side by side."""
    from avrl_batch.media import probe

    load0 = load_average()
    results = []
    for f in files:
        info = probe(str(f))
        for n in threads:
            variants = {
                "limit": lambda f=f: full_decode(f),
                "limit_av": lambda f=f: full_decode(f, audio=True),
                "windows": lambda f=f: windowed_decode(f, preset=preset),
                "windows_video": lambda f=f: windowed_decode(f, preset=preset, audio=False),
            }
            with cores(n):
                # one window first: the imports and the resampler's tables are not decode cost
                _warm_up(f, preset)
                m: dict[str, Measured] = interleaved(variants, runs, warmup=False)
            dur = info.duration_s
            row: dict[str, Any] = {
                "file": Path(f).name,
                "codec": info.video_codec,
                "width": info.width,
                "height": info.height,
                "fps": round(info.fps, 3) if info.fps else None,
                "duration_s": round(dur, 3),
                "threads": n,
                "variants": {k: v.summary(work=dur) for k, v in m.items()},
            }
            lim = m["limit"].median_s
            row["ratio_windows_vs_limit"] = round(lim / m["windows"].median_s, 3)
            row["ratio_windows_video_vs_limit"] = round(lim / m["windows_video"].median_s, 3)
            # the same ratios by CPU time (robust to other load on a shared machine)
            cpu = {k: v.extra["cpu_s"] for k, v in m.items()}
            row["cpu_ratio_windows_vs_limit"] = round(
                median(cpu["limit"]) / median(cpu["windows"]), 3
            )
            row["cpu_ratio_windows_video_vs_limit"] = round(
                median(cpu["limit"]) / median(cpu["windows_video"]), 3
            )
            row["ratio_windows_vs_limit_av"] = round(
                m["limit_av"].median_s / m["windows"].median_s, 3
            )
            # the like-for-like figure: the same streams (video + audio) on both sides
            row["cpu_ratio_windows_vs_limit_av"] = round(
                median(cpu["limit_av"]) / median(cpu["windows"]), 3
            )
            results.append(row)
    return envelope(
        "decode",
        {"preset": preset, "runs": runs, "results": results, "target": {"ratio_720p_h264": 0.9}},
        load_before=load0,
    )


def table(doc: dict[str, Any]) -> list[str]:
    """Markdown rows for the README: ours (frames + audio + log-mel) against the full decode
    of the same streams (video + audio), and the video-only pair."""
    lines = [
        "| footage | threads | limit (video+audio) × realtime | windows (frames+audio+log-mel)"
        " × realtime | ratio (wall) | ratio (CPU time) | video only: ratio (CPU) | "
        "frames decoded / converted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        v = r["variants"]
        lim = v.get("limit_av", v["limit"])
        wall = r.get("ratio_windows_vs_limit_av", r["ratio_windows_vs_limit"])
        cpu = r.get("cpu_ratio_windows_vs_limit_av", r.get("cpu_ratio_windows_vs_limit", 0))
        lines.append(
            f"| {r['file']} ({r['codec']} {r['width']}x{r['height']}) | {r['threads']} | "
            f"{lim['x_realtime']:.1f} | {v['windows']['x_realtime']:.1f} | "
            f"{wall:.2f} | {cpu:.2f} | "
            f"{r.get('cpu_ratio_windows_video_vs_limit', 0):.2f} | "
            f"{v['windows']['frames_decoded']:.0f} / {v['windows']['frames_converted']:.0f} |"
        )
    return lines
