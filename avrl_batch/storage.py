"""Object storage: local paths, ``file://`` URIs and ``s3://bucket/prefix`` behind one API.

This is the only module that knows about S3, boto3, obstore and pyarrow.fs; everything else
calls it.

* Endpoint: the ``endpoint_url`` argument, else ``AWS_ENDPOINT_URL_S3`` or
  ``AWS_ENDPOINT_URL`` (MinIO, Ceph, moto), honoured by boto3 and pyarrow alike.
* Credentials: only the standard AWS chain (environment, ``~/.aws`` files, IAM role). They are
  never accepted as arguments, never logged, and scrubbed from every error message we raise.
* Reads: :func:`open_source` gives a seekable file object that fetches only the byte ranges
  the decoder asks for (ranged GETs through a read-ahead buffer) and counts ``bytes_read``.
  Each ranged GET has its own deadlines and retries (:class:`S3Reads`) and is pinned with
  ``If-Match`` to the version the listing saw.
* Schemes: ``s3a://`` and ``s3n://`` (Hadoop's names) are the same as ``s3://``.
* Writes: :func:`write_atomic` never leaves a partial object under the final name (local:
  temp file + fsync + rename; S3: one PUT, ``If-None-Match: *`` for ``if_absent``; a small
  body through obstore, see SMALL_PUT_BYTES).
* Keys: :func:`join` refuses any part that could escape the root (``..``, absolute paths,
  backslashes, percent-encoded dots, control characters) instead of sanitising it, so two
  different hostile names can never collide onto one key.

boto3 and pyarrow are imported inside the functions so that importing this module (the CLI
does) stays cheap.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import io
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, NoReturn
from urllib.parse import quote, unquote, urlsplit

from avrl_batch.errors import ConfigError, StorageError

if TYPE_CHECKING:
    import pyarrow.fs

DEFAULT_VIDEO_GLOBS: tuple[str, ...] = tuple(
    f"*.{ext}"
    for ext in (
        "mp4", "mov", "mkv", "avi", "webm", "m4v", "ts", "mts", "mpg", "mpeg", "flv", "wmv",
    )
)

# Read-ahead of the S3 file object, adaptive like a kernel's readahead. PyAV asks for 32 KiB
# at a time; one GET per 32 KiB would pay S3's ~20-50 ms first-byte latency per read, so
# sequential reads double the GET size up to READ_AHEAD_MAX (1 MiB: ~10 ms to transfer at
# typical per-connection throughput, so latency is amortised). A seek (MP4 header, moov at
# the end, the jump to a span's keyframe) restarts at READ_AHEAD_MIN, because a decoder
# that seeks usually needs a few KiB there and a full buffer would be wasted. Measured in
# tests/test_storage.py::test_s3_span_read_is_ranged (figure in the README).
READ_AHEAD_MIN = 64 * 1024
READ_AHEAD_MAX = 1024 * 1024

# Prefix of the temp files that local writes rename into place; list_files() skips them so a
# crashed writer's leftover is never mistaken for an output.
_TMP_PREFIX = ".avrl-tmp-"


@dataclass(frozen=True)
class Source:
    """One input object: its URI, size in bytes, and a version tag that changes when it does
    (S3 ETag without quotes; locally ``f"{size}-{mtime_ns}"``)."""

    uri: str
    size: int
    version: str


# Hadoop's s3a:// and s3n:// name the same objects as s3://: parsed alike, and every URI
# built under a root keeps the root's form (join, list_files), so keys compare equal
S3_SCHEMES = ("s3", "s3a", "s3n")


@dataclass(frozen=True)
class ParsedUri:
    """``scheme`` is ``"file"`` (``path`` absolute) or ``"s3"`` (``bucket`` and ``key``)."""

    scheme: Literal["file", "s3"]
    bucket: str = ""
    key: str = ""
    path: str = ""


def parse_uri(uri: str) -> ParsedUri:
    """Parse a local path, a ``file://`` URI or an ``s3://bucket/key`` URI."""
    if not uri:
        raise _error("empty URI: give a local path, file:///path or s3://bucket/prefix")
    if "://" not in uri:
        return ParsedUri("file", path=os.path.abspath(os.path.expanduser(uri)))
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise _error(f"file URI with a remote host is not supported: {uri}")
        return ParsedUri("file", path=os.path.abspath(unquote(parts.path)))
    if scheme in S3_SCHEMES:
        if not parts.netloc:
            raise _error(f"S3 URI without a bucket: {uri} (use s3://bucket/prefix)")
        key = uri.split("://", 1)[1].partition("/")[2]  # keys are opaque: no unquoting
        return ParsedUri("s3", bucket=parts.netloc, key=key)
    raise _error(
        f"unsupported URI scheme {scheme!r} in {uri}: "
        "use a local path, file:///path or s3://bucket/prefix"
    )


