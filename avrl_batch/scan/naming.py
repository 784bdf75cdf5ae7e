"""Camera id, recording start and deterministic output keys of a scanned source.

Plain functions (no Ray, no I/O): the planner, the sink and the tests all use them, so a
rerun always computes the same names for the same (source, version, model).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import unquote

from avrl_batch.errors import ConfigError

# `…/<camera>/…/<camera>_<YYYYmmddTHHMMSSZ>.<ext>`: the folder names the camera and the file
# name repeats it with the UTC start time. The back-reference keeps `lobby/x/door_…mp4` from
# being read as camera "door" under folder "lobby" by accident; FILE_PATTERN below is the
# looser fallback for flat archives (`<camera>_<start>.<ext>` anywhere).
DEFAULT_CAMERA_PATTERN = (
    r"(?:^|/)(?P<camera>[^/]+)/(?:[^/]+/)*(?P=camera)_(?P<start>\d{8}T\d{6}Z?)\.[^/.]+$"
)
FILE_PATTERN = r"(?:^|/)(?P<camera>[^/]+?)_(?P<start>\d{8}T\d{6}Z?)\.[^/.]+$"
START_FORMATS = ("%Y%m%dT%H%M%SZ", "%Y%m%dT%H%M%S")

UNKNOWN = "unknown"  # partition value when the camera or the date cannot be told

# Hive partition values and file names must not carry separators, '=' or '..'; anything
# outside this set becomes '_' (the raw camera id stays in the `camera` column).
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class SourceName:
    """What the path (or container metadata) says about a recording."""

    camera: str | None
    start_time: datetime | None  # UTC; None when unknown


def compile_pattern(pattern: str | None) -> re.Pattern[str]:
    """Compile a camera pattern; it must have the named group ``camera`` (``start`` optional)."""
    text = pattern or DEFAULT_CAMERA_PATTERN
    try:
        rx = re.compile(text)
    except re.error as exc:
        raise ConfigError(f"--camera-pattern is not a valid regular expression: {exc}") from exc
    if "camera" not in rx.groupindex:
        raise ConfigError(
            "--camera-pattern needs a named group (?P<camera>...) and optionally (?P<start>...)"
        )
    return rx


def parse_start(text: str) -> datetime | None:
    """``20240101T120000Z`` → aware UTC datetime; None if it is not such a timestamp."""
    for fmt in START_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def _path_part(uri: str) -> str:
    # s3://bucket/a/b.mp4 and file:///a/b.mp4 both match on the path after the authority
    path = uri.split("://", 1)[1] if "://" in uri else uri
    return unquote(path).replace("\\", "/")


def source_name(
    uri: str,
    pattern: re.Pattern[str] | str | None = None,
    *,
    creation_time: datetime | None = None,
) -> SourceName:
    """Camera and recording start of ``uri``: from the path pattern first (the default one,
    then the looser ``<camera>_<start>.<ext>``), falling back to the container's
    ``creation_time`` for the start. A custom pattern replaces both defaults."""
    path = _path_part(uri)
    rxs = (
        [compile_pattern(None), re.compile(FILE_PATTERN)]
        if pattern is None
        else [pattern if isinstance(pattern, re.Pattern) else compile_pattern(pattern)]
    )
    camera: str | None = None
    start: datetime | None = None
    for rx in rxs:
        m = rx.search(path)
        if m is None:
            continue
        camera = m.group("camera") or None
        if "start" in rx.groupindex and m.group("start"):
            start = parse_start(m.group("start"))
        break
    if start is None and creation_time is not None:
        start = (
            creation_time.replace(tzinfo=timezone.utc)
            if creation_time.tzinfo is None
            else creation_time.astimezone(timezone.utc)
        )
    return SourceName(camera=camera, start_time=start)


def safe_component(text: str | None, *, max_len: int = 80) -> str:
    """A value safe as one path component (partition value or file-name stem)."""
    if not text:
        return UNKNOWN
    clean = _UNSAFE.sub("_", text).strip("._")[:max_len]
    return clean or UNKNOWN


def source_key(uri: str, version: str, model_id: str) -> str:
    """Deterministic object key of one (source, source version, model): a readable stem of the
    file name plus a hash of all three, so reruns find the same names and a changed file or a
    different model gets new ones."""
    digest = hashlib.sha256(f"{uri}\n{version}\n{model_id}".encode()).hexdigest()[:20]
    stem = _path_part(uri).rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return f"{safe_component(stem, max_len=60)}-{digest}"


def date_partition(start_time: datetime | None) -> str:
    """``date=`` value: the recording start's UTC date, or ``unknown`` (never the scan date,
    which would move a source's outputs between partitions from one rerun to the next)."""
    if start_time is None:
        return UNKNOWN
    return start_time.astimezone(timezone.utc).strftime("%Y-%m-%d")


def scan_id_now(now: datetime | None = None) -> str:
    """A scan id that sorts by time: ``20240101T120000Z-<6 hex>``."""
    import secrets

    now = now or datetime.now(timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"
