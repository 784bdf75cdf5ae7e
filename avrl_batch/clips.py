"""Event clips: each event of a scan output cut out of its recording, with its sound, as a
small MP4 a browser plays (``OUT/clips/``).

A clip is the event's span plus ``margin_s`` on each side, capped at ``max_event_s`` of the
event (a long event's clip shows its start), scaled to ``height`` pixels, H.264 + AAC in
MP4 with the moov atom first (``+faststart``) so a page can play it before it has all of it.
The source's audio when it has audio; a silent recording gives a clip without an audio
track. Clips are outputs like the others: deterministic names (the event id, under the
event's date and camera partitions), written whole, never rewritten; ``sync_clips`` cuts
only the missing ones and removes the clips whose event is no longer in OUT (a superseded
version's, a rescanned source's).

Clips are transcoded, not stream-copied: a stream copy can only start on a keyframe (up to a
GOP early), and HEVC, MJPEG or PCM sources would not play in a browser.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from avrl_batch import storage
from avrl_batch.errors import ConfigError

CLIP_SUFFIX = ".mp4"
_CLIP_RATE = 48_000  # AAC's usual rate; every source rate is resampled to it


@dataclass(frozen=True)
class ClipSpec:
    """How an event becomes a clip."""

    margin_s: float = 2.0  # seconds of context before and after the event
    max_event_s: float = 60.0  # of a longer event only the first max_event_s are cut
    height: int = 360  # output height in pixels (never upscaled; width keeps the aspect)
    crf: int = 28  # x264 quality: small files, enough to judge a scene

    def __post_init__(self) -> None:
        if not self.margin_s >= 0:
            raise ConfigError(f"--margin must be >= 0 seconds, got {self.margin_s}")
        if not self.max_event_s > 0:
            raise ConfigError(f"--max-event must be > 0 seconds, got {self.max_event_s}")
        if not 16 <= self.height <= 2160:
            raise ConfigError(f"--height must be 16..2160 pixels, got {self.height}")

    def span(self, start_s: float, end_s: float) -> tuple[float, float]:
        """The seconds of the recording an event's clip covers."""
        end = min(end_s, start_s + self.max_event_s)
        return max(0.0, start_s - self.margin_s), end + self.margin_s


@dataclass(frozen=True)
class ClipJob:
    """One event to cut: where its recording is, which version, and where the clip goes."""

    event_id: str
    source_uri: str
    version: str
    start_s: float
    end_s: float
    uri: str  # the clip's object


@dataclass
class ClipSummary:
    events: int = 0
    written: int = 0
    present: int = 0  # already there from an earlier run
    removed: int = 0  # clips whose event is gone
    failed: list[tuple[str, str]] | None = None  # (event_id, one-line reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "written": self.written,
            "present": self.present,
            "removed": self.removed,
            "failed": [{"event_id": e, "error": m} for e, m in self.failed or []],
        }


def clip_uri(out: str, date: str, camera: str, event_id: str) -> str:
    """``OUT/clips/date=…/camera=…/<event_id>.mp4``: the events' own partitions."""
    return storage.join(out, "clips", f"date={date}", f"camera={camera}", event_id + CLIP_SUFFIX)