# ---------------------------------------------------------------------------------------------
# keys and joins


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def join(uri: str, *parts: str) -> str:
    """Append relative ``parts`` (each may hold ``/``-separated segments) to ``uri``.

    Raises StorageError (never sanitises, so two hostile names cannot collide onto one key)
    for a part that is absolute, has an empty, ``.`` or ``..`` segment, a backslash or a
    control character, also after percent-decoding (``%2e%2e``, ``%2f..``, ``%5c``): the
    result is always strictly inside ``uri``. Other characters, ``%`` included, are kept
    as they are (a ``file://`` result percent-encodes them so the path is what was given).
    """
    segments: list[str] = []
    for part in parts:
        if not isinstance(part, str) or not part:
            raise _error(f"empty or non-text path part {part!r} under {uri}")
        decoded = part
        for _ in range(4):  # %252e -> %2e -> . : decode until stable
            decoded, prev = unquote(decoded), decoded
            if decoded == prev:
                break
        if any(
            text.startswith("/")
            or "\\" in text
            or _CONTROL.search(text)
            or any(seg in ("", ".", "..") for seg in text.split("/"))
            for text in (part, decoded)
        ):
            raise _error(
                f"refusing unsafe path part {part!r}: it could point outside {uri}"
            )
        segments.extend(part.split("/"))
    p = parse_uri(uri)
    out = _child(uri, segments)
    # belt and braces: the checks above already make escaping impossible
    q = parse_uri(out)
    if p.scheme == "s3":
        inside = q.bucket == p.bucket and q.key.startswith(_dir_prefix(p.key))
    else:
        root, path = os.path.normpath(p.path), os.path.normpath(q.path)
        inside = path != root and os.path.commonpath([root, path]) == root
    if not inside:
        raise _error(f"refusing path outside {uri}")
    return out


def relative_parts(root: str, uri: str) -> list[str]:
    """The path segments of ``uri`` below ``root``, as :func:`join` takes them (a ``file://``
    URI's escapes undone), so ``join(root, *relative_parts(root, uri)) == uri`` for what
    :func:`list_files` returns. StorageError unless ``uri`` is strictly inside ``root``."""
    p, q = parse_uri(root), parse_uri(uri)
    rel = ""
    if p.scheme == q.scheme == "s3":
        prefix = _dir_prefix(p.key)
        if q.bucket == p.bucket and q.key.startswith(prefix):
            rel = q.key[len(prefix):]
    elif p.scheme == q.scheme == "file":
        inside = os.path.commonpath([p.path, q.path]) == p.path and q.path != p.path
        rel = os.path.relpath(q.path, p.path).replace(os.sep, "/") if inside else ""
    if not rel:
        raise _error(f"{uri} is not inside {root}")
    return rel.split("/")


def _child(uri: str, segments: Sequence[str]) -> str:
    """``uri`` + ``segments`` in the form of ``uri`` (no checks: callers validate)."""
    if uri.lower().startswith("file://"):
        segments = [quote(seg, safe="!$&'()*+,;=:@~") for seg in segments]  # RFC 3986 pchar
    return uri + ("" if uri.endswith("/") else "/") + "/".join(segments)


# ---------------------------------------------------------------------------------------------
# listing


def list_sources(
    uri: str,
    *,
    include: Sequence[str] = DEFAULT_VIDEO_GLOBS,
    exclude: Sequence[str] = (),
    endpoint_url: str | None = None,
) -> list[Source]:
    """Recursively list the objects under ``uri`` whose path relative to ``uri`` matches an
    ``include`` glob and no ``exclude`` glob, sorted by URI. A URI naming one file lists
    that file whatever the globs. An S3 prefix with nothing under it gives ``[]``.

    Globs are fnmatch patterns, case-insensitive, matched against the relative path with
    ``/`` separators. A pattern without ``/`` matches the base name (``*.mp4`` matches
    ``cam1/a.mp4``); a pattern with ``/`` matches the whole relative path, where ``*``
    already crosses ``/`` so ``**`` means the same as ``*`` (``cam1/**`` is everything under
    cam1) and a leading ``**/`` also matches at the top (``**/x.mp4`` matches ``x.mp4``).
    """
    p = parse_uri(uri)
    # local sources are plain absolute paths and S3 ones s3:// URIs whatever form the root
    # was given in, so one source has one identity (output keys derive from it)
    if p.scheme == "file":
        found = _list_local(p.path)
        if found is None:  # a single file
            st = _stat(p.path)
            return [Source(p.path, st.st_size, f"{st.st_size}-{st.st_mtime_ns}")]
        items = [
            (full, os.path.relpath(full, p.path).replace(os.sep, "/"), size, version)
            for full, size, version in found
        ]
    else:
        single = _head(p.bucket, p.key, endpoint_url) if p.key and not p.key.endswith("/") else None
        if single is not None:
            return [Source(f"s3://{p.bucket}/{p.key}", int(single["ContentLength"]),
                           _etag(single["ETag"]))]
        prefix = _dir_prefix(p.key)
        items = [
            (f"s3://{p.bucket}/{obj['Key']}", obj["Key"][len(prefix):], int(obj["Size"]),
             _etag(obj["ETag"]))
            for obj in _list_s3(p.bucket, prefix, endpoint_url)
        ]
    out = [
        Source(full, size, version)
        for full, rel, size, version in items
        if _matches(rel, include) and not _matches(rel, exclude)
    ]
    return sorted(out, key=lambda s: s.uri)


def list_files(
    uri: str, *, suffix: str | None = None, endpoint_url: str | None = None
) -> list[str]:
    """URIs of every file under ``uri`` (recursive, sorted), optionally only those ending in
    ``suffix``, in the form :func:`join` gives (so they compare equal to the keys a writer
    built); a missing directory or empty prefix gives ``[]``. Hidden files (a name starting
    with ``.``, e.g. a crashed writer's temp file) are skipped."""
    p = parse_uri(uri)
    if p.scheme == "file":
        if not os.path.exists(p.path):
            return []
        found = _list_local(p.path)
        if found is None:
            uris = [uri]
        else:  # in the form the root was given (path or file://), as join() builds them
            uris = [_child(uri, os.path.relpath(full, p.path).split(os.sep)) for full, *_ in found]
    else:  # in the form the root was given (s3://, s3a://, s3n://), as join() builds them
        prefix = _dir_prefix(p.key)
        uris = [
            _child(uri, obj["Key"][len(prefix):].split("/"))
            for obj in _list_s3(p.bucket, prefix, endpoint_url)
        ]
    return sorted(
        u for u in uris
        if not u.rsplit("/", 1)[-1].startswith(".") and (suffix is None or u.endswith(suffix))
    )


