"""Storage: the same behaviour through a local path, a file:// URI and S3 (a real moto server).

Listing, ranged reads (only the bytes asked for are fetched), whole writes, key safety, and
credentials never in errors or logs.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
import subprocess
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from avrl_batch import storage
from avrl_batch.errors import StorageError
from avrl_batch.storage import Source

REPO = Path(__file__).resolve().parents[1]

TREE = {  # relative path -> content (sizes differ so a size mix-up shows)
    "cam1/a.mp4": b"a" * 10,
    "cam1/B.MOV": b"b" * 21,
    "cam2/sub/c.mkv": b"c" * 32,
    "cam2/d.avi": b"d" * 43,
    "notes.txt": b"n" * 54,
}


@pytest.fixture
def fresh_clients() -> Iterator[None]:
    """Drop cached clients before and after a test that changes the AWS environment."""
    for cache in (storage._s3_client, storage._arrow_s3, storage._small_puts):
        cache.cache_clear()
    yield
    for cache in (storage._s3_client, storage._arrow_s3, storage._small_puts):
        cache.cache_clear()


@pytest.fixture(params=["local", "file", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """An empty output root of each kind, with its endpoint (None locally)."""
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        return f"s3://{bucket}/out", endpoint
    if request.param == "file":
        return (tmp_path / "out").as_uri(), None
    return str(tmp_path / "out"), None


# ---------------------------------------------------------------------------------------------
# listing


def _rel(sources: list[Source], prefix: str) -> dict[str, tuple[int, str]]:
    prefix = prefix.rstrip("/") + "/"
    assert all(s.uri.startswith(prefix) for s in sources)
    return {s.uri[len(prefix):]: (s.size, s.version) for s in sources}


def test_listing_is_the_same_locally_via_file_uri_and_on_s3(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    local = tmp_path / "arch"
    for rel, data in TREE.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)
        assert storage.write_atomic(f"s3://{s3_bucket}/arch/{rel}", data, endpoint_url=s3_endpoint)
    roots = {
        "local": (str(local), str(local)),
        "file": (local.as_uri(), str(local)),  # local sources come back as plain paths
        "s3": (f"s3://{s3_bucket}/arch", f"s3://{s3_bucket}/arch"),
        "s3/": (f"s3://{s3_bucket}/arch/", f"s3://{s3_bucket}/arch"),
    }
    cases = [
        ({}, {"cam1/a.mp4", "cam1/B.MOV", "cam2/sub/c.mkv", "cam2/d.avi"}),  # default video globs
        ({"include": ["cam2/**"], "exclude": ["*.avi"]}, {"cam2/sub/c.mkv"}),
        ({"include": ["**/a.mp4", "*.TXT"]}, {"cam1/a.mp4", "notes.txt"}),
        ({"include": ["cam1/*.mov"]}, {"cam1/B.MOV"}),  # case-insensitive
    ]
    for kwargs, expected in cases:
        listed = {}
        for kind, (uri, prefix) in roots.items():
            ep = s3_endpoint if kind.startswith("s3") else None
            sources = storage.list_sources(uri, endpoint_url=ep, **kwargs)
            assert sources == sorted(sources, key=lambda s: s.uri)
            listed[kind] = _rel(sources, prefix)
            assert set(listed[kind]) == expected, (kind, kwargs)
            for rel, (size, version) in listed[kind].items():
                assert size == len(TREE[rel])
                if kind.startswith("s3"):
                    assert version == hashlib.md5(TREE[rel]).hexdigest()  # ETag, no quotes
                else:
                    st = (local / rel).stat()
                    assert version == f"{st.st_size}-{st.st_mtime_ns}"
        assert listed["local"] == listed["file"]
        assert {r: s for r, (s, _) in listed["local"].items()} == {
            r: s for r, (s, _) in listed["s3"].items()
        }

    # a URI naming one file lists just that file, whatever the globs
    one = storage.list_sources(str(local / "notes.txt"))
    assert [(s.uri, s.size) for s in one] == [(str(local / "notes.txt"), 54)]
    one_s3 = storage.list_sources(f"s3://{s3_bucket}/arch/notes.txt", endpoint_url=s3_endpoint)
    assert [(s.uri, s.size) for s in one_s3] == [(f"s3://{s3_bucket}/arch/notes.txt", 54)]
    # a prefix with nothing under it is empty, not an error (S3 has no directories)
    assert storage.list_sources(f"s3://{s3_bucket}/nothing", endpoint_url=s3_endpoint) == []


def test_listing_follows_symlinked_folders_once_and_never_loops(tmp_path: Path) -> None:
    """A camera folder linked to another disk is listed under the link's name; links back up
    the tree, to the folder itself or to a sibling do not loop or list a file twice; a
    dangling link is skipped. The same locally and through a file:// URI."""
    from avrl_batch.scan.naming import source_name

    arch, disk2 = tmp_path / "arch", tmp_path / "disk2" / "lobby-store"
    (arch / "door").mkdir(parents=True)
    (arch / "door" / "door_20260701T080000Z.mp4").write_bytes(b"d" * 10)
    disk2.mkdir(parents=True)
    (disk2 / "lobby_20260701T083000Z.mp4").write_bytes(b"l" * 20)
    (arch / "lobby").symlink_to(disk2, target_is_directory=True)  # camera on another disk
    (disk2 / "up").symlink_to(arch, target_is_directory=True)  # back to the root: a loop
    (arch / "door" / "self").symlink_to(arch / "door", target_is_directory=True)
    (arch / "zz-door-again").symlink_to(arch / "door", target_is_directory=True)
    (arch / "gone.mp4").symlink_to(tmp_path / "no-such-file.mp4")

    expected = {"door/door_20260701T080000Z.mp4": 10, "lobby/lobby_20260701T083000Z.mp4": 20}
    for root in (str(arch), arch.as_uri()):
        sources = storage.list_sources(root)
        assert {s.uri[len(str(arch)) + 1:]: s.size for s in sources} == expected, root
        lobby = next(s for s in sources if "lobby_" in s.uri)
        assert source_name(lobby.uri).camera == "lobby"  # the link's name, not its target's
        files = storage.list_files(root, suffix=".mp4")
        assert [f.rsplit("/", 2)[-2] for f in files] == ["door", "lobby"], root