def plan_clips(out: str, *, endpoint_url: str | None = None) -> tuple[str, list[ClipJob]]:
    """A job for every event of every finished source in ``out``, in a stable order, and
    ``out`` in the one spelling the output listing uses."""
    import pyarrow.parquet as pq

    from avrl_batch.query import OutputTree
    from avrl_batch.scan.compact import identity, visible_rows
    from avrl_batch.scan.sink import source_meta

    tree = OutputTree.open(out, endpoint_url=endpoint_url)
    jobs = []
    for uri, parts in tree.files["events"]:
        data = storage.read_bytes(uri, endpoint_url=endpoint_url)
        meta = source_meta(data) or {}
        events = pq.read_table(io.BytesIO(data), columns=["event_id", "source_uri", "start_s",
                                                          "end_s"])
        date, camera = parts.get("date", "unknown"), parts.get("camera", "unknown")
        for row in events.to_pylist():
            jobs.append(ClipJob(
                event_id=row["event_id"],
                source_uri=row["source_uri"],
                version=str(meta.get("version") or ""),
                start_s=float(row["start_s"]),
                end_s=float(row["end_s"]),
                uri=clip_uri(tree.out, date, camera, row["event_id"]),
            ))
    for c in tree.compacted.get("events", []):  # compacted sources: versions from the file
        events, versions = visible_rows(c, "events", endpoint_url=endpoint_url)
        date, camera = c.parts.get("date", "unknown"), c.parts.get("camera", "unknown")
        for row in events.select(["event_id", "source_uri", "start_s", "end_s", "model_id",
                                  "scan_id"]).to_pylist():
            jobs.append(ClipJob(
                event_id=row["event_id"],
                source_uri=row["source_uri"],
                version=versions[identity(row["source_uri"], row["model_id"], row["scan_id"])],
                start_s=float(row["start_s"]),
                end_s=float(row["end_s"]),
                uri=clip_uri(tree.out, date, camera, row["event_id"]),
            ))
    return tree.out, sorted(jobs, key=lambda j: j.uri)