def list_folders(uri: str, *, endpoint_url: str | None = None) -> list[str]:
    """Names of the folders directly under ``uri`` (sorted; hidden ones skipped): on S3 the
    common prefixes of one delimited listing, so a partitioned tree is walked one level at a
    time instead of listed whole. A missing folder or empty prefix gives ``[]``."""
    p = parse_uri(uri)
    if p.scheme == "file":
        try:
            with os.scandir(p.path) as entries:
                names = [e.name for e in entries if e.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as err:
            raise _error(f"cannot list {p.path}: {err.strerror}") from None
    else:
        prefix = _dir_prefix(p.key)
        client = _s3(endpoint_url)
        names = []
        with _s3_errors(f"s3://{p.bucket}/{prefix}", endpoint_url):
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=p.bucket, Prefix=prefix, Delimiter="/"
            )
            for page in pages:
                names += [
                    c["Prefix"][len(prefix):].rstrip("/") for c in page.get("CommonPrefixes", [])
                ]
    return sorted(n for n in names if n and not n.startswith("."))


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    rel_l = rel.lower()
    base = rel_l.rsplit("/", 1)[-1]
    for pat in patterns:
        pat_l = pat.lower()
        if "/" not in pat_l:
            if fnmatch.fnmatchcase(base, pat_l):
                return True
        elif fnmatch.fnmatchcase(rel_l, pat_l) or (
            pat_l.startswith("**/") and fnmatch.fnmatchcase(rel_l, pat_l[3:])
        ):
            return True
    return False


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise _error(f"no such file or directory: {path}") from None
    except PermissionError:
        raise _error(f"permission denied: {path}") from None


def _list_local(root: str) -> list[tuple[str, int, str]] | None:
    """(path, size, version) for every file under ``root``; None if ``root`` is a file.

    Symlinked folders are followed (a camera folder is often a link to another disk), and
    each real folder is listed once: a folder already seen, by (device, inode), is skipped,
    so a link back up the tree cannot loop and a folder reached by two paths yields its
    files once, under the first path the sorted top-down walk reaches. Paths stay as
    reached (the link's name, not its target), so the camera is the folder the user sees."""
    root_st = _stat(root)  # a clear error for a missing or forbidden path
    if not os.path.isdir(root):
        return None

    def fail(err: OSError) -> NoReturn:
        raise _error(f"cannot list {err.filename}: {err.strerror}")

    seen = {(root_st.st_dev, root_st.st_ino)}
    out = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail, followlinks=True):
        dirnames[:] = _unseen_folders(dirpath, sorted(dirnames), seen)
        for name in filenames:
            if name.startswith(_TMP_PREFIX):
                continue
            full = os.path.join(dirpath, name)
            try:
                fst = os.stat(full)
            except OSError:
                continue  # vanished or a dangling link between walk and stat
            out.append((full, fst.st_size, f"{fst.st_size}-{fst.st_mtime_ns}"))
    return out


def _unseen_folders(dirpath: str, names: list[str], seen: set[tuple[int, int]]) -> list[str]:
    """The ``names`` under ``dirpath`` whose real folder is not in ``seen`` (added to it)."""
    keep = []
    for name in names:
        try:
            st = os.stat(os.path.join(dirpath, name))
        except OSError:
            continue  # vanished, or a link whose target went away
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            keep.append(name)
    return keep


def _dir_prefix(key: str) -> str:
    return key if not key or key.endswith("/") else key + "/"


def _etag(raw: str) -> str:
    return raw.strip('"')


def _list_s3(bucket: str, prefix: str, endpoint_url: str | None) -> Iterator[dict[str, Any]]:
    client = _s3(endpoint_url)
    with _s3_errors(f"s3://{bucket}/{prefix}", endpoint_url):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            yield from page.get("Contents", [])


def _head(bucket: str, key: str, endpoint_url: str | None) -> dict[str, Any] | None:
    """HEAD an object; None when it does not exist (other errors raise StorageError)."""
    from botocore.exceptions import ClientError

    client = _s3(endpoint_url)
    with _s3_errors(f"s3://{bucket}/{key}", endpoint_url):
        try:
            return client.head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if _code(e) in ("404", "NoSuchKey", "NotFound"):
                # a HEAD on a missing bucket also says 404: tell the two apart
                client.head_bucket(Bucket=bucket)
                return None
            raise


# ---------------------------------------------------------------------------------------------
# reading


class CountingReader(io.BufferedReader):
    """A buffered, seekable, read-only file object; ``bytes_read`` counts the bytes fetched
    from storage (not the bytes handed to the caller, which read-ahead makes smaller)."""

    @property
    def bytes_read(self) -> int:
        return self.raw.bytes_read  # type: ignore[attr-defined]

    @property
    def requests(self) -> int:
        """Number of reads issued to storage (GETs on S3)."""
        return self.raw.requests  # type: ignore[attr-defined]

    @property
    def retries(self) -> int:
        """Attempts repeated after a failed one (S3: a timeout, reset or throttle)."""
        return getattr(self.raw, "retries", 0)

    @property
    def failure(self) -> StorageError | None:
        """The StorageError a read raised (every later read raises it again), if any: a
        caller whose decoder swallowed it (PyAV drops an exception raised in its read
        callback and FFmpeg sees an error or an early end) still learns that storage
        failed, not the file."""
        return getattr(self.raw, "failure", None)


