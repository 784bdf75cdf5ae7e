"""Run decoding where a crash cannot take the pipeline down, under a time limit.

FFmpeg is C: a hostile or broken recording can make it abort, segfault or spin forever.
Inside a Ray task that would kill (or wedge) the worker, and Ray Data retries a task whose
worker died without limit, so one poison file could stall a scan forever. Here every probe
and every segment decode runs in a *decoder process*: a plain child of the Ray worker,
started once per worker and reused across tasks (the start-up cost, about a second of
imports, is paid once), restarted after it dies. The parent waits on it with a time limit:

* the child dies (signal, ``os._exit``) -> :class:`DecoderCrashed`;
* the child sends nothing for ``timeout_s`` seconds -> it is killed -> :class:`DecoderTimeout`,
  or :class:`StorageStalled` when at least half of that silence was spent waiting for storage
  reads (the child reports the start and end of each, ``storage.observe_reads``): a decoder
  timeout is the file's fault only when its bytes were there to decode.

Each is retried once in a fresh child (``attempts=2``), because a worker can die for
reasons of its own (memory pressure, a node going away); a source that fails twice is
quarantined as an error row and the scan goes on.

The child is a ``python -c`` subprocess talking over a socketpair with
``multiprocessing.connection.Connection`` framing (pickles). It is not a
``multiprocessing.Process``: spawn/forkserver re-import the parent's ``__main__``, which in
a Ray worker is Ray's own worker script. The child exits when its parent goes away (EOF
on the socket while idle; a watchdog thread while busy).

Nothing here knows what a job does: ``run_isolated`` / ``stream_isolated`` run any picklable
module-level function. The scan's two jobs sit beside the code they wrap:
``plan.probe_source_isolated`` and ``decode.decode_segment_isolated``.

Tests inject faults by handing a worker a :class:`DecoderProcess` whose jobs misbehave on
marked sources (tests/badmedia.py); the module itself runs real jobs only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from avrl_batch.media.errors import MediaError

DEFAULT_TIMEOUT_S = 120.0  # longest silence from the decoder: one window, or one probe
DEFAULT_ATTEMPTS = 2  # a source that kills or wedges the decoder twice is quarantined
STARTUP_TIMEOUT_S = 120.0  # interpreter start + imports, on a loaded machine


class DecoderCrashed(MediaError):
    """The decoder process died while reading this source (FFmpeg crash, out of memory)."""


class DecoderTimeout(MediaError):
    """The decoder process made no progress on this source within the time limit."""


class StorageStalled(MediaError):
    """The decoder made no progress because reading the source from storage stalled: not a
    property of the recording (plan.TRANSIENT_ERRORS), so it is retried on the next run."""


@dataclass(frozen=True)
class Isolation:
    """How decoding is isolated: the time limit and how many tries a source gets."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    attempts: int = DEFAULT_ATTEMPTS

    def __post_init__(self) -> None:
        from avrl_batch.errors import ConfigError

        if not self.timeout_s > 0:
            raise ConfigError(f"--decode-timeout must be positive, got {self.timeout_s}")
        if self.attempts < 1:
            raise ConfigError(f"decode attempts must be at least 1, got {self.attempts}")


