"""Scan planning: configuration, probing one source, cutting recordings into segments.

Plain functions and frozen dataclasses (no Ray): ``pipeline.py`` runs
:func:`probe_source_isolated` (:func:`probe_source` in the decoder process) as Ray tasks,
and the tests call them directly.

Segments are window-aligned. Windows start at multiples of the stride (window ``i`` starts
at ``i * stride_s``); a segment owns the windows that *start* in ``[start_s, end_s)`` and
its length is a whole number of strides, so every window belongs to exactly one segment.
A window that starts near a segment's end is decoded whole by that segment, which reads up
to one window past its end: segments overlap by one window (DESIGN.md §3) and a task's
memory is bounded by the segment, never by the file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from avrl_batch.errors import ConfigError
from avrl_batch.media.errors import MediaError
from avrl_batch.redaction import redact
from avrl_batch.scan.isolate import DecoderProcess, Isolation, run_isolated
from avrl_batch.scan.naming import (
    compile_pattern,
    printable_uri,
    source_key,
    source_name,
    time_zone,
)
from avrl_batch.scan.timeline import TimelineConfig

DEFAULT_SEGMENT_S = 300.0  # 5 minutes: a Ray block that carries minutes of footage (PERF_NOTES)
DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class ScanConfig:
    """Everything one ``avrl scan`` needs; the CLI only fills this in."""

    source: str  # local folder/file, file:///..., s3://bucket/prefix
    model: str  # model file (local path or s3://...)
    out: str  # output root (local or s3://...)
    window_s: float | None = None  # None: the model's window (what it was trained on)
    stride_s: float | None = None  # None: = window_s (back-to-back windows)
    segment_s: float = DEFAULT_SEGMENT_S
    include: tuple[str, ...] = ()  # () = storage's default video globs
    exclude: tuple[str, ...] = ()
    endpoint_url: str | None = None
    actors: int | None = None  # None: one per GPU (GPU cluster) or 1 (CPU only)
    gpus_per_actor: float = 1.0  # used only when the cluster has GPUs
    batch_size: int = DEFAULT_BATCH_SIZE
    address: str | None = None  # Ray address; None starts (or reuses) a local Ray
    dry_run: bool = False
    camera_pattern: str | None = None  # regex with (?P<camera>...) and optional (?P<start>...)
    # IANA zone of start times in names that carry no offset (naming.local_to_utc); it moves
    # every window of such a source, so it belongs with the settings that shape the windows
    timezone: str = "UTC"
    timeline: TimelineConfig = field(default_factory=TimelineConfig)
    scan_id: str | None = None  # None: a new time-sortable id
    # a probe task is retried this many times after its worker or node died
    probe_retries: int = 3
    # probing and decoding run in a decoder process (scan/isolate.py): a source that crashes
    # it, or leaves it silent this long (s), twice, ends as an error row
    decode_timeout_s: float = 120.0
    # replace this model's results under OUT even when they were made with other window
    # settings (WINDOW_SETTINGS): every listed source is scanned again and rewritten
    rescan: bool = False
    # screen every window with the model file's calibrated screen (scan/cascade.py) and run
    # the full model only on the candidates and their margins
    cascade: bool = False
    # threads that write finished sources' outputs while the stream goes on (0: the driver
    # writes each itself); at most twice as many finished sources wait to be written
    writers: int = 8
    # sources probed and planned at a time: the next wave is probed while this one decodes,
    # and the driver holds the plans of two waves, not of every listed source
    wave: int = 2048

    def __post_init__(self) -> None:
        for name in ("window_s", "stride_s"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise ConfigError(f"--{name[:-2]} must be a positive number of seconds, got {v}")
        if not (self.segment_s > 0 and math.isfinite(self.segment_s)):
            raise ConfigError(
                f"--segment must be a positive number of seconds, got {self.segment_s}"
            )
        if not (self.decode_timeout_s > 0 and math.isfinite(self.decode_timeout_s)):
            raise ConfigError(
                f"--decode-timeout must be a positive number of seconds, got "
                f"{self.decode_timeout_s}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.writers < 0:
            raise ConfigError(f"--writers must be 0 or more, got {self.writers}")
        if self.wave < 1:
            raise ConfigError(f"--wave must be at least 1, got {self.wave}")
        if self.actors is not None and self.actors < 1:
            raise ConfigError(f"--actors must be at least 1, got {self.actors}")
        if not self.gpus_per_actor > 0:
            raise ConfigError(f"--gpus-per-actor must be positive, got {self.gpus_per_actor}")
        if self.camera_pattern is not None:
            compile_pattern(self.camera_pattern)  # fail now with one clear line
        time_zone(self.timezone)  # an unknown zone fails here, not in every probe task

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WindowSpec:
    """How windows are cut and what the decoder produces for each (from the model config)."""

    window_s: float
    stride_s: float
    frames: int  # T frames per window
    size: int  # frames are size x size
    audio_examples: int  # E log-mel examples per window


@dataclass(frozen=True)
class Segment:
    """The windows of one source that start in ``[start_s, end_s)``."""

    key: str
    source_uri: str
    index: int
    n_segments: int
    start_s: float
    end_s: float  # math.inf when the duration is unknown: decode to the end of the file
    version: str = ""  # the listed version of the source: S3 reads are pinned to it

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SourceTask:
    """A source to scan: what the listing, the path and the probe said, and its segments."""

    uri: str
    version: str
    size: int
    key: str
    camera: str | None
    start_time: datetime | None
    duration_s: float | None
    has_audio: bool
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class SourceError:
    """A source that ends as one error row."""

    uri: str
    key: str
    stage: str  # list | probe | decode | infer | write (schema.ERRORS)
    error_type: str
    message: str

    @property
    def transient(self) -> bool:
        """A failure of storage or the machine, not of the recording (S3 throttled or denied,
        a connection reset, a full disk): reported in the scan's summary, but no error object is
        written, so that a rerun tries the source again instead of skipping it for good."""
        return self.error_type in TRANSIENT_ERRORS


# error types that say nothing about the recording itself (see SourceError.transient); media
# problems are MediaError subclasses (NotMedia, Truncated, DecoderCrashed, ...) and stay
TRANSIENT_ERRORS = frozenset(
    {
        "StorageError",  # storage.open_source and the S3 file object (read failed, denied)
        "OSError",
        "IOError",
        "PermissionError",
        "FileNotFoundError",  # gone between listing and reading; a re-upload is retried
        "ConnectionError",
        "ConnectionResetError",
        "ConnectionRefusedError",
        "ConnectionAbortedError",
        "BrokenPipeError",
        "TimeoutError",
        "MemoryError",
        "StorageStalled",  # the decoder watchdog fired while storage reads stalled (isolate.py)
    }
)


def error_of(exc: BaseException) -> tuple[str, str]:
    """(error_type, one-line message) of any exception, for an error row, the summary and the
    manifest: credentials redacted (an S3 or HTTP library's message may quote a URL)."""
    text = str(exc).strip().splitlines()
    return type(exc).__name__, redact(text[0] if text else type(exc).__name__)[:500]


@dataclass(frozen=True)
class SkippedSource:
    uri: str
    key: str
    reason: str  # "done" (events exist) | "failed" (an error row exists)


@dataclass
class ScanPlan:
    todo: list[SourceTask]
    failed: list[SourceError]  # probe failures: written as error rows by the sink
    skipped: list[SkippedSource]
    spec: WindowSpec
    model_id: str
    versions: dict[str, str] = field(default_factory=dict)  # key -> the listed source version
    # --rescan: key -> its earlier objects, removed once the key's new outcome is written
    replaces: dict[str, list[str]] = field(default_factory=dict)
    # the unreadable-spans objects OUT held when the scan began (None: not listed): a source
    # written without spans removes only a listed one (a dead run's leftover)
    spans_listed: frozenset[str] | None = None

    @property
    def segments(self) -> list[Segment]:
        return [seg for task in self.todo for seg in task.segments]

    @property
    def footage_s(self) -> float:
        return sum(t.duration_s or 0.0 for t in self.todo)

    def summary(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "window_s": self.spec.window_s,
            "stride_s": self.spec.stride_s,
            "sources_todo": len(self.todo),
            "sources_failed_probe": len(self.failed),
            "sources_skipped": len(self.skipped),
            "segments": len(self.segments),
            "footage_hours": round(self.footage_s / 3600.0, 4),
        }


# the settings that shape a result's windows (besides the model, which is in every key): a
# rerun into an OUT whose results were made with others is refused, not silently skipped.
# Timeline settings are not among them: `avrl retimeline` re-applies those to stored windows.
WINDOW_SETTINGS = {
    "window_s": "--window",
    "stride_s": "--stride",
    "camera_pattern": "--camera-pattern",
    "timezone": "--timezone",
}


def window_settings(cfg: ScanConfig, spec: WindowSpec, model_id: str) -> dict[str, Any]:
    """What a scan's windows depend on besides the model: recorded with its results."""
    return {
        "model_id": model_id,
        "window_s": spec.window_s,
        "stride_s": spec.stride_s,
        "camera_pattern": cfg.camera_pattern,
        "timezone": cfg.timezone,
    }


def check_same_settings(
    out: str, recorded: dict[str, Any] | None, current: dict[str, Any]
) -> None:
    """ConfigError (one line) naming each window setting that differs from the one this
    model's results under ``out`` were made with."""
    if recorded is None:
        return
    differ = [
        f"{option} {recorded.get(name)!s} (now {current[name]!s})"
        for name, option in WINDOW_SETTINGS.items()
        if recorded.get(name) != current[name]
    ]
    if differ:
        raise ConfigError(
            f"{out} holds results of model {current['model_id']} made with "
            f"{', '.join(differ)}: scan into another --out, or pass --rescan to replace them"
        )
    if recorded.get("rescanning"):
        # some results may still be the old settings': skipping them as done would mix
        raise ConfigError(
            f"a --rescan of model {current['model_id']} into {out} did not finish (killed, or "
            "a source could not be rewritten): run it again with --rescan"
        )


def window_spec(cfg: ScanConfig, model_window_s: float, frames: int, size: int) -> WindowSpec:
    """The scan's windows: the model's window length unless overridden, stride = window."""
    from avrl_batch.media.logmel import examples_for_duration

    window_s = cfg.window_s or model_window_s
    stride_s = cfg.stride_s or window_s
    return WindowSpec(
        window_s=float(window_s),
        stride_s=float(stride_s),
        frames=int(frames),
        size=int(size),
        audio_examples=int(examples_for_duration(window_s)),
    )


def segment_ranges(
    duration_s: float | None, stride_s: float, segment_s: float
) -> list[tuple[float, float]]:
    """Window-start ranges ``[start, end)`` of the segments of a recording.

    Each segment spans a whole number of strides (at least one), so boundaries fall on
    window starts. The last one ends at the duration; an unknown duration gives one
    segment to infinity (the decoder stops at the end of the file).
    """
    if duration_s is None or not math.isfinite(duration_s):
        return [(0.0, math.inf)]
    if duration_s <= 0:
        # still one segment: its trailer (zero windows) is what completes the source
        return [(0.0, 0.0)]
    per = max(1, math.floor(segment_s / stride_s + 1e-9))  # strides per segment
    n_windows = max(1, math.ceil(duration_s / stride_s - 1e-9))  # window starts < duration
    out = []
    for first in range(0, n_windows, per):
        # multiples of the stride computed from integers: no drift over a 24-hour file
        start = first * stride_s
        end = min((first + per) * stride_s, duration_s)
        out.append((start, end))
    return out


def probe_source(
    uri: str,
    version: str,
    size: int,
    key: str,
    *,
    stride_s: float,
    segment_s: float,
    camera_pattern: str | None = None,
    timezone: str = "UTC",
    endpoint_url: str | None = None,
    reads: Any = None,
) -> SourceTask | SourceError:
    """Probe one source and cut it into segments; any failure is a SourceError, never an
    exception (a bad file must not stop a scan). S3 reads are pinned to ``version`` and
    follow ``reads`` (storage.S3Reads)."""
    from avrl_batch.media import open_media, probe

    try:
        with open_media(uri, endpoint_url=endpoint_url, version=version, reads=reads) as src:
            info = probe(src)
        name = source_name(
            uri,
            compile_pattern(camera_pattern) if camera_pattern else None,
            creation_time=getattr(info, "creation_time", None),
            zone=timezone,
        )
        duration = info.duration_s
        ranges = segment_ranges(duration, stride_s, segment_s)
        segments = tuple(
            Segment(key, uri, i, len(ranges), start, end, version)
            for i, (start, end) in enumerate(ranges)
        )
        return SourceTask(
            uri=uri,
            version=version,
            size=size,
            key=key,
            camera=name.camera,
            start_time=name.start_time,
            duration_s=duration,
            has_audio=bool(info.has_audio),
            segments=segments,
        )
    except Exception as exc:  # noqa: BLE001 - every failure becomes the source's error row
        error_type, message = error_of(exc)
        return SourceError(uri, key, "probe", error_type, message)


def probe_source_isolated(
    uri: str,
    version: str,
    size: int,
    key: str,
    *,
    isolation: Isolation = Isolation(),
    proc: DecoderProcess | None = None,
    **kwargs: Any,
) -> SourceTask | SourceError:
    """:func:`probe_source` in the decoder process (scan/isolate.py): a SourceTask, or a
    SourceError (stage "probe") when the file is bad, crashed the decoder twice or hung it
    twice. S3 reads give up (a transient StorageError) before the decoder watchdog fires."""
    from avrl_batch.storage import S3Reads

    try:
        return run_isolated(
            probe_source, uri, version, size, key, source=uri, stage="probe",
            isolation=isolation, proc=proc, reads=S3Reads().within(isolation.timeout_s),
            **kwargs,
        )
    except MediaError as exc:
        error_type, message = error_of(exc)
        return SourceError(uri, key, "probe", error_type, message)


def probe_sources_isolated(
    items: Sequence[tuple[str, str, int, str]], **kwargs: Any
) -> list[SourceTask | SourceError]:
    """:func:`probe_source_isolated` of each (uri, version, size, key), one after another in
    this worker's decoder process (one Ray task probes a pack of sources)."""
    return [probe_source_isolated(*item, **kwargs) for item in items]


def split_misnamed(
    todo: Sequence[tuple[Any, str]],
) -> tuple[list[tuple[Any, str]], list[SourceError]]:
    """Sources whose name can be written everywhere, and one error row (stage ``list``,
    ``BadFileName``) for each local name that is not valid UTF-8: Parquet, JSON and S3 keys
    take no such name, so the file is named with its bytes escaped and not scanned."""
    good, bad = [], []
    for src, key in todo:
        shown = printable_uri(src.uri)
        if shown == src.uri:
            good.append((src, key))
            continue
        bad.append(
            SourceError(
                shown, key, "list", "BadFileName",
                f"{shown}: the file name is not valid UTF-8 (undecodable bytes shown as \\xNN); "
                "rename the file to scan it",
            )
        )
    return good, bad


def keyed_sources(sources: Sequence[Any], model_id: str) -> list[tuple[Any, str]]:
    """Each listed source (storage.Source) with its deterministic output key."""
    return [(s, source_key(s.uri, s.version, model_id)) for s in sources]


def split_done(
    keyed: Sequence[tuple[Any, str]], done: set[str], failed: set[str]
) -> tuple[list[tuple[Any, str]], list[SkippedSource]]:
    """Sources still to scan, and those skipped because their outputs (or error row) for this
    model and this version of the file already exist."""
    todo, skipped = [], []
    for src, key in keyed:
        if key in done:
            skipped.append(SkippedSource(src.uri, key, "done"))
        elif key in failed:
            skipped.append(SkippedSource(src.uri, key, "failed"))
        else:
            todo.append((src, key))
    return todo, skipped