class _LocalRaw(io.FileIO):
    def __init__(self, path: str) -> None:
        super().__init__(path, "rb")
        self.bytes_read = 0
        self.requests = 0

    def readinto(self, b: Any) -> int:  # type: ignore[override]
        n = super().readinto(b) or 0
        self.bytes_read += n
        self.requests += 1
        return n


@dataclass(frozen=True)
class S3Reads:
    """Deadlines and retries of the ranged GETs that read a source, the storage layer's own.

    They are shorter than the decoder watchdog (:meth:`within`), so a read that stalls, is
    throttled or reset ends here as a StorageError, which a scan reports and retries on the
    next run, and not as the decoder timeout that would quarantine the file. One read costs
    at most :attr:`budget_s`; with these values 4 attempts of at most 9 s + 5 s and 1.75 s
    of backoff: 57.75 s, under half of the default ``--decode-timeout`` (120 s).
    """

    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0  # longest wait for the next bytes, the first ones included
    # one attempt, request to last byte (checked between chunks): 1 MiB at >= ~115 KB/s
    attempt_deadline_s: float = 9.0
    attempts: int = 4
    backoff_s: float = 0.25  # before retry k (1, 2, ...): backoff_s * 2**(k-1), capped
    backoff_max_s: float = 2.0

    def backoff(self, retry: int) -> float:
        return min(self.backoff_max_s, self.backoff_s * 2 ** (retry - 1))

    @property
    def budget_s(self) -> float:
        """The longest one ranged read can take, every attempt and backoff included."""
        # an attempt past its deadline still waits out one socket read
        attempt = max(self.attempt_deadline_s, self.connect_timeout_s + self.read_timeout_s)
        waits = sum(self.backoff(k) for k in range(1, self.attempts))
        return self.attempts * (attempt + self.read_timeout_s) + waits

    def within(self, watchdog_s: float) -> S3Reads:
        """These reads, every duration scaled down (same attempts) so that a read's
        :attr:`budget_s` is at most half of ``watchdog_s``: storage gives up, and says so,
        before the watchdog judges the file."""
        scale = 0.5 * watchdog_s / self.budget_s
        if scale >= 1.0:
            return self
        return replace(
            self,
            connect_timeout_s=self.connect_timeout_s * scale,
            read_timeout_s=self.read_timeout_s * scale,
            attempt_deadline_s=self.attempt_deadline_s * scale,
            backoff_s=self.backoff_s * scale,
            backoff_max_s=self.backoff_max_s * scale,
        )


# Told "start" and "end" around every ranged read (all its attempts): the decoder process
# passes them to its parent, whose watchdog then knows whether a silence was spent waiting
# for storage (scan/isolate.py). A ContextVar: only the code that set it hears.
_read_observer: ContextVar[Callable[[str], None] | None] = ContextVar("read_observer", default=None)


@contextlib.contextmanager
def observe_reads(callback: Callable[[str], None]) -> Iterator[None]:
    """Call ``callback("start")`` / ``callback("end")`` around every ranged S3 read made in
    the block (in this thread or context)."""
    token = _read_observer.set(callback)
    try:
        yield
    finally:
        _read_observer.reset(token)


class _Retry(Exception):
    """Internal: one attempt of a ranged read failed in a way worth another attempt."""


# S3 answers that say "not now", not "no": worth another attempt after a backoff
_RETRY_CODES = frozenset(
    {"SlowDown", "503", "500", "502", "504", "InternalError", "ServiceUnavailable",
     "RequestTimeout", "Throttling", "ThrottlingException", "RequestLimitExceeded"}
)
_BODY_CHUNK = 256 * 1024