class _Died(Exception):
    """Internal: the child died or was killed; carries the typed error to raise if final."""

    def __init__(self, kind: type[MediaError], reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _signal_name(code: int | None) -> str:
    if code is None:
        return "unknown status"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def _silence(timeout_s: float, storage_s: float) -> _Died:
    """The watchdog's verdict on a child silent for ``timeout_s``, ``storage_s`` of which
    went to storage reads: the file's fault only when decoding, not waiting, took most."""
    if storage_s >= timeout_s / 2:
        return _Died(
            StorageStalled,
            f"reading the source from storage stalled ({storage_s:.0f} s of a "
            f"{timeout_s:g} s silence) and the decoder was stopped",
        )
    return _Died(
        DecoderTimeout, f"the decoder made no progress for {timeout_s:g} s and was stopped"
    )


class DecoderProcess:
    """One long-lived decoder child. ``call``/``stream`` run a picklable module-level
    function there; a crash or a silence longer than ``timeout_s`` raises ``_Died`` and
    leaves the object ready to start a fresh child on the next call."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self.starts = 0  # children started (the first, and one per crash or timeout)

    def _start(self) -> None:
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        # the child must import what the parent can (a Ray runtime_env's working_dir, tests)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from avrl_batch.scan.isolate import _child_main; "
                "_child_main(int(sys.argv[1]))",
                str(child_sock.fileno()),
            ],
            pass_fds=(child_sock.fileno(),),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        child_sock.close()
        self._conn = Connection(parent_sock.detach())
        self.starts += 1
        # wait for the child to have imported PyAV & co., so that the time limit of the
        # first job measures decoding, not interpreter start-up on a busy machine
        try:
            ok = self._conn.poll(STARTUP_TIMEOUT_S) and self._conn.recv()[0] == "ready"
        except (EOFError, OSError):
            ok = False
        if not ok:
            code = self._kill()
            raise _Died(
                DecoderCrashed, f"the decoder process did not start ({_signal_name(code)})"
            )

    def _kill(self) -> int | None:
        """Kill the child (if alive) and reap it; its exit status."""
        code = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            try:
                code = self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - unkillable: give up on it
                code = None
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None
        return code

    def close(self) -> None:
        with self._lock:
            self._kill()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _recv(self, timeout_s: float) -> tuple[str, Any]:
        """The child's next message, read reports ("io") aside: they are not progress, but
        they say how much of a silence went to waiting for storage."""
        assert self._conn is not None and self._proc is not None
        deadline = time.monotonic() + timeout_s
        reading_since: float | None = None  # a storage read is in flight since then
        waited = 0.0  # seconds of this silence spent in storage reads that ended
        while True:
            try:
                ready = self._conn.poll(max(0.0, deadline - time.monotonic()))
            except (OSError, EOFError):
                ready = True  # the socket broke: recv below reports the death
            if not ready:
                if reading_since is not None:
                    waited += time.monotonic() - reading_since
                self._kill()
                raise _silence(timeout_s, waited)
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                code = self._kill()
                raise _Died(
                    DecoderCrashed, f"the decoder process died ({_signal_name(code)})"
                ) from None
            if msg[0] != "io":
                return msg
            if msg[1] == "start":
                reading_since = time.monotonic()
            elif reading_since is not None:
                waited += time.monotonic() - reading_since
                reading_since = None

    def _send(self, job: tuple[Any, ...]) -> None:
        if self._proc is None or self._proc.poll() is not None:
            self._kill()
            self._start()
        assert self._conn is not None
        try:
            self._conn.send(job)
        except (OSError, EOFError):
            code = self._kill()
            raise _Died(
                DecoderCrashed, f"the decoder process died ({_signal_name(code)})"
            ) from None

    def call(
        self, fn: Callable[..., Any], args: tuple, kwargs: dict, *, source: str, stage: str,
        timeout_s: float,
    ) -> Any:
        """``fn(*args, **kwargs)`` in the child; its exception is re-raised here."""
        with self._lock:
            self._send(("call", fn, args, kwargs, source, stage))
            kind, value = self._recv(timeout_s)
            if kind == "raise":
                raise value
            return value

    def stream(
        self, fn: Callable[..., Any], args: tuple, kwargs: dict, *, source: str, stage: str,
        timeout_s: float,
    ) -> Iterator[Any]:
        """Items of the generator ``fn(*args, **kwargs)`` run in the child, one message each;
        ``timeout_s`` bounds the wait for every next item."""
        with self._lock:
            self._send(("stream", fn, args, kwargs, source, stage))
            finished = False
            try:
                while True:
                    kind, value = self._recv(timeout_s)
                    if kind == "item":
                        yield value
                    elif kind == "end":
                        finished = True
                        return
                    else:  # "raise"
                        finished = True
                        raise value
            finally:
                if not finished:
                    # the consumer stopped early (or we died): the child may still be
                    # sending this stream, so it cannot serve the next job
                    self._kill()


# One decoder child per process that decodes (a Ray worker runs one task at a time and keeps
# its child across tasks); created on first use, so importing this module starts nothing.
_DECODER: DecoderProcess | None = None


def decoder() -> DecoderProcess:
    global _DECODER
    if _DECODER is None:
        _DECODER = DecoderProcess()
    return _DECODER


def run_isolated(
    fn: Callable[..., Any],
    *args: Any,
    source: str,
    stage: str,
    isolation: Isolation = Isolation(),
    proc: DecoderProcess | None = None,
    **kwargs: Any,
) -> Any:
    """``fn(*args, **kwargs)`` in the decoder process; after ``isolation.attempts`` crashes
    or timeouts raises DecoderCrashed / DecoderTimeout naming ``source``."""
    proc = proc or decoder()
    last: _Died | None = None
    for _ in range(isolation.attempts):
        try:
            return proc.call(fn, args, kwargs, source=source, stage=stage,
                             timeout_s=isolation.timeout_s)
        except _Died as died:
            last = died
    assert last is not None
    raise _final(last, source, isolation.attempts)


def stream_isolated(
    fn: Callable[..., Iterator[Any]],
    *args: Any,
    source: str,
    stage: str,
    isolation: Isolation = Isolation(),
    item_id: Callable[[Any], Any] | None = None,
    proc: DecoderProcess | None = None,
    **kwargs: Any,
) -> Iterator[Any]:
    """Items of the generator ``fn(*args, **kwargs)`` run in the decoder process.

    After a crash or timeout the generator runs again in a fresh child; items whose
    ``item_id`` was already yielded are skipped (decoding is deterministic), so the consumer
    sees each item once. After ``isolation.attempts`` failures raises DecoderCrashed /
    DecoderTimeout naming ``source``.
    """
    proc = proc or decoder()
    seen: set[Any] = set()
    last: _Died | None = None
    for _ in range(isolation.attempts):
        try:
            for item in proc.stream(fn, args, kwargs, source=source, stage=stage,
                                    timeout_s=isolation.timeout_s):
                ident = item_id(item) if item_id is not None else None
                if ident is not None:
                    if ident in seen:
                        continue
                    seen.add(ident)
                yield item
            return
        except _Died as died:
            last = died
    assert last is not None
    raise _final(last, source, isolation.attempts)


def _final(died: _Died, source: str, attempts: int) -> MediaError:
    tries = "once" if attempts == 1 else f"on {attempts} attempts"
    if died.kind is StorageStalled:
        return died.kind(
            source, f"{died.reason} {tries}; storage, not the file: it is retried on the next run"
        )
    return died.kind(
        source,
        f"{died.reason} {tries}; the file is quarantined (an error row): check or re-encode "
        "it, then delete its error row to rescan it",
    )


# ---------------------------------------------------------------------------------------------
# the child


def _watch_parent(parent: int) -> None:
    # a busy child never reads its socket, so it would not notice its parent dying
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


def _send_exception(conn: Connection, exc: BaseException, source: str) -> None:
    try:
        conn.send(("raise", exc))
    except Exception:  # noqa: BLE001 - an exception that does not pickle
        from avrl_batch.media.errors import DecodeFailed

        conn.send(("raise", DecodeFailed(source, f"{type(exc).__name__}: {exc}")))


def _child_main(fd: int) -> None:
    """The decoder process: run jobs from the parent until it goes away."""
    conn = Connection(fd)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    import av  # noqa: F401

    import avrl_batch.media  # noqa: F401 - imported before "ready": see DecoderProcess._start
    from avrl_batch import storage

    conn.send(("ready", os.getpid()))
    while True:
        try:
            kind, fn, args, kwargs, source, stage = conn.recv()
        except (EOFError, OSError):
            return
        # storage reads are reported to the parent, whose watchdog tells a stalled read
        # from a wedged decoder (DecoderProcess._recv)
        try:
            with storage.observe_reads(lambda event: conn.send(("io", event))):
                _run_job(conn, kind, fn, args, kwargs)
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return  # the parent went away mid-job
        except Exception as exc:  # noqa: BLE001 - the parent decides what an exception means
            _send_exception(conn, exc, source)


def _run_job(
    conn: Connection, kind: str, fn: Callable[..., Any], args: tuple, kwargs: dict
) -> None:
    """One job: a call's result, or a stream's items and its end, sent to the parent."""
    if kind == "stream":
        for item in fn(*args, **kwargs):
            conn.send(("item", item))
        conn.send(("end", None))
    else:
        conn.send(("result", fn(*args, **kwargs)))
