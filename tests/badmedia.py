"""A corpus of broken recordings made from good tiny PyAV-encoded files, and decoder faults
injected on marked sources.

Every corpus entry is damaged in one documented way; :func:`make_corpus` writes them under a
folder with the camera/start naming the scan understands, and returns ``{name: path}``. The
mutators (:func:`flip_bytes`, :func:`mutate`) also drive the fuzz test.

:class:`FaultyDecoder` is a real decoder process (scan/isolate.py) whose jobs on a source
whose URI holds a marker first log ``<stage> <uri>`` and then abort, hang or run as usual
(``count``); :func:`decoder_faults_env` is the Ray ``runtime_env`` that gives every worker
of a test's Ray such a decoder, so a scan meets the faults where real ones happen.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avrl_batch.media.encode import encode_av
from avrl_batch.scan import isolate

FPS = 5
SIZE = 64
CLUSTER_ID = b"\x1f\x43\xb6\x75"  # Matroska Cluster element: the first one ends the header


def good_recording(
    path: Path, seconds: float, *, seed: int = 0, audio: bool = True, **encode: object
) -> Path:
    """A 64x64, 5 fps recording of moving noise (+ a tone when ``audio``); container from
    the suffix (mp4: H.264/AAC, mkv: H.264/AAC, avi: MJPEG/A-law)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * FPS))
    base = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    frames = (np.roll(base, i, axis=1) for i in range(n))
    wave = None
    if audio:
        t = np.arange(int(seconds * 16000)) / 16000
        wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    encode_av(path, frames, fps=FPS, audio=wave, sample_rate=16000, **encode)  # type: ignore[arg-type]
    return path


