"""Benchmark: peak worker memory of a scan does not grow with the recording's length.

Makes synthetic recordings of the given lengths (default 1 h and 24 h; 32x32 at 5 fps with
8 kHz PCM audio, generated frame by frame so that making them needs no memory either), scans
each with a random `tiny` model in a fresh local Ray (`avrl scan --json`, one process per
run so each peak is its own), and prints a table: segments, windows, wall time, peak RSS
of the decode workers, the inference actor and the driver.

    .venv/bin/python scripts/bench_long_recording.py --hours 1 24 --work /tmp/avrl-bench-long
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_recording(path: Path, hours: float, *, fps: int, size: int, rate: int) -> None:
    from avrl_batch.media.encode import encode_av

    n = int(hours * 3600 * fps)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)

    def frames():  # a slowly moving texture, one frame at a time
        for i in range(n):
            yield np.roll(base, i % size, axis=1)

    def audio():  # one second of noise + tone at a time
        t = np.arange(rate) / rate
        tone = 0.2 * np.sin(2 * np.pi * 440 * t)
        for _ in range(int(hours * 3600)):
            yield (tone + 0.05 * rng.standard_normal(rate)).astype(np.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mkv")
    # PCM audio in Matroska: AAC would take ~17 CPU-minutes to encode 24 h here; the scan's
    # memory behaviour does not depend on the audio codec
    encode_av(tmp, frames(), fps=fps, audio=audio(), sample_rate=rate, gop=60, acodec="pcm_s16le")
    tmp.rename(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hours", type=float, nargs="+", default=[1.0, 24.0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/avrl-bench-long"))
    ap.add_argument("--segment", type=float, default=600.0)
    # windows every 8 s (2 s long) keep a 24-hour run within minutes on 2 cores; decode still
    # reads every packet of the file
    ap.add_argument("--stride", type=float, default=8.0)
    # 5 fps: the figures in docs/performance.md are made with it (lower rates work too)
    ap.add_argument("--fps", type=int, default=5)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rate", type=int, default=8000, help="audio sample rate of the recording")
    args = ap.parse_args()

    import torch

    from avrl_batch.config import preset
    from avrl_batch.model import build_model
    from avrl_batch.modelfile import save_model

    model = args.work / "tiny.avrl"
    if not model.exists():
        torch.manual_seed(0)
        cfg = preset("tiny")
        save_model(model, build_model(cfg), cfg)

    rows = []
    for h in args.hours:
        rec = args.work / "rec" / f"h{h:g}" / "cam01" / "cam01_20260301T000000Z.mkv"
        if not rec.exists():
            t = time.monotonic()
            make_recording(rec, h, fps=args.fps, size=args.size, rate=args.rate)
            print(f"made {rec} ({rec.stat().st_size / 1e6:.1f} MB) in "
                  f"{time.monotonic() - t:.0f} s", file=sys.stderr)
        out = args.work / "out" / f"h{h:g}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        cmd = [
            str(Path(sys.executable).with_name("avrl")), "scan", str(rec.parent), "--model",
            str(model), "--out", str(out), "--segment", str(args.segment),
            "--stride", str(args.stride), "--json",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        s = json.loads(res.stdout)
        rows.append((h, s))
        keys = ("sources_ok", "sources_failed", "segments", "windows", "wall_s",
                "footage_hours_per_hour", "peak_rss_mb")
        print(json.dumps({"hours": h, **{k: s[k] for k in keys}}), file=sys.stderr)

    print(f"| recording | segments ({args.segment:g} s) | windows (stride {args.stride:g} s) "
          "| wall s | h footage / h | peak RSS decode worker MiB | inference actor MiB "
          "| driver MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for h, s in rows:
        m = s["peak_rss_mb"]
        print(f"| {h:g} h | {s['segments']} | {s['windows']} | {s['wall_s']:.0f} | "
              f"{s['footage_hours_per_hour']:.0f} | {m['decode']:.0f} | {m['infer']:.0f} | "
              f"{m['driver']:.0f} |")


if __name__ == "__main__":
    main()
