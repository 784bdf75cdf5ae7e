"""What reaches the terminal from Ray's C++ core worker inside the ``avrl`` process.

Ray's core worker writes its ERROR lines straight to file descriptor 2, where no Python
logging setting reaches them. One of them is not something a user can act on: every Ray
Data actor-pool map (our inference actors) receives its transform as an ObjectRef that the
dataset holds until it finishes, and Ray logs, for each such actor, that an actor whose
constructor arguments live in the object store may fail to restart
(ray-project/ray#53727). The only way to silence it in Ray is ``max_restarts=0``, which
would lose the restart of an inference actor on a dying node. So the CLI routes fd 2
through a pipe whose reader drops exactly that line and passes every other byte on
unchanged; Python's own ``sys.stderr`` (progress bars, warnings, errors) keeps writing to
the terminal directly, so nothing of ours is delayed or reordered.

This is console policy, so it lives with the commands: library callers see Ray's output as
Ray writes it.
"""

from __future__ import annotations

import atexit
import io
import os
import re
import select
import sys
import threading

# One log line of Ray's core worker that says nothing a user of a scan can act on.
BENIGN_RAY_LINE = re.compile(
    rb"core_worker\.cc:\d+: Actor with class name: 'MapWorker\(.*' and ID: '[0-9a-f]+' has "
    rb"constructor arguments in the object store and max_restarts > 0\."
)
# A partial line (no newline yet) is passed on after this long without more bytes, so a
# prompt or a progress line written by C code is not held back.
_PARTIAL_FLUSH_S = 0.2


class _Fd2Filter:
    def __init__(self) -> None:
        sys.stderr.flush()
        self.terminal = os.dup(2)  # where fd 2 pointed: the user's terminal or log file
        read_end, self.write_end = os.pipe()
        self.read_end = read_end
        os.dup2(self.write_end, 2)
        # Python's stderr writes to the terminal itself, not through the pipe
        sys.stderr = io.TextIOWrapper(
            io.FileIO(os.dup(self.terminal), "wb"),
            encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
            errors="backslashreplace",
            line_buffering=True,
        )
        self.thread = threading.Thread(target=self._pump, name="avrl-stderr", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        pending = b""
        while True:
            ready, _, _ = select.select([self.read_end], [], [], _PARTIAL_FLUSH_S)
            if not ready:
                if pending:
                    self._write(pending)
                    pending = b""
                continue
            chunk = os.read(self.read_end, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = [line for line in lines if not BENIGN_RAY_LINE.search(line)]
            if kept:
                self._write(b"\n".join(kept) + b"\n")
        if pending:
            self._write(pending)
        os.close(self.read_end)

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.terminal, data)
        except OSError:  # the terminal went away: nothing left to show it on
            pass

    def close(self) -> None:
        """fd 2 points at the terminal again; what was in the pipe is passed on first."""
        sys.stderr.flush()
        os.dup2(self.terminal, 2)
        os.close(self.write_end)
        self.thread.join(timeout=2.0)


_installed: list[_Fd2Filter] = []  # one per process: fd 2 is process-wide


def drop_benign_ray_lines() -> None:
    """Route fd 2 through the filter for the rest of this process. Idempotent."""
    if _installed:
        return
    try:
        if sys.stderr.fileno() != 2:
            return  # stderr was redirected inside Python (a test's capture): leave it alone
    except (AttributeError, OSError, io.UnsupportedOperation):
        return  # stderr is not a file at all
    fd2 = _Fd2Filter()
    _installed.append(fd2)
    atexit.register(fd2.close)