class _S3Raw(io.RawIOBase):
    """Unbuffered S3 object: each ``readinto`` is one ranged GET (retried per ``reads``)
    with ``If-Match`` on the listed version (else the ETag seen at open), so an object
    replaced after listing or mid-read fails loudly instead of mixing two versions.

    Why not pyarrow's ``S3FileSystem.open_input_file``: it issues one GET per ``read()``
    (PyAV reads 32 KiB at a time, so ~32 GETs per MiB; decoding a 30 s span on moto took
    0.6-0.8 s against 0.1-0.2 s here) and it exposes no count of the bytes fetched."""

    def __init__(
        self, uri: str, bucket: str, key: str, endpoint_url: str | None, *,
        version: str | None, reads: S3Reads,
    ) -> None:
        self.uri, self.bucket, self.key, self.endpoint_url = uri, bucket, key, endpoint_url
        self.reads = reads
        self.bytes_read = 0
        self.requests = 0
        self.retries = 0  # attempts after a failed one, over every read
        self.failure: StorageError | None = None  # sticky: see CountingReader.failure
        self._window = READ_AHEAD_MIN
        self._last_end = -1  # end of the previous GET, to tell sequential reads from seeks
        head = self._retrying("HEAD", lambda client: self._head(client, version))
        self.size = int(head["ContentLength"])
        self.etag = head["ETag"]
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(f"negative seek position in {self.uri}")
        self.pos = base + offset
        return self.pos

    def readinto(self, b: Any) -> int:  # type: ignore[override]
        if self.pos == self._last_end:
            self._window = min(self._window * 2, READ_AHEAD_MAX)
        else:
            self._window = READ_AHEAD_MIN
        # a short read is fine: BufferedReader asks again for the rest
        want = min(len(b), self._window, self.size - self.pos)
        if want <= 0:
            return 0
        if self.failure is not None:
            raise self.failure
        try:
            data = self._retrying(
                f"bytes {self.pos}-{self.pos + want - 1}",
                lambda client: self._get(client, self.pos, want),
            )
        except StorageError as e:
            self.failure = e
            raise
        n = len(data)
        memoryview(b)[:n] = data
        self.pos += n
        self._last_end = self.pos
        self.bytes_read += n
        self.requests += 1
        return n

    def _retrying(self, what: str, attempt: Callable[[Any], Any]) -> Any:
        """``attempt(client)`` until it succeeds, at most ``reads.attempts`` times with
        backoff; the observer hears "start" and "end" around all of it. A failure that is
        not worth retrying (denied, missing, changed) raises at once."""
        observer = _read_observer.get()
        if observer is not None:
            observer("start")
        try:
            client = _s3(self.endpoint_url, self.reads)
            last = ""
            for retry in range(self.reads.attempts):
                if retry:
                    self.retries += 1
                    time.sleep(self.reads.backoff(retry))
                try:
                    with _s3_errors(self.uri, self.endpoint_url), _retryable_failures():
                        return attempt(client)
                except _Retry as e:
                    last = str(e)
            raise _error(
                f"S3 read of {self.uri} ({what}) failed {self.reads.attempts} times, last: "
                f"{last}; storage, not the file: the source is retried on the next run"
            )
        finally:
            if observer is not None:
                observer("end")

    def _head(self, client: Any, version: str | None) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        pin = {"IfMatch": f'"{version}"'} if version else {}
        try:
            return client.head_object(Bucket=self.bucket, Key=self.key, **pin)
        except ClientError as e:
            if _code(e) in ("404", "NoSuchKey", "NotFound"):
                raise _error(f"no such object: {self.uri}") from None
            raise

    def _get(self, client: Any, start: int, want: int) -> bytes:
        """One attempt: ``want`` bytes from ``start``, within ``reads.attempt_deadline_s``."""
        deadline = time.monotonic() + self.reads.attempt_deadline_s
        resp = client.get_object(
            Bucket=self.bucket, Key=self.key, Range=f"bytes={start}-{start + want - 1}",
            IfMatch=self.etag,
        )
        body = resp["Body"]
        try:
            chunks, got = [], 0
            while chunk := body.read(_BODY_CHUNK):
                chunks.append(chunk)
                got += len(chunk)
                if time.monotonic() > deadline and got < want:
                    raise _Retry(
                        f"{got} of {want} bytes after the "
                        f"{self.reads.attempt_deadline_s:.3g} s deadline"
                    )
        finally:
            body.close()
        if got != want:
            raise _Retry(f"the response ended after {got} of {want} bytes")
        return b"".join(chunks)


@contextlib.contextmanager
def _retryable_failures() -> Iterator[None]:
    """Timeouts, refused or reset connections, cut-off bodies and S3's "slow down" or 5xx
    answers as ``_Retry``; anything else (denied, missing, changed) passes."""
    from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    try:
        yield
    except ClientError as e:
        if _code(e) not in _RETRY_CODES:
            raise
        raise _Retry(f"S3 answered {_code(e)}") from None
    except (HTTPClientError, BotoConnectionError, IncompleteReadError, OSError) as e:
        raise _Retry(f"{type(e).__name__}: {e}") from None


def open_source(
    uri: str,
    *,
    endpoint_url: str | None = None,
    version: str | None = None,
    reads: S3Reads = S3Reads(),
) -> CountingReader:
    """Open ``uri`` as a seekable read-only binary file (a context manager) with a
    ``bytes_read`` counter. On S3 only the ranges asked for are fetched, with an adaptive
    read-ahead (READ_AHEAD_MIN after a seek, up to READ_AHEAD_MAX while reading on);
    nothing downloads the whole object. Each ranged GET follows ``reads`` and is pinned
    with ``If-Match`` to ``version`` (the ETag the listing gave, :attr:`Source.version`;
    None: the one seen at open): an object that changed raises StorageError."""
    p = parse_uri(uri)
    if p.scheme == "file":
        with _local_errors(p.path):
            raw: io.RawIOBase = _LocalRaw(p.path)
        return CountingReader(raw, buffer_size=64 * 1024)
    if not p.key or p.key.endswith("/"):
        raise _error(f"not an object: {uri} (name a key, not a prefix)")
    raw = _S3Raw(uri, p.bucket, p.key, endpoint_url, version=version, reads=reads)
    return CountingReader(raw, READ_AHEAD_MAX)


def read_bytes(uri: str, *, endpoint_url: str | None = None) -> bytes:
    """The whole content of one (small) object, e.g. a manifest or a checkpoint."""
    p = parse_uri(uri)
    if p.scheme == "file":
        with _local_errors(p.path), open(p.path, "rb") as f:
            return f.read()
    with _s3_errors(uri, endpoint_url):
        return _s3(endpoint_url).get_object(Bucket=p.bucket, Key=p.key)["Body"].read()