def sync_clips(
    out: str,
    *,
    spec: ClipSpec = ClipSpec(),
    endpoint_url: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ClipSummary:
    """Cut every missing clip of ``out`` and remove clips whose event is gone.

    A recording that cannot be read (gone, changed, damaged) costs only its clips: each
    failure is one line in ``summary.failed`` and the next run tries again.
    ``progress(done, total)`` is called after each event.
    """
    from avrl_batch.scan.plan import error_of

    out, jobs = plan_clips(out, endpoint_url=endpoint_url)
    root = storage.join(out, "clips")
    existing = set(storage.list_files(root, suffix=CLIP_SUFFIX, endpoint_url=endpoint_url))
    wanted = {j.uri for j in jobs}
    summary = ClipSummary(events=len(jobs), failed=[])
    for done, job in enumerate(jobs, 1):
        if job.uri in existing:
            summary.present += 1
        else:
            try:
                data = cut_clip(job, spec, endpoint_url=endpoint_url)
                storage.write_atomic(job.uri, data, if_absent=True, endpoint_url=endpoint_url)
                summary.written += 1
            except Exception as exc:  # noqa: BLE001 - one event's clip never stops the rest
                kind, message = error_of(exc)
                summary.failed.append((job.event_id, f"{kind}: {message}"))
        if progress is not None:
            progress(done, len(jobs))
    for uri in sorted(existing):
        if uri not in wanted:
            storage.delete(uri, endpoint_url=endpoint_url)
            summary.removed += 1
    return summary


def cut_clip(job: ClipJob, spec: ClipSpec, *, endpoint_url: str | None = None) -> bytes:
    """The MP4 bytes of one event's clip, read from the listed version of its recording."""
    from avrl_batch.media.errors import wrap_errors
    from avrl_batch.media.probe import open_media

    t0, t1 = spec.span(job.start_s, job.end_s)
    with (
        open_media(job.source_uri, endpoint_url=endpoint_url, version=job.version or None) as src,
        wrap_errors(job.source_uri, stage="cutting a clip from"),
    ):
        return _transcode(src, t0, t1, spec)


def _transcode(src: Any, t0: float, t1: float, spec: ClipSpec) -> bytes:
    # a temp file, not a BytesIO: +faststart reopens the written file by name to move the
    # moov atom to the front
    with tempfile.TemporaryDirectory(prefix="avrl-clip-") as tmp:
        dest = os.path.join(tmp, "clip.mp4")
        _transcode_to(src, dest, t0, t1, spec)
        with open(dest, "rb") as f:
            return f.read()


def _transcode_to(src: Any, dest: str, t0: float, t1: float, spec: ClipSpec) -> None:
    import av

    from avrl_batch.media.probe import time_origin

    with av.open(src) as inp:
        vs = inp.streams.video[0]
        aus = inp.streams.audio[0] if inp.streams.audio else None
        origin = time_origin(inp, vs)
        vs.thread_type = "AUTO"
        with av.open(dest, "w", format="mp4", options={"movflags": "+faststart"}) as out:
            writer = _ClipWriter(out, vs, aus, spec)
            # seek to the keyframe before t0; frames before t0 are decoded and dropped
            inp.seek(int(max(0.0, origin + t0) / vs.time_base), stream=vs, backward=True)
            for stream, frame in _frames(inp, vs, aus):
                t = float(frame.pts * frame.time_base) - origin if frame.pts is not None else None
                if t is None or t < t0:
                    continue
                if t >= t1:
                    if stream is vs:
                        break  # the video is past the clip: audio beyond it is not wanted
                    continue
                writer.write(stream is vs, frame, t - t0)
            writer.close()


def _frames(inp: Any, vs: Any, aus: Any) -> Iterator[tuple[Any, Any]]:
    streams = [vs] if aus is None else [vs, aus]
    for packet in inp.demux(*streams):
        for frame in packet.decode():
            yield packet.stream, frame


class _ClipWriter:
    """The clip's encoders: video scaled to the spec's height in a millisecond time base (any
    source frame rate, variable included), audio resampled to 48 kHz AAC."""

    def __init__(self, out: Any, vs: Any, aus: Any, spec: ClipSpec) -> None:
        import av

        self.out = out
        height = min(spec.height, vs.codec_context.height or spec.height)
        height -= height % 2  # x264's yuv420p wants even sizes
        src_w, src_h = vs.codec_context.width or height, vs.codec_context.height or height
        width = max(2, int(round(src_w * height / max(1, src_h) / 2)) * 2)
        rate = vs.average_rate or vs.guessed_rate or Fraction(25)
        self.video = out.add_stream("libx264", rate=rate)
        self.video.width, self.video.height = width, height
        self.video.pix_fmt = "yuv420p"
        self.video.options = {"crf": str(spec.crf), "preset": "veryfast"}
        self.video.time_base = Fraction(1, 1000)
        self.video.codec_context.time_base = Fraction(1, 1000)
        self.last_ms = -1
        self.audio = None
        if aus is not None:
            layout = "mono" if (aus.codec_context.channels or 1) == 1 else "stereo"
            self.audio = out.add_stream("aac", rate=_CLIP_RATE)
            self.audio.layout = layout
            self.resampler = av.AudioResampler(format="fltp", layout=layout, rate=_CLIP_RATE)
            self.samples = 0
            self.audio_started = False

    def write(self, is_video: bool, frame: Any, t: float) -> None:
        if is_video:
            ms = int(round(t * 1000))
            if ms <= self.last_ms:
                return  # a duplicate timestamp: one frame per instant
            self.last_ms = ms
            img = frame.reformat(width=self.video.width, height=self.video.height,
                                 format="yuv420p")
            img.pts, img.time_base = ms, Fraction(1, 1000)
            self._mux(self.video.encode(img))
        elif self.audio is not None:
            if not self.audio_started:
                # the clip's audio starts where its first frame at or after t0 lies
                self.samples = int(round(t * _CLIP_RATE))
                self.audio_started = True
            frame.pts = None
            self._resampled(self.resampler.resample(frame))

    def _resampled(self, frames: Any) -> None:
        for f in frames:
            f.pts, f.time_base = self.samples, Fraction(1, _CLIP_RATE)
            self.samples += f.samples
            self._mux(self.audio.encode(f))

    def close(self) -> None:
        self._mux(self.video.encode())
        if self.audio is not None:
            self._resampled(self.resampler.resample(None))
            self._mux(self.audio.encode())

    def _mux(self, packets: Any) -> None:
        for p in packets:
            self.out.mux(p)
