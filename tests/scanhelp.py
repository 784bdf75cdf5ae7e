"""Small real inputs for the scan tests: PyAV-encoded recordings, a tiny random model, and
readers that check an output tree against DESIGN.md §4."""

from __future__ import annotations

import io
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from avrl_batch import storage
from avrl_batch.classes import SHADE
from avrl_batch.media.encode import encode_av
from avrl_batch.scan import sink
from avrl_batch.scan.naming import source_key
from avrl_batch.scan.plan import SourceTask
from avrl_batch.scan.timeline import events_from_windows
from avrl_batch.schema import ERRORS, EVENTS, UNREADABLE, WINDOWS

FPS = 5
SIZE = 64


def recording(
    path: Path, seconds: float, *, audio: bool = True, seed: int = 0, audio_s: float | None = None
) -> Path:
    """A 64x64, 5 fps H.264 recording (AAC 16 kHz noise + tone when ``audio``, for its first
    ``audio_s`` seconds: default all of it)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * FPS))
    base = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    frames = (np.roll(base, i, axis=1) for i in range(n))  # moving texture, cheap to encode
    wave = None
    if audio:
        t = np.arange(int((seconds if audio_s is None else audio_s) * 16000)) / 16000
        wave = (0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(
            np.float32
        )
    encode_av(path, frames, fps=FPS, audio=wave, sample_rate=16000)
    return path


def tiny_model(path: Path, seed: int = 0) -> str:
    """A randomly initialised `tiny` model file; returns its model id."""
    import torch

    from avrl_batch.config import preset
    from avrl_batch.model import build_model
    from avrl_batch.modelfile import save_model

    torch.manual_seed(seed)
    cfg = preset("tiny")
    return save_model(path, build_model(cfg), cfg)


def make_archive(root: Path) -> dict[str, str]:
    """Four recordings (one without audio, one in a day sub-folder, one without a start time
    in its name) and one corrupt file. Returns {name: path}."""
    files = {
        "a": recording(root / "cam01" / "cam01_20260301T080000Z.mp4", 50, seed=1),
        "b_noaudio": recording(
            root / "cam02" / "cam02_20260302T090000Z.mp4", 24, audio=False, seed=2
        ),
        "c_dayfolder": recording(
            root / "cam01" / "2026-03-03" / "cam01_20260303T230000Z.mp4", 20, seed=3
        ),
        "d_noname": recording(root / "misc" / "lobby.mp4", 12, seed=4),
    }
    bad = root / "cam03" / "cam03_20260301T000000Z.mp4"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)  # a header, no movie
    files["corrupt"] = bad
    return {k: str(v) for k, v in files.items()}


def read_parquet(uri: str, schema: pa.Schema, endpoint_url: str | None = None) -> pa.Table:
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri, endpoint_url=endpoint_url)))
    assert table.schema.names == schema.names, uri
    assert [f.type for f in table.schema] == [f.type for f in schema], uri
    return table


def output_files(out: str, endpoint_url: str | None = None) -> dict[str, list[str]]:
    """Output URIs by table, relative to ``out``."""
    files = storage.list_files(out, endpoint_url=endpoint_url)
    rel = [f[len(out.rstrip("/")) + 1 :] for f in files]
    by: dict[str, list[str]] = {
        "windows": [], "events": [], "errors": [], "_scans": [], "clips": [], "unreadable": []
    }
    for r in rel:
        by[r.split("/", 1)[0]].append(r)
    return by


def check_outputs(out: str, sources: list[str], endpoint_url: str | None = None) -> dict:
    """Assert the §4 contract: every source is exactly one of (windows + events, with its
    unreadable spans beside them when it has any) or (one error row), names are unique, no
    duplicate window rows, no window inside an unreadable span; returns the tables by
    source."""
    by = output_files(out, endpoint_url)
    key_of = lambda rel: rel.rsplit("/", 1)[-1][: -len(".parquet")]  # noqa: E731
    for table in ("windows", "events", "unreadable"):
        for rel in by[table]:
            parts = rel.split("/")
            assert len(parts) == 4 and parts[1].startswith("date=") and parts[2].startswith(
                "camera="
            ), rel
    wkeys = Counter(key_of(r) for r in by["windows"])
    ekeys = Counter(key_of(r) for r in by["events"])
    rkeys = Counter(key_of(r) for r in by["errors"])
    assert max([*wkeys.values(), *ekeys.values(), *rkeys.values(), 1]) == 1, by
    assert set(wkeys) == set(ekeys), by
    assert not set(ekeys) & set(rkeys), by
    ukeys = Counter(key_of(r) for r in by["unreadable"])
    assert max([*ukeys.values(), 1]) == 1 and set(ukeys) <= set(ekeys), by
    result: dict[str, dict] = {}
    root = out.rstrip("/")
    for rel in by["windows"]:
        w = read_parquet(f"{root}/{rel}", WINDOWS, endpoint_url)
        uris = set(w["source_uri"].to_pylist())
        assert len(uris) <= 1, rel
        idx = w["window_index"].to_pylist()
        assert len(idx) == len(set(idx)), f"duplicate window rows in {rel}"
        erel = "events/" + rel.split("/", 1)[1]
        e = read_parquet(f"{root}/{erel}", EVENTS, endpoint_url)
        uri = uris.pop() if uris else None
        assert (uri or key_of(rel)) not in result, f"{uri}: two versions' outputs"
        entry = {"windows": w, "events": e, "key": key_of(rel), "rel": rel}
        urel = "unreadable/" + rel.split("/", 1)[1]
        if urel in by["unreadable"]:
            u = read_parquet(f"{root}/{urel}", UNREADABLE, endpoint_url)
            assert u.num_rows and set(u["source_uri"].to_pylist()) <= {uri}, urel
            for lo, hi in zip(u["start_s"].to_pylist(), u["end_s"].to_pylist(), strict=True):
                assert lo < hi
                for ws, we in zip(w["start_s"].to_pylist(), w["end_s"].to_pylist(), strict=True):
                    assert we <= lo or ws >= hi, f"{rel}: window {ws}-{we} in span {lo}-{hi}"
            entry["unreadable"] = u
        result[uri or key_of(rel)] = entry
    for rel in by["errors"]:
        err = read_parquet(f"{root}/{rel}", ERRORS, endpoint_url)
        assert err.num_rows == 1, rel
        uri = err["source_uri"][0].as_py()
        assert uri not in result, f"{uri} has both outputs and an error"
        result[uri] = {"error": err, "key": key_of(rel)}
    assert sorted(result) == sorted(sources), (sorted(result), sorted(sources))
    return result


def completed_sources(out: Path) -> int:
    """Sources finished under a local OUT: the events object is written last per source (the
    completion marker, DESIGN.md §4)."""
    return len(list((out / "events").rglob("*.parquet"))) if (out / "events").exists() else 0


def kill_scan_when(proc: subprocess.Popen, out: Path, done: int, timeout_s: float = 300) -> int:
    """SIGKILL the `avrl scan` process ``proc`` (no clean-up runs, as when a driver dies) once
    ``done`` sources under ``out`` are complete; returns how many were complete after it died.
    Fails if the scan ends, or ``timeout_s`` passes, before that."""
    # a loaded 2-core machine: interpreter, torch and Ray start-up alone can take a minute
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline and proc.poll() is None:
            if completed_sources(out) >= done:
                break
            time.sleep(0.05)
        assert proc.poll() is None, (proc.stderr.read().decode()[-2000:]
                                     if proc.stderr else "the scan ended before the kill")
        assert completed_sources(out) >= done, f"fewer than {done} sources in {timeout_s} s"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return completed_sources(out)


def finished(out: str, uri: str, version: str, model_id: str, start: datetime | None,
             camera: str | None, *, endpoint_url: str | None = None,
             scan_id: str = "20260301T000000Z-aaaaaa", key: str | None = None,
             windows: int = 2, spans: list[tuple[float, float, str, str]] | None = None,
             anomaly: tuple[int, int] | None = None) -> SourceTask:
    """Write one finished source (2-s windows, its events, and its unreadable ``spans`` when
    given) with the sink's own writers; windows ``anomaly`` = (first, last) are a fight."""
    task = SourceTask(uri, version, 1, key or source_key(uri, version, model_id), camera, start,
                      2.0 * windows, True, ())
    probs = np.full((windows, len(SHADE.names)), 1 / len(SHADE.names))
    if anomaly is not None:
        probs[anomaly[0]: anomaly[1] + 1] = 0.01
        probs[anomaly[0]: anomaly[1] + 1, SHADE.names.index("fight")] = 0.9
    starts = 2.0 * np.arange(windows)
    w = sink.windows_table(task, np.arange(windows), starts, starts + 2.0,
                           np.ones(windows, bool), probs, classes=SHADE, model_id=model_id,
                           scan_id=scan_id)
    ev = events_from_windows(w, classes=SHADE)
    lost = None if spans is None else sink.unreadable_table(task, spans, model_id=model_id,
                                                            scan_id=scan_id)
    assert sink.write_source(out, task, w, ev, model_id=model_id, endpoint_url=endpoint_url,
                             unreadable=lost)
    return task


def camera_days(cameras: int, days: int, pad: str = "") -> Iterator[tuple[int, int, str, str,
                                                                      datetime]]:
    """(camera index, day index, camera, URI, start) of two recordings a camera-day (08:00 and
    20:00 UTC from 1 March 2026) under ``s3://archive/<pad><camera>/``."""
    for c in range(cameras):
        for d in range(days):
            for hour in (8, 20):
                start = datetime(2026, 3, 1 + d, hour, tzinfo=timezone.utc)
                cam = f"cam{c:02d}"
                yield c, d, cam, f"s3://archive/{pad}{cam}/{cam}_{start:%Y%m%dT%H%M%SZ}.mp4", start