def presigned_url(uri: str, *, expires_s: int, endpoint_url: str | None = None) -> str:
    """A GET URL of one S3 object that works without credentials for ``expires_s`` seconds
    (1 s to 7 days, SigV4's limit). Whoever holds it can read the object until then."""
    p = parse_uri(uri)
    if p.scheme == "file" or not p.key:
        raise _error(f"a presigned URL needs an S3 object, not {uri}")
    if not 1 <= expires_s <= 7 * 24 * 3600:
        raise ConfigError(f"a presigned URL lives 1 s to 7 days, not {expires_s} s")
    with _s3_errors(uri, endpoint_url):
        return _s3(endpoint_url).generate_presigned_url(
            "get_object", Params={"Bucket": p.bucket, "Key": p.key}, ExpiresIn=int(expires_s)
        )


def exists(uri: str, *, endpoint_url: str | None = None) -> bool:
    """Whether a file/object exists at ``uri`` (a local directory counts; an S3 prefix not)."""
    p = parse_uri(uri)
    if p.scheme == "file":
        return os.path.exists(p.path)
    return bool(p.key) and _head(p.bucket, p.key, endpoint_url) is not None


# ---------------------------------------------------------------------------------------------
# writing


def write_atomic(
    uri: str,
    data: bytes | BinaryIO,
    *,
    if_absent: bool = False,
    endpoint_url: str | None = None,
) -> bool:
    """Write ``data`` (bytes, or a readable binary stream) whole under ``uri``.

    Returns True if written; False only with ``if_absent`` when the name already exists (the
    existing content is left alone, so of two racing writers exactly one returns True).
    A failure midway (exception, crash) leaves nothing under ``uri``: locally the data goes
    to a hidden temp file in the same directory, is fsynced, then renamed (or hard-linked, for
    ``if_absent``, which fails if the name exists) into place and the directory fsynced; a
    crash can leave a hidden ``.avrl-tmp-*`` file, never a partial ``uri``. On S3 it is one
    PutObject (so at most 5 GiB), which S3 applies whole or not at all; ``if_absent`` sends
    ``If-None-Match: *`` (AWS S3 and moto honour it; check an S3-compatible server's
    version: one that ignores the header degrades to last-writer-wins, harmless for
    deterministic keys whose content is the same whoever writes it).
    """
    p = parse_uri(uri)
    if p.scheme == "file":
        return _write_local(p.path, data, if_absent)
    if not p.key or p.key.endswith("/"):
        raise _error(f"cannot write to a bucket or prefix: {uri} (name a key)")
    return _write_s3(uri, p.bucket, p.key, data, if_absent, endpoint_url)


