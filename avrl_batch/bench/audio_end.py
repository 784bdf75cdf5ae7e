"""`avrl bench audio-end`: decode cost of a recording whose audio ends early.

A microphone that dies after ``audio_end_s`` leaves an audio stream shorter than the video.
Every segment past that point must neither wait for audio that never comes (demuxing to the
end of the file: quadratic reads over a long recording, a decoder timeout on S3) nor pay
for it. Two copies of the same footage, the same video packets, are decoded the way a
scan's decode tasks do (window-aligned segments of ``segment_s``, ``media.iter_windows``
with a preset's geometry), interleaved run by run:

- ``full_audio``: the footage as made, audio to the end;
- ``audio_ends``: its packets copied with the audio packets from ``audio_end_s`` on dropped.

The headline is ``ratio_audio_ends_vs_full`` (wall) and ``cpu_ratio_audio_ends_vs_full``
(CPU time): the target is at most 1.2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avrl_batch.bench.report import Measured, cores, envelope, interleaved, load_average, median


def segmented_decode(path: str | Path, *, preset: str, segment_s: float) -> dict[str, float]:
    """What a scan's decode tasks do for the whole file: each segment decoded on its own."""
    from avrl_batch.config import preset as get_preset
    from avrl_batch.media import DecodeStats, iter_windows, probe
    from avrl_batch.scan.plan import segment_ranges

    cfg = get_preset(preset)
    info = probe(str(path))
    windows = frames = audio_frames = 0
    past_end_s = 0.0  # the most any segment demuxed past its last window's end
    for start, end in segment_ranges(info.duration_s, cfg.window_s, segment_s):
        stats = DecodeStats()
        last_end = start
        for w in iter_windows(
            str(path), start, end, window_s=cfg.window_s, stride_s=cfg.window_s,
            frames=cfg.frames, size=cfg.size, audio=True, stats=stats,
        ):
            windows += 1
            last_end = w.end_s
        frames += stats.frames_decoded
        audio_frames += stats.audio_frames_decoded
        if stats.last_packet_s is not None:
            past_end_s = max(past_end_s, stats.last_packet_s - last_end)
    return {
        "windows": windows,
        "frames_decoded": frames,
        "audio_frames_decoded": audio_frames,
        "demuxed_past_segment_s": past_end_s,
    }


def bench_audio_end(
    file: str | Path,
    *,
    audio_end_s: float = 20.0,
    preset: str = "small",
    segment_s: float = 10.0,
    runs: int = 3,
    threads: int = 1,
) -> dict[str, Any]:
    """Medians over ``runs`` of both copies, and their ratios."""
    from avrl_batch.media import probe
    from avrl_batch.media.encode import remux_audio

    load0 = load_average()
    src = Path(file)
    cut = remux_audio(
        src, src.with_name(f"{src.stem}_audio{audio_end_s:g}s{src.suffix}"), until_s=audio_end_s
    )
    variants = {
        "full_audio": lambda: segmented_decode(src, preset=preset, segment_s=segment_s),
        "audio_ends": lambda: segmented_decode(cut, preset=preset, segment_s=segment_s),
    }
    with cores(threads):
        m: dict[str, Measured] = interleaved(variants, runs, warmup=True)
    dur = probe(str(src)).duration_s
    cpu = {k: median(v.extra["cpu_s"]) for k, v in m.items()}
    return envelope(
        "audio-end",
        {
            "file": src.name,
            "duration_s": round(dur, 3),
            "audio_end_s": audio_end_s,
            "preset": preset,
            "segment_s": segment_s,
            "threads": threads,
            "runs": runs,
            "variants": {k: v.summary(work=dur) for k, v in m.items()},
            "ratio_audio_ends_vs_full": round(
                m["audio_ends"].median_s / m["full_audio"].median_s, 3
            ),
            "cpu_ratio_audio_ends_vs_full": round(cpu["audio_ends"] / cpu["full_audio"], 3),
            "target": {"ratio_at_most": 1.2},
        },
        load_before=load0,
    )


def table(doc: dict[str, Any]) -> list[str]:
    v = doc["variants"]
    return [
        "| footage | audio ends | segments of | full audio × realtime | audio ends × realtime "
        "| ratio (wall) | ratio (CPU) | most demuxed past a segment (s) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {doc['file']} ({doc['duration_s']:g} s) | {doc['audio_end_s']:g} s | "
        f"{doc['segment_s']:g} s | {v['full_audio']['x_realtime']:.1f} | "
        f"{v['audio_ends']['x_realtime']:.1f} | {doc['ratio_audio_ends_vs_full']:.2f} | "
        f"{doc['cpu_ratio_audio_ends_vs_full']:.2f} | "
        f"{v['audio_ends']['demuxed_past_segment_s']:.1f} |",
    ]
