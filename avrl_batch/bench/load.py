"""``avrl bench load``: peak memory and time of loading a model file, per preset.

Each preset gets a randomly initialised model file in ``work``; every load runs in a fresh
Python process (``sys.executable``) so its peak RSS is that load's alone. Two
ways in, as the product loads models:

- ``bytes``: ``model_from_bytes(data)`` on the file's bytes, as the scan's inference actors do
  with the model they get from Ray's object store (the bytes stay referenced meanwhile);
- ``file``: ``load_model(path)``, as ``avrl evaluate`` and ``avrl info --model`` do.

The figure is the peak RSS rise (VmHWM) over the process after ``import torch`` and avrl,
in MiB and as a multiple of the file size; it includes a fixed overhead of the first load
(~110 MiB on a CPU build of torch: the model modules' imports, lazily initialised kernels).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from avrl_batch.bench.report import envelope, load_average, markdown_table, median
from avrl_batch.errors import ConfigError

MODES = ("bytes", "file")

# runs in a fresh interpreter: argv = mode, path; prints one JSON line
# (avrl_batch.memory: VmHWM, not ru_maxrss, which a child inherits from its parent)
_PROBE = """
import json, sys, time
from avrl_batch.memory import peak_rss_mb
from avrl_batch.modelfile import load_model, model_from_bytes
mode, path = sys.argv[1], sys.argv[2]
rss0 = peak_rss_mb()
t0 = time.perf_counter()
if mode == "bytes":
    data = open(path, "rb").read()
    loaded = model_from_bytes(data, source=path)
else:
    loaded = load_model(path)
seconds = time.perf_counter() - t0
rise = peak_rss_mb() - rss0
print(json.dumps({"seconds": seconds, "peak_rise_mb": rise, "model_id": loaded.model_id}))
"""


def _model_file(preset_name: str, work: Path) -> Path:
    from avrl_batch.config import preset
    from avrl_batch.model import build_model
    from avrl_batch.modelfile import save_model

    path = work / f"load-{preset_name}.avrl"
    if not path.is_file():
        cfg = preset(preset_name)
        save_model(path, build_model(cfg), cfg)
    return path


def _probe(mode: str, path: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"loading {path} ({mode}) failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_load(
    *, presets: tuple[str, ...] = ("tiny", "small", "paper"), runs: int = 3, work: Path
) -> dict[str, Any]:
    if runs < 1:
        raise ConfigError("--runs must be >= 1")
    load0 = load_average()
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in presets:
        path = _model_file(name, work)
        size_mb = path.stat().st_size / 2**20
        for mode in MODES:
            probes = [_probe(mode, path) for _ in range(runs)]
            rise = median([p["peak_rise_mb"] for p in probes])
            rows.append(
                {
                    "preset": name,
                    "mode": mode,
                    "file_mb": round(size_mb, 1),
                    "peak_rise_mb": round(rise, 1),
                    "peak_over_file": round(rise / size_mb, 2),
                    "seconds": round(median([p["seconds"] for p in probes]), 3),
                }
            )
    return envelope("load", {"runs": runs, "results": rows}, load_before=load0)


def table(doc: dict[str, Any]) -> list[str]:
    header = ("preset", "load from", "file MiB", "peak RSS rise MiB", "× file", "seconds")
    return markdown_table(
        header,
        (
            (r["preset"], r["mode"], f"{r['file_mb']:.0f}", f"{r['peak_rise_mb']:.0f}",
             f"{r['peak_over_file']:.2f}", f"{r['seconds']:.2f}")
            for r in doc["results"]
        ),
    )