def _write_local(path: str, data: bytes | BinaryIO, if_absent: bool) -> bool:
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f"{_TMP_PREFIX}{uuid.uuid4().hex}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "xb") as f:
            if isinstance(data, bytes | bytearray | memoryview):
                f.write(data)
            else:
                _copy_stream(data, f.write)
            f.flush()
            os.fsync(f.fileno())
        if if_absent:
            # link() fails if the name exists, atomically: the second writer learns it lost
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
        _fsync_dir(directory)
        return True
    except OSError as e:
        raise _error(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        # OSError, not just FileNotFoundError: when the folder could not be made (a path
        # under a regular file, no permission) unlink fails too, and must not replace the
        # one-line StorageError above with a traceback
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _copy_stream(src: BinaryIO, write: Callable[[bytes], Any]) -> None:
    while chunk := src.read(1 << 20):
        write(chunk)


def _fsync_dir(directory: str) -> None:
    # the rename is durable only once the directory entry is on disk
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_s3(
    uri: str,
    bucket: str,
    key: str,
    data: bytes | BinaryIO,
    if_absent: bool,
    endpoint_url: str | None,
) -> bool:
    from botocore.exceptions import ClientError

    body = bytes(data) if isinstance(data, bytearray | memoryview) else data
    if isinstance(body, bytes) and len(body) <= SMALL_PUT_BYTES:
        with _client_lock:
            store = _small_puts(_endpoint(endpoint_url), bucket, os.getpid())
        if store is not None:
            written = _put_small(store, uri, key, body, if_absent, endpoint_url)
            if written is not None:
                return written
    if not isinstance(body, bytes) and not body.seekable():
        # botocore hashes and signs the body before sending it, so it must rewind it
        body = body.read()
    client = _s3(endpoint_url)
    with _s3_errors(uri, endpoint_url):
        if not if_absent:
            client.put_object(Bucket=bucket, Key=key, Body=body)
            return True

        def attempt(last: bool) -> bool:
            try:
                client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
                return True
            except ClientError as e:
                code = _code(e)
                if code in ("PreconditionFailed", "412"):
                    return False  # the key exists: another writer won
                if code in ("ConditionalRequestConflict", "409") and not last:
                    if not isinstance(body, bytes):
                        body.seek(0)
                    raise _InFlight from None
                raise

        return bool(_retry_in_flight(attempt))


class _InFlight(Exception):
    """A conditional PUT answered 409 ConditionalRequestConflict: another conditional PUT to
    the key is in flight."""


IN_FLIGHT_ATTEMPTS = 4


def _retry_in_flight(attempt: Callable[[bool], bool | None]) -> bool | None:
    """``attempt(last)`` until it does not raise _InFlight (it must not on the ``last``
    attempt), with a backoff between tries: AWS says a conflicting conditional PUT is retried,
    and the retry then gets 412 if the other PUT succeeded, or wins if it failed."""
    for n in range(IN_FLIGHT_ATTEMPTS):
        try:
            return attempt(n == IN_FLIGHT_ATTEMPTS - 1)
        except _InFlight:
            time.sleep(0.1 * 2**n)
    raise AssertionError("unreachable: the last attempt does not raise _InFlight")


# Scan outputs are small objects, two a source, PUT by the driver's writer threads. boto3
# spends ~1 CPU-ms a request in Python (signing, hooks, parsing), holding the GIL that the
# whole driver shares; obstore (Rust's object_store) sends the same signed PutObject, with
# If-None-Match for if_absent, in ~0.3 CPU-ms outside the GIL. So a bytes body up to this size
# goes through obstore; larger or streamed bodies, and every other call, through boto3.
SMALL_PUT_BYTES = 8 << 20


@functools.lru_cache(maxsize=32)
def _small_puts(endpoint: str | None, bucket: str, pid: int) -> Any:
    """An obstore S3Store for ``bucket`` on ``endpoint`` with boto3's credentials, region,
    attempts and timeouts; None where it cannot be made (no credentials: boto3 then says so
    in its own words). One per process, as for boto3's clients."""
    from datetime import timedelta

    import boto3
    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import S3Store

    session = boto3.session.Session()
    try:
        # botocore hands out credentials with at least 10 minutes left; a 5-minute cache of
        # them never outlives them (obstore caches for 30 minutes unless told)
        credentials = Boto3CredentialProvider(session, ttl=timedelta(minutes=5))
    except ValueError:  # no credentials in the chain
        return None
    region = session.region_name
    if region is None and endpoint is None:
        # on AWS a bucket answers only in its own region, and object_store (unlike boto3)
        # does not follow the redirect: ask once where the bucket lives
        import pyarrow.fs

        try:
            region = pyarrow.fs.resolve_s3_region(bucket)
        except OSError:
            return None  # boto3 reports what is wrong with the bucket
    attempts = max(1, int(os.environ.get("AWS_MAX_ATTEMPTS", 5)))
    where = {"endpoint": endpoint} if endpoint else {}
    return S3Store(
        bucket, region=region or _region(), credential_provider=credentials,
        # path-style with a custom endpoint or a dotted bucket name, as boto3 addresses them;
        # `etag`: if_absent is sent as If-None-Match
        config={"conditional_put": "etag",
                "virtual_hosted_style_request": not endpoint and "." not in bucket},
        client_options={"allow_http": bool(endpoint and endpoint.startswith("http://")),
                        "connect_timeout": "10s", "timeout": "60s"},
        retry_config={"max_retries": attempts - 1, "retry_timeout": timedelta(seconds=60)},
        **where,
    )


def _put_small(store: Any, uri: str, key: str, body: bytes, if_absent: bool,
               endpoint_url: str | None) -> bool | None:
    """One PutObject through obstore: True written, False (``if_absent``) the key exists;
    None where obstore cannot name the key as it is (an empty or ``.`` segment, a control
    character: boto3 writes those). Errors as boto3's are: one scrubbed StorageError line."""
    import obstore
    from obstore.exceptions import AlreadyExistsError

    def attempt(last: bool) -> bool | None:
        try:
            obstore.put(store, key, body, mode="create" if if_absent else "overwrite",
                        use_multipart=False)
            return True
        except Exception as e:  # noqa: BLE001 - obstore raises builtins and its own classes
            text = str(e)
            if isinstance(e, ValueError) and "parse path" in text:
                return None
            # object_store calls a 409 ConditionalRequestConflict AlreadyExists too
            if if_absent and "status code: 409" in text:
                if not last:
                    raise _InFlight from None
            elif isinstance(e, AlreadyExistsError):
                return False  # 412: another writer won
            raise _error(_obstore_message(uri, e, endpoint_url)) from None

    return _retry_in_flight(attempt)


def _obstore_message(uri: str, exc: Exception, endpoint_url: str | None) -> str:
    """obstore's many-line message as one line, worded as boto3's errors are."""
    text = str(exc)
    code = re.search(r"<Code>([^<]+)</Code>", text)
    status = re.search(r"status code: (\d{3})", text)
    if code or status:
        key = code.group(1) if code else status.group(1)  # type: ignore[union-attr]
        hint = _S3_HINTS.get(key) or _S3_HINTS.get(status.group(1) if status else "") or key
        return f"S3 error on {uri}: {hint} [{key}]"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"S3 request for {uri} at {_endpoint(endpoint_url) or 'AWS'} failed: {first}"


def delete(uri: str, *, endpoint_url: str | None = None) -> None:
    """Delete one file/object; a missing one is not an error (deletes are idempotent)."""
    p = parse_uri(uri)
    if p.scheme == "file":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p.path)
        return
    with _s3_errors(uri, endpoint_url):
        _s3(endpoint_url).delete_object(Bucket=p.bucket, Key=p.key)


# ---------------------------------------------------------------------------------------------
# pyarrow filesystem (pyarrow.dataset, DuckDB)