def audio_only(path: Path, seconds: float = 2.0) -> Path:
    """An MP4 holding one AAC stream and no video (encode_av always writes video)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * 16000)) / 16000)).astype(
        np.float32
    )
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(wave[None, :], format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def wav_named_avi(path: Path, seconds: float = 1.0) -> Path:
    """A RIFF/WAVE file with a video extension: a container FFmpeg opens, no video stream."""
    n = int(seconds * 8000)
    pcm = (np.sin(np.arange(n) * 0.3) * 8000).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    data = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    data += b"data" + struct.pack("<I", len(pcm)) + pcm
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(data)) + data)
    return path


def flip_bytes(data: bytes, fraction: float, seed: int, *, skip: int = 0) -> bytes:
    """Flip one random bit in ``fraction`` of the bytes after the first ``skip`` bytes."""
    rng = np.random.default_rng(seed)
    buf = bytearray(data)
    n = max(1, int((len(buf) - skip) * fraction))
    at = rng.integers(skip, len(buf), n)
    bits = rng.integers(0, 8, n)
    for i, b in zip(at.tolist(), bits.tolist(), strict=True):
        buf[i] ^= 1 << b
    return bytes(buf)


def break_avi_index(data: bytes) -> bytes:
    """Point every idx1 entry at a nonsense offset and size (a damaged AVI index)."""
    at = data.rfind(b"idx1")
    assert at > 0, "no idx1 chunk"
    (size,) = struct.unpack_from("<I", data, at + 4)
    buf = bytearray(data)
    for off in range(at + 8, at + 8 + size, 16):  # entries: id, flags, offset, size
        struct.pack_into("<II", buf, off + 8, 0x7FFFFFF0, 0x7FFFFFF0)
    return bytes(buf)


def absurd_avi_dimensions(data: bytes, width: int = 100_000, height: int = 100_000) -> bytes:
    """Claim ``width`` x ``height`` frames in the AVI main header and the video stream's
    BITMAPINFOHEADER (what FFmpeg takes the coded size from)."""
    buf = bytearray(data)
    avih = data.find(b"avih")
    # avih body: usec/frame, max bytes/s, padding, flags, total frames, initial frames,
    # streams, buffer size, width, height
    struct.pack_into("<II", buf, avih + 8 + 32, width, height)
    strf = data.find(b"strf", data.find(b"vids"))
    struct.pack_into("<ii", buf, strf + 8 + 4, width, height)  # biSize, biWidth, biHeight
    return bytes(buf)


def header_only_mkv(data: bytes) -> bytes:
    """A Matroska file cut right before its first Cluster: headers, tracks, no frames."""
    at = data.find(CLUSTER_ID)
    assert at > 0, "no Cluster element"
    return data[:at]


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random mutation of ``data`` for fuzzing: (what was done, the bytes)."""
    n = len(data)
    kind = int(rng.integers(0, 6))
    buf = bytearray(data)
    if kind == 0:  # bit flips
        k = int(rng.integers(1, 32))
        for i in rng.integers(0, n, k).tolist():
            buf[i] ^= 1 << int(rng.integers(0, 8))
        return f"flip{k}", bytes(buf)
    if kind == 1:  # truncation
        cut = int(rng.integers(0, n))
        return f"truncate@{cut}", bytes(buf[:cut])
    if kind == 2:  # duplicate a chunk in place
        a = int(rng.integers(0, n))
        ln = int(rng.integers(1, max(2, n // 8)))
        return f"dup@{a}+{ln}", bytes(buf[: a + ln] + buf[a : a + ln] + buf[a + ln :])
    if kind == 3:  # remove a chunk
        a = int(rng.integers(0, n))
        ln = int(rng.integers(1, max(2, n // 8)))
        return f"cut@{a}+{ln}", bytes(buf[:a] + buf[a + ln :])
    if kind == 4:  # header field mutation: overwrite a 32-bit field near the start
        a = int(rng.integers(0, min(n - 4, 4096)))
        extremes = [0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, int(rng.integers(0, 2**32))]
        value = int(rng.choice(extremes))
        struct.pack_into(">I", buf, a, value)
        return f"field@{a}={value:#x}", bytes(buf)
    # random bytes over a span
    a = int(rng.integers(0, n))
    ln = int(rng.integers(1, 256))
    buf[a : a + ln] = rng.bytes(len(buf[a : a + ln]))
    return f"noise@{a}+{ln}", bytes(buf)


def make_corpus(root: Path, *, seconds: float = 6.0) -> dict[str, Path]:
    """Broken files under ``root/cam<i>/cam<i>_<start>.<ext>``, made from good ones.

    Names: flipped, trunc_01, trunc_50, trunc_99 (MP4, index at the end), trunc_50_mkv
    (streamable: headers intact, data cut), zero_byte, header_only (MKV without clusters),
    random_bytes, audio_only (AAC in MP4), no_video (WAV named .avi), avi_index_broken
    (idx1 entries point nowhere), absurd_dims (raw AVI claiming 100000x100000),
    over_pixel_cap (raw AVI claiming 8000x8000, above the 8K UHD cap).
    """
    tmp = root / ".src"
    mp4 = good_recording(tmp / "g.mp4", seconds, seed=11).read_bytes()
    mkv = good_recording(tmp / "g.mkv", seconds, seed=12).read_bytes()
    avi = good_recording(tmp / "g.avi", seconds, seed=13).read_bytes()
    # raw BGR frames: the size comes from the AVI headers alone (an MJPEG decoder would read
    # the true size back from the JPEG data and hide the patch)
    raw = good_recording(tmp / "r.avi", 2.0, seed=14, audio=False, vcodec="rawvideo",
                         pix_fmt="bgr24").read_bytes()
    made: dict[str, Callable[[], bytes] | Path] = {
        # flip 0.5% of the bytes past the first 64 (the file type box stays recognisable)
        "flipped": lambda: flip_bytes(mp4, 0.005, seed=1, skip=64),
        "trunc_01": lambda: mp4[: len(mp4) // 100],
        "trunc_50": lambda: mp4[: len(mp4) // 2],
        "trunc_99": lambda: mp4[: len(mp4) * 99 // 100],
        "trunc_50_mkv": lambda: mkv[: len(mkv) // 2],
        "zero_byte": lambda: b"",
        "header_only": lambda: header_only_mkv(mkv),
        "random_bytes": lambda: np.random.default_rng(7).bytes(20_000),
        "avi_index_broken": lambda: break_avi_index(avi),
        "absurd_dims": lambda: absurd_avi_dimensions(raw, 100_000, 100_000),
        "over_pixel_cap": lambda: absurd_avi_dimensions(raw, 8_000, 8_000),  # > 8K UHD cap
    }
    ext = {"trunc_50_mkv": "mkv", "header_only": "mkv", "avi_index_broken": "avi",
           "absurd_dims": "avi", "over_pixel_cap": "avi"}
    out: dict[str, Path] = {}
    for i, (name, make) in enumerate(made.items()):
        cam = f"bad{i:02d}"
        path = root / cam / f"{cam}_20260401T{i:02d}0000Z.{ext.get(name, 'mp4')}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make())  # type: ignore[operator]
        out[name] = path
    n = len(made)
    out["audio_only"] = audio_only(root / f"bad{n:02d}" / f"bad{n:02d}_20260401T{n:02d}0000Z.mp4")
    n += 1
    out["no_video"] = wav_named_avi(root / f"bad{n:02d}" / f"bad{n:02d}_20260401T{n:02d}0000Z.avi")
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    return out


# ---------------------------------------------------------------------------------------------
# decoder faults


@dataclass(frozen=True)
class Fault:
    """Before a decoder job of ``stage`` ("probe", "decode" or "*") on a source whose URI
    holds ``marker``: ``abort`` (os.abort()), ``hang`` (sleep forever) or ``count`` (only the
    log line)."""

    action: str
    stage: str
    marker: str


def _apply_faults(faults: tuple[Fault, ...], log: str | None, source: str, stage: str) -> None:
    """Runs in the decoder process, before the job."""
    for f in faults:
        if f.marker not in source or f.stage not in ("*", stage):
            continue
        if log:
            with open(log, "a") as out:
                out.write(f"{stage} {source}\n")
        if f.action == "abort":
            os.abort()
        if f.action == "hang":
            while True:
                time.sleep(3600)


def _faulty_call(faults: tuple[Fault, ...], log: str | None, fn: Callable[..., Any],
                 args: tuple, kwargs: dict, source: str, stage: str) -> Any:
    _apply_faults(faults, log, source, stage)
    return fn(*args, **kwargs)


def _faulty_stream(faults: tuple[Fault, ...], log: str | None, fn: Callable[..., Any],
                   args: tuple, kwargs: dict, source: str, stage: str) -> Iterator[Any]:
    _apply_faults(faults, log, source, stage)
    yield from fn(*args, **kwargs)


class FaultyDecoder(isolate.DecoderProcess):
    """A decoder process whose every job first meets ``faults`` (see :class:`Fault`)."""

    def __init__(self, faults: tuple[Fault, ...], log: str | Path | None = None) -> None:
        super().__init__()
        self.faults, self.log = faults, str(log) if log else None

    def call(self, fn: Callable[..., Any], args: tuple, kwargs: dict, *, source: str,
             stage: str, timeout_s: float) -> Any:
        return super().call(_faulty_call, (self.faults, self.log, fn, args, kwargs, source,
                                           stage), {}, source=source, stage=stage,
                            timeout_s=timeout_s)

    def stream(self, fn: Callable[..., Any], args: tuple, kwargs: dict, *, source: str,
               stage: str, timeout_s: float) -> Iterator[Any]:
        return super().stream(_faulty_stream, (self.faults, self.log, fn, args, kwargs, source,
                                               stage), {}, source=source, stage=stage,
                              timeout_s=timeout_s)


def install_faulty_decoder(faults: tuple[Fault, ...], log: str | None) -> None:
    """Ray's ``worker_process_setup_hook``: this worker's decoder process is a FaultyDecoder
    (isolate.decoder() hands out the one in ``isolate._DECODER``)."""
    isolate._DECODER = FaultyDecoder(faults, log)


def decoder_faults_env(faults: tuple[Fault, ...], log: Path) -> dict[str, Any]:
    """A Ray ``runtime_env`` whose workers decode with :class:`FaultyDecoder`; tests/ goes on
    their PYTHONPATH so that they (and their decoder processes) import this module."""
    here = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    log_path = str(log)

    def setup() -> None:  # Ray wants a named function, and pickles this one by value
        install_faulty_decoder(faults, log_path)

    return {"env_vars": {"PYTHONPATH": path}, "worker_process_setup_hook": setup}
