"""Camera id, recording start and deterministic output keys of a scanned source.

Plain functions (no Ray, no I/O): the planner, the sink and the tests all use them, so a
rerun always computes the same names for the same (source, version, model).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from urllib.parse import unquote, urlsplit

from avrl_batch.errors import ConfigError

# A recording's start in a name: ``YYYYmmddTHHMMSS`` and, right after the seconds, an
# optional offset ``Z``, ``±hhmm`` or ``±hh:mm``; a name without one is local time in the
# scan's --timezone (local_to_utc).
START = r"\d{8}T\d{6}(?:Z|[+-]\d{2}:?\d{2})?"
# Text after the timestamp (``_hevc``, ``-part2``, ``_20261103T090000Z`` for an end time)
# starts with a separator, so a timestamp is never cut out of a longer run of digits.
_AFTER = r"(?:[_.-][^/]*)?"

# `…/<camera>/…/<camera>_<start>[_<more>].<ext>`: the folder names the camera and the file
# name repeats it with the start time. The back-reference keeps `lobby/x/door_…mp4` from
# being read as camera "door" under folder "lobby" by accident; FILE_PATTERN below is the
# looser fallback for flat archives (`<camera>_<start>[_<more>].<ext>` anywhere).
DEFAULT_CAMERA_PATTERN = (
    rf"(?:^|/)(?P<camera>[^/]+)/(?:[^/]+/)*(?P=camera)_(?P<start>{START}){_AFTER}\.[^/.]+$"
)
FILE_PATTERN = rf"(?:^|/)(?P<camera>[^/]+?)_(?P<start>{START}){_AFTER}\.[^/.]+$"
_START_RX = re.compile(
    r"(?P<local>\d{8}T\d{6})(?:(?P<z>Z)|(?P<sign>[+-])(?P<hh>\d{2}):?(?P<mm>\d{2}))?"
)

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


def time_zone(name: str) -> tzinfo:
    """The IANA zone ``name`` (``Europe/Paris``); ``UTC`` needs no time zone database."""
    if name.upper() in ("UTC", "Z", "ETC/UTC"):
        return timezone.utc
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"--timezone {name!r} is not a known IANA time zone: give one such as "
            "Europe/Paris or America/New_York (if every name fails, this machine has no "
            "time zone database: install the system's tzdata or `pip install tzdata`)"
        ) from None


def local_to_utc(local: datetime, zone: tzinfo) -> datetime:
    """A wall-clock time in ``zone`` as UTC. Around a DST change it is the first reading:
    a time that occurs twice (clocks go back) is its first occurrence, and a time that
    never occurs (clocks go forward) is read with the offset before the change, i.e. moved
    forward by the gap (02:30 in a 02:00→03:00 gap is 03:30). Both are PEP 495's ``fold=0``,
    spelled out here because it is the documented rule (docs/scanning.md)."""
    return local.replace(tzinfo=zone, fold=0).astimezone(timezone.utc)


def parse_start(text: str, zone: tzinfo = timezone.utc) -> datetime | None:
    """``20240101T120000Z`` / ``…+0200`` / ``…-05:00`` → aware UTC datetime; a time without
    an offset is local time in ``zone``. None if ``text`` is not such a timestamp."""
    m = _START_RX.fullmatch(text)
    if m is None:
        return None
    try:
        local = datetime.strptime(m["local"], "%Y%m%dT%H%M%S")
    except ValueError:  # digits that are no date (month 13, 25 o'clock)
        return None
    if m["z"]:
        return local.replace(tzinfo=timezone.utc)
    if m["sign"]:
        hours, minutes = int(m["hh"]), int(m["mm"])
        if hours > 23 or minutes > 59:
            return None
        offset = timedelta(hours=hours, minutes=minutes) * (1 if m["sign"] == "+" else -1)
        return local.replace(tzinfo=timezone(offset)).astimezone(timezone.utc)
    return local_to_utc(local, zone)


def _path_part(uri: str) -> str:
    """The path that patterns match: after the authority of ``s3://bucket/…``, the path a
    ``file://`` URI names (URI escapes undone, as the file system spells it), and a local
    path or S3 key exactly as it is (a ``%`` in a key or folder name is part of the name)."""
    if uri[:7].lower() == "file://":
        return unquote(urlsplit(uri).path).replace("\\", "/")
    path = uri.split("://", 1)[1] if "://" in uri else uri
    return path.replace("\\", "/")


def source_name(
    uri: str,
    pattern: re.Pattern[str] | str | None = None,
    *,
    creation_time: datetime | None = None,
    zone: tzinfo | str = timezone.utc,
) -> SourceName:
    """Camera and recording start of ``uri``.

    The camera is the ``camera`` group as it stands in the path. The start is, in this
    order: the ``start`` group of the name (its own offset, else local time in ``zone``);
    the container's ``creation_time`` (UTC when it carries no offset, as MP4 and Matroska
    store it); else unknown. The name comes first because a recorder writes it when it
    records, while remuxing and export tools often rewrite ``creation_time``. Patterns: the
    default one, then the looser ``<camera>_<start>.<ext>``; a custom pattern replaces both."""
    path = _path_part(uri)
    tz = time_zone(zone) if isinstance(zone, str) else zone
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
            start = parse_start(m.group("start"), tz)
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


def printable_uri(uri: str) -> str:
    """``uri`` as text every writer takes (Parquet, JSON, S3 keys, a terminal): a local name
    that is not valid UTF-8, which Python lists with its undecodable bytes as surrogate
    escapes, has those bytes spelled ``\\xNN`` (``cam\\xff.mp4``). A valid name is returned
    as it is."""
    try:
        uri.encode("utf-8")
        return uri
    except UnicodeEncodeError:
        pass
    try:
        raw = uri.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte: spell it \udcNN
        return uri.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


# digits of the two hashes in a key (source_key): the source id (URI and model) and the
# result id (URI, version and model)
SOURCE_ID_HEX = 16
DIGEST_HEX = 20
_KEY_RX = re.compile(
    rf"^(?P<stem>.+)-(?P<source>[0-9a-f]{{{SOURCE_ID_HEX}}})-[0-9a-f]{{{DIGEST_HEX}}}$"
)


def source_key(uri: str, version: str, model_id: str) -> str:
    """Deterministic object key of one (source, source version, model):
    ``<stem>-<source id>-<digest>``, a readable stem of the file name, 16 hex of
    sha256(URI, model) and 20 hex of sha256(URI, version, model). Reruns find the same names
    and a changed file or another model gets new ones; the source id tells, from a listing
    alone, which keys are versions of one file under one model (``key_source_id``). A name
    that is not valid UTF-8 is keyed by its escaped spelling (``printable_uri``)."""
    uri = printable_uri(uri)
    source = hashlib.sha256(f"{uri}\n{model_id}".encode()).hexdigest()[:SOURCE_ID_HEX]
    digest = hashlib.sha256(f"{uri}\n{version}\n{model_id}".encode()).hexdigest()[:DIGEST_HEX]
    return f"{_key_stem(uri)}-{source}-{digest}"


def legacy_source_key(uri: str, version: str, model_id: str) -> str:
    """The key that outputs written before keys carried a source id have:
    ``<stem>-<digest>`` (a scan adopts them as its own, ``sink.adopt_legacy``)."""
    uri = printable_uri(uri)
    digest = hashlib.sha256(f"{uri}\n{version}\n{model_id}".encode()).hexdigest()[:DIGEST_HEX]
    return f"{_key_stem(uri)}-{digest}"


def key_source_id(key: str) -> str | None:
    """The source id of a key made by ``source_key``; None for any other name."""
    m = _KEY_RX.match(key)
    return m["source"] if m else None


def _key_stem(uri: str) -> str:
    stem = _path_part(uri).rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return safe_component(stem, max_len=60)


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