def test_listing_errors_are_one_clear_line(tmp_path: Path, s3_endpoint: str) -> None:
    with pytest.raises(StorageError, match="no such file or directory"):
        storage.list_sources(str(tmp_path / "missing"))
    with pytest.raises(StorageError, match="bucket does not exist"):
        storage.list_sources("s3://no-such-bucket-avrl/x/", endpoint_url=s3_endpoint)
    for bad in ("http://example.com/a.mp4", "gs://bucket/a.mp4", "ftp://x/y"):
        with pytest.raises(StorageError, match="unsupported URI scheme") as err:
            storage.list_sources(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(StorageError, match="without a bucket"):
        storage.parse_uri("s3:///key")


def test_file_uri_and_relative_path_parse_to_absolute_paths(tmp_path: Path) -> None:
    p = tmp_path / "a b" / "c.mp4"
    assert storage.parse_uri(p.as_uri()).path == str(p)  # percent-decoded
    assert storage.parse_uri(str(p)).path == str(p)
    assert storage.parse_uri("s3://bkt/x/y%20z.mp4").key == "x/y%20z.mp4"  # keys are opaque


# ---------------------------------------------------------------------------------------------
# reading: ranged S3 reads, identical decoding


@pytest.fixture(scope="module")
def long_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-minute H.264/AAC MP4 (64x64, 5 fps, 16 kHz noise audio): large enough that a
    30-second span is a small share of it. The moov index sits at the end, as encode_av
    (and most cameras) write it, so the reader has to seek there first."""
    from avrl_batch.media.encode import encode_av

    fps, seconds, sr, size = 5, 600, 16_000, 64
    rng = np.random.default_rng(3)

    def frames() -> Iterator[np.ndarray]:
        for i in range(fps * seconds):
            img = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
            img[:, :, 0] += np.uint8((i * 7) % 200)  # the frame index shows in the image
            img[i % size, :, 1] = 255
            yield img

    def audio() -> Iterator[np.ndarray]:
        for _ in range(seconds):
            yield (0.1 * rng.standard_normal(sr)).astype(np.float32)

    path = tmp_path_factory.mktemp("long") / "long.mp4"
    encode_av(path, frames(), fps=fps, audio=audio(), sample_rate=sr)
    return path


def _decode_span(fileobj: object, start: float, end: float) -> np.ndarray:
    """Frames with start <= pts < end, reached by seeking to the keyframe before start."""
    import av

    out = []
    with av.open(fileobj) as container:
        vs = container.streams.video[0]
        container.seek(int(start / vs.time_base), stream=vs, backward=True)
        for frame in container.decode(vs):
            if frame.time < start:
                continue
            if frame.time >= end:
                break
            out.append(frame.to_ndarray(format="rgb24"))
    return np.stack(out)  # (T, H, W, 3)


def _top_level_box_size(path: Path, box: bytes) -> int:
    with open(path, "rb") as f:
        total, pos = path.stat().st_size, 0
        while pos < total:
            f.seek(pos)
            size, kind = struct.unpack(">I4s", f.read(8))
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0]
            if kind == box:
                return size
            pos += size
    raise AssertionError(f"no {box!r} box")


def test_s3_span_read_is_ranged_and_decodes_identically(
    long_mp4: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    uri = f"s3://{s3_bucket}/archive/long.mp4"
    with open(long_mp4, "rb") as f:
        assert storage.write_atomic(uri, f, endpoint_url=s3_endpoint)
    total = long_mp4.stat().st_size
    duration, start, span = 600.0, 300.0, 30.0

    with storage.open_source(uri, endpoint_url=s3_endpoint) as src:
        from_s3 = _decode_span(src, start, start + span)
        fetched, gets = src.bytes_read, src.requests
    local = _decode_span(str(long_mp4), start, start + span)  # FFmpeg's own file reader

    assert from_s3.shape == (150, 64, 64, 3)
    assert np.array_equal(from_s3, local)  # identical arrays, S3 vs local

    share = total * span / duration
    moov = _top_level_box_size(long_mp4, b"moov")
    # header + moov index + one read-ahead that may run past the span's end
    allowance = moov + storage.READ_AHEAD_MIN + storage.READ_AHEAD_MAX
    print(
        f"\n30 s span of a {total / 1e6:.2f} MB, 600 s object: fetched {fetched / 1e6:.3f} MB"
        f" in {gets} GETs; span share {share / 1e6:.3f} MB, moov {moov / 1e3:.0f} kB;"
        f" fetched/share = {fetched / share:.2f}x, (fetched - moov)/share ="
        f" {(fetched - moov) / share:.2f}x, {100 * fetched / total:.1f}% of the object"
    )
    assert fetched <= 4 * share + allowance
    assert fetched < total / 5  # nowhere near a whole-object download


def test_open_source_counts_local_reads_and_refuses_missing(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(bytes(range(256)) * 1000)
    with storage.open_source(str(p)) as f:
        f.seek(1000)
        assert f.read(3) == bytes([1000 % 256, 1001 % 256, 1002 % 256])
        assert 0 < f.bytes_read <= 64 * 1024
    with pytest.raises(StorageError, match="no such file"):
        storage.open_source(str(tmp_path / "nope.mp4"))
    with pytest.raises(StorageError, match="is a directory"):
        storage.open_source(str(tmp_path))


def test_s3_reader_seeks_reads_and_pins_the_version(s3_endpoint: str, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/blob.bin"
    data = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    storage.write_atomic(uri, data, endpoint_url=s3_endpoint)
    with storage.open_source(uri, endpoint_url=s3_endpoint) as f:
        assert f.seekable() and f.readable()
        f.seek(-10, io.SEEK_END)
        assert f.read() == data[-10:]
        f.seek(1_000_000)
        assert f.read(5000) == data[1_000_000:1_005_000]
        assert f.read(0) == b""
        f.seek(len(data) + 5)
        assert f.read(10) == b""
        # the object is replaced while open: the next GET fails instead of mixing versions
        storage.write_atomic(uri, b"new" * 1000, endpoint_url=s3_endpoint)
        f.seek(2_000_000)
        with pytest.raises(StorageError, match="changed while it was being read"):
            f.read(10)
    with pytest.raises(StorageError, match="no such object"):
        storage.open_source(f"s3://{s3_bucket}/missing.mp4", endpoint_url=s3_endpoint)


# ---------------------------------------------------------------------------------------------
# writing: atomic, if_absent


class _DyingStream(io.BytesIO):
    """A body whose producer dies halfway: reading past the middle raises. With
    ``only_on_the_wire`` it dies only while the HTTP client is sending it (botocore first
    reads the body to checksum and sign it), so the server has begun receiving the object."""

    def __init__(self, data: bytes, *, only_on_the_wire: bool = False) -> None:
        super().__init__(data)
        self.middle = len(data) // 2
        self.only_on_the_wire = only_on_the_wire
        self.fired = 0

    def read(self, n: int | None = -1) -> bytes:
        before = self.tell()
        out = super().read(n)
        if before <= self.middle < self.tell():
            sending = any("urllib3" in f.filename for f in traceback.extract_stack())
            if sending or not self.only_on_the_wire:
                self.fired += 1
                raise RuntimeError("producer died midway")
        return out


def test_local_write_that_fails_midway_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    final = out / "part.parquet"
    # 1. the producer raises halfway through the data
    with pytest.raises(RuntimeError, match="midway"):
        storage.write_atomic(str(final), _DyingStream(b"x" * (4 << 20)))
    assert not final.exists() and os.listdir(out) == []  # temp file cleaned up too

    # 2. the rename into place fails (a crash cannot be staged in-process: make it raise);
    #    an earlier version under the name stays whole
    final.write_bytes(b"old version")
    with monkeypatch.context() as m:
        m.setattr(os, "replace", _raise_oserror)
        with pytest.raises(StorageError, match="cannot write"):
            storage.write_atomic(str(final), b"new version" * 1000)
    assert final.read_bytes() == b"old version" and os.listdir(out) == ["part.parquet"]

    # 3. a real crash (os._exit) after the data is written and fsynced, before the rename
    crashed = out / "crashed.parquet"
    code = (
        "import os, sys\n"
        "from avrl_batch import storage\n"
        "os.replace = lambda *a: os._exit(137)\n"
        "storage.write_atomic(sys.argv[1], b'y' * 100000)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(crashed)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
    )
    assert proc.returncode == 137, proc.stderr.decode()[-2000:]
    assert not crashed.exists()
    leftovers = [n for n in os.listdir(out) if n != "part.parquet"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".avrl-tmp-")  # hidden temp only
    assert storage.list_files(str(out)) == [str(final)]  # never mistaken for an output


def _raise_oserror(*args: object) -> None:
    raise OSError(5, "Input/output error (injected)")


def test_s3_write_that_fails_midway_leaves_nothing(
    s3_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, fresh_clients: None
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore would otherwise retry the upload
    uri = f"s3://{s3_bucket}/out/part.parquet"
    for only_on_the_wire in (False, True):
        body = _DyingStream(b"x" * (4 << 20), only_on_the_wire=only_on_the_wire)
        with pytest.raises((StorageError, RuntimeError), match="midway"):
            storage.write_atomic(uri, body, endpoint_url=s3_endpoint)
        assert body.fired >= 1
        assert not storage.exists(uri, endpoint_url=s3_endpoint)
    # an earlier version under the key stays whole when the overwrite dies on the wire
    storage.write_atomic(uri, b"old version", endpoint_url=s3_endpoint)
    with pytest.raises(StorageError, match="midway"):
        storage.write_atomic(
            uri, _DyingStream(b"y" * (4 << 20), only_on_the_wire=True), endpoint_url=s3_endpoint
        )
    assert storage.read_bytes(uri, endpoint_url=s3_endpoint) == b"old version"
    assert storage.list_files(f"s3://{s3_bucket}/out", endpoint_url=s3_endpoint) == [uri]


def test_if_absent_exactly_one_writer_wins(root: tuple[str, str | None]) -> None:
    base, ep = root
    # one after the other: the second learns the key exists and changes nothing
    key = storage.join(base, "seq", "obj.parquet")
    assert storage.write_atomic(key, b"first", if_absent=True, endpoint_url=ep) is True
    assert storage.write_atomic(key, b"second", if_absent=True, endpoint_url=ep) is False
    assert storage.read_bytes(key, endpoint_url=ep) == b"first"
    # without if_absent the write replaces
    assert storage.write_atomic(key, b"third", endpoint_url=ep) is True
    assert storage.read_bytes(key, endpoint_url=ep) == b"third"

    # eight writers at once, released by a barrier: exactly one wins, its content is there
    key = storage.join(base, "race", "obj.parquet")
    barrier = threading.Barrier(8)
    results: dict[int, bool] = {}

    def writer(i: int) -> None:
        barrier.wait()
        results[i] = storage.write_atomic(
            key, f"writer {i} ".encode() * 5000, if_absent=True, endpoint_url=ep
        )

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in results.items() if won]
    assert len(results) == 8 and len(winners) == 1
    assert storage.read_bytes(key, endpoint_url=ep) == f"writer {winners[0]} ".encode() * 5000
    assert storage.list_files(storage.join(base, "race"), endpoint_url=ep) == [key]


@pytest.mark.parametrize("size", [5000, storage.SMALL_PUT_BYTES + 1], ids=["small", "large"])
def test_s3_if_absent_retries_a_conditional_conflict(
    s3_endpoint: str, s3_bucket: str, fresh_clients: None, size: int
) -> None:
    """AWS answers 409 ConditionalRequestConflict while another conditional PUT to the key is
    in flight and asks the client to retry. moto never does, so a proxy in front of it answers
    the first conditional PUT of each call with a 409; the retry reaches moto. Small bodies
    (obstore) and large ones (boto3) alike."""
    from s3proxy import FaultyProxy, Rule

    first, second = b"1" * size, b"2" * size
    with FaultyProxy(s3_endpoint) as proxy:
        rule = proxy.add(Rule(lambda r: r.method == "PUT" and "if-none-match" in r.headers,
                              "conflict", times=1))
        uri = f"s3://{s3_bucket}/conflict.parquet"
        assert storage.write_atomic(uri, first, if_absent=True, endpoint_url=proxy.url)
        rule.fired = 0
        assert not storage.write_atomic(uri, second, if_absent=True, endpoint_url=proxy.url)
        puts = [r.action for r in proxy.log if r.method == "PUT"]
    assert puts == ["conflict", "forward", "conflict", "forward"]  # 409, 200; 409, 412
    assert storage.read_bytes(uri, endpoint_url=s3_endpoint) == first


def test_exists_read_list_delete_round_trip(root: tuple[str, str | None]) -> None:
    base, ep = root
    a = storage.join(base, "windows", "a.parquet")
    b = storage.join(base, "windows", "sub", "b.parquet")
    c = storage.join(base, "manifest.json")
    assert not storage.exists(a, endpoint_url=ep)
    assert storage.list_files(base, endpoint_url=ep) == []
    for uri in (a, b, c):
        assert storage.write_atomic(uri, uri.encode(), endpoint_url=ep)
    assert storage.exists(a, endpoint_url=ep)
    assert storage.read_bytes(b, endpoint_url=ep) == b.encode()
    assert storage.list_files(base, endpoint_url=ep) == sorted([a, b, c])
    assert storage.list_files(base, suffix=".parquet", endpoint_url=ep) == sorted([a, b])
    storage.delete(a, endpoint_url=ep)
    storage.delete(a, endpoint_url=ep)  # idempotent
    assert not storage.exists(a, endpoint_url=ep)
    with pytest.raises(StorageError, match="no such"):
        storage.read_bytes(a, endpoint_url=ep)


def test_pyarrow_filesystem_reads_what_we_wrote(
    root: tuple[str, str | None], monkeypatch: pytest.MonkeyPatch, fresh_clients: None
) -> None:
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    base, ep = root
    if ep:  # S3 through AWS_ENDPOINT_URL alone: boto3 and pyarrow must both honour it
        monkeypatch.setenv("AWS_ENDPOINT_URL", ep)
    tables = []
    for i in range(2):
        table = pa.table({"source": [f"s{i}"] * 3, "score": np.arange(3, dtype=np.float32) + i})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        storage.write_atomic(storage.join(base, "windows", f"part-{i}.parquet"),
                             sink.getvalue().to_pybytes())
        tables.append(table)
    fs, path = storage.filesystem(storage.join(base, "windows"))
    got = ds.dataset(path, filesystem=fs, format="parquet").to_table().sort_by("score")
    assert got.equals(pa.concat_tables(tables).sort_by("score"))
    assert len(storage.list_files(base, suffix=".parquet")) == 2


# ---------------------------------------------------------------------------------------------
# key safety and credentials

UNSAFE_PARTS = [
    "../x", "/abs", "a/../../b", "%2e%2e/x", "%2E%2e%2fx", "%252e%252e/x", "a\\..\\b",
    "a\\b", "..", ".", "", "a//b", "a/./b", "nul\x00byte", "new\nline", "%2fetc", "%00",
]


@pytest.mark.parametrize("base", ["/srv/out", "file:///srv/out", "s3://bkt/out", "s3://bkt"])
def test_join_refuses_parts_that_could_escape_the_root(base: str) -> None:
    for part in UNSAFE_PARTS:
        with pytest.raises(StorageError):
            storage.join(base, "windows", part)
    sep = "" if base.endswith("/") else "/"
    assert storage.join(base, "windows", "cam-1_2026-01-01T00:00:00Z.parquet") == (
        f"{base}{sep}windows/cam-1_2026-01-01T00:00:00Z.parquet"
    )
    assert storage.join(base, "source=ab12/part-0.parquet").endswith("source=ab12/part-0.parquet")
    assert storage.join(base, "..hidden..name").endswith("/..hidden..name")  # not a .. segment


def test_join_keeps_names_as_given_locally(tmp_path: Path) -> None:
    joined = storage.join(tmp_path.as_uri(), "a b%20c.parquet")
    assert storage.parse_uri(joined).path == str(tmp_path / "a b%20c.parquet")
    assert storage.join(str(tmp_path), "a b") == f"{tmp_path}/a b"


def test_credentials_never_appear_in_errors_or_logs(
    s3_endpoint: str,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fresh_clients: None,
) -> None:
    key_id = "AKIA" + uuid.uuid4().hex[:16].upper()
    secret = "fAkE/sEcReT+" + uuid.uuid4().hex  # moto accepts any credentials
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    def assert_clean_error(call: Callable[[], object]) -> None:
        with pytest.raises(StorageError) as err:
            call()
        text = "".join(traceback.format_exception(err.value))
        assert secret not in text and key_id not in text, text
        assert "\n" not in str(err.value)

    # 1. ordinary failing and succeeding calls, everything logged at DEBUG
    caplog.set_level(logging.DEBUG)
    for call in (
        lambda: storage.list_sources("s3://no-such-bucket-avrl/x/", endpoint_url=s3_endpoint),
        lambda: storage.read_bytes(f"s3://{s3_bucket}/missing", endpoint_url=s3_endpoint),
        lambda: storage.open_source(f"s3://{s3_bucket}/missing.mp4", endpoint_url=s3_endpoint),
        lambda: storage.write_atomic("s3://no-such-bucket-avrl/k", b"x", endpoint_url=s3_endpoint),
    ):
        assert_clean_error(call)
    storage.write_atomic(f"s3://{s3_bucket}/ok", b"x", endpoint_url=s3_endpoint)
    assert storage.read_bytes(f"s3://{s3_bucket}/ok", endpoint_url=s3_endpoint) == b"x"
    assert caplog.records, "nothing was logged: the check below would be vacuous"
    assert secret not in caplog.text and key_id not in caplog.text

    # 2. a user who pastes a credential into a URI does not see it echoed in the error
    for call in (
        lambda: storage.read_bytes(f"s3://{s3_bucket}/k-{secret}-{key_id}",
                                   endpoint_url=s3_endpoint),
        lambda: storage.open_source(f"s3://{s3_bucket}/{secret}.mp4", endpoint_url=s3_endpoint),
        lambda: storage.parse_uri(f"https://{key_id}:{secret}@example.com/x"),
        lambda: storage.join(f"s3://{s3_bucket}/{secret}", "../x"),
    ):
        assert_clean_error(call)


def test_redact_scrubs_key_ids_and_url_passwords() -> None:
    text = "at http://user:pa55@host:9000 with AKIAABCDEFGHIJKLMNOP"
    assert storage._redact(text) == "at http://***@host:9000 with ***"