def filesystem(uri: str, *, endpoint_url: str | None = None) -> tuple[pyarrow.fs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for ``uri``: LocalFileSystem and an
    absolute path, or S3FileSystem (same endpoint and credential chain as boto3) and
    ``bucket/key``."""
    p = parse_uri(uri)
    if p.scheme == "file":
        import pyarrow.fs

        return pyarrow.fs.LocalFileSystem(), p.path
    endpoint = _endpoint(endpoint_url)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region is None and endpoint is None:
        # on AWS a bucket answers only in its own region; pyarrow (unlike boto3) does not
        # follow the redirect, so ask once where the bucket lives
        import pyarrow.fs

        with _arrow_errors(uri):
            region = pyarrow.fs.resolve_s3_region(p.bucket)
    fs = _arrow_s3(endpoint, region or "us-east-1", os.getpid())
    return fs, f"{p.bucket}/{p.key}".rstrip("/")


@functools.lru_cache(maxsize=8)
def _arrow_s3(endpoint: str | None, region: str, pid: int) -> pyarrow.fs.S3FileSystem:
    import pyarrow.fs

    kwargs: dict[str, Any] = {
        "region": region,
        "retry_strategy": pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=5),
        "connect_timeout": 10,
        "request_timeout": 60,
    }
    if endpoint:
        parts = urlsplit(endpoint)
        kwargs["endpoint_override"] = parts.netloc.rpartition("@")[2] + parts.path.rstrip("/")
        kwargs["scheme"] = parts.scheme or "https"
    return pyarrow.fs.S3FileSystem(**kwargs)


# ---------------------------------------------------------------------------------------------
# boto3 client, errors, redaction


def _endpoint(endpoint_url: str | None) -> str | None:
    # the same precedence as boto3's own: argument, service-specific variable, global one
    return (
        endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


_client_lock = threading.Lock()


def _s3(endpoint_url: str | None, reads: S3Reads | None = None) -> Any:
    """The S3 client for ``endpoint_url``; with ``reads``, the one for ranged reads: its
    timeouts are those of ``reads`` and botocore does not retry (_S3Raw does, per ``reads``)."""
    with _client_lock:  # creating clients is not thread-safe; using them is
        return _s3_client(_endpoint(endpoint_url), os.getpid(), reads)


@functools.lru_cache(maxsize=8)
def _s3_client(endpoint: str | None, pid: int, reads: S3Reads | None = None) -> Any:
    """One client per (endpoint, process, read settings): Ray workers call us per source,
    and a client's connection pool must not cross a fork (hence the pid in the key)."""
    import boto3
    from botocore.config import Config

    # botocore's DEBUG records carry the signed request headers (the access key id): keep
    # them out of our logs even when the root logger is at DEBUG, unless someone asked for
    # botocore's level explicitly
    botocore_log = logging.getLogger("botocore")
    if botocore_log.level == logging.NOTSET:
        botocore_log.setLevel(logging.INFO)
    if reads is None:
        config = Config(
            # the standard variable still lets an operator change the attempts (tests use 1)
            retries={"mode": "standard",
                     "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", 5))},
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=16,
        )
    else:
        config = Config(
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=reads.connect_timeout_s,
            read_timeout=reads.read_timeout_s,
            max_pool_connections=16,
        )
    session = boto3.session.Session()
    return session.client(
        "s3", endpoint_url=endpoint, region_name=session.region_name or _region(), config=config
    )


def _code(e: Exception) -> str:
    resp = getattr(e, "response", {}) or {}
    err = resp.get("Error", {}) or {}
    return str(err.get("Code") or resp.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


_CHANGED = (
    "the object changed while it was being read (it is no longer the version the listing "
    "saw); the new version is scanned on the next run"
)
_S3_HINTS = {
    "NoSuchBucket": "bucket does not exist (check the URI and --endpoint-url)",
    "NoSuchKey": "no such object",
    "404": "not found",
    "AccessDenied": "access denied (check the credentials in your AWS environment/profile/role)",
    "403": "access denied (check the credentials in your AWS environment/profile/role)",
    "InvalidAccessKeyId": "the AWS access key id is not known to this endpoint",
    "SignatureDoesNotMatch": "the AWS secret key does not match the access key id",
    "ExpiredToken": "the AWS session token has expired",
    "PreconditionFailed": _CHANGED,
    "412": _CHANGED,
}


@contextlib.contextmanager
def _s3_errors(uri: str, endpoint_url: str | None) -> Iterator[None]:
    """Turn boto errors into one-line StorageErrors with credentials scrubbed. The original
    exception is not chained (``from None``): its text could carry request details."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except StorageError:
        raise
    except NoCredentialsError:
        raise _error(
            f"no AWS credentials found for {uri}: set AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an IAM role"
        ) from None
    except ClientError as e:
        code = _code(e)
        hint = _S3_HINTS.get(code) or str(e)
        raise _error(f"S3 error on {uri}: {hint} [{code}]") from None
    except BotoCoreError as e:
        where = _endpoint(endpoint_url) or "AWS"
        raise _error(
            f"S3 request for {uri} at {where} failed: {str(e)}"
        ) from None


@contextlib.contextmanager
def _local_errors(path: str) -> Iterator[None]:
    """A local file that is missing, a directory or not readable: one StorageError line."""
    try:
        yield
    except FileNotFoundError:
        raise _error(f"no such file: {path}") from None
    except IsADirectoryError:
        raise _error(f"is a directory, not a file: {path}") from None
    except PermissionError:
        raise _error(f"permission denied: {path}") from None


@contextlib.contextmanager
def _arrow_errors(uri: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:  # pyarrow raises OSError with the AWS error text
        raise _error(f"S3 error on {uri}: {e}") from None


def _error(message: str) -> StorageError:
    """Every StorageError is built here, so every message is scrubbed of credentials."""
    return StorageError(_redact(message))


def _redact(text: str) -> str:
    """Scrub anything that may be a credential from text we put in a message (the current
    environment's credential values, key ids, ``user:password@`` in URLs, presigned URLs'
    signatures and tokens, secret-looking NAME=value): ``redaction.redact``."""
    from avrl_batch.redaction import redact

    return redact(text)
