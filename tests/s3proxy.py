"""A faulty HTTP proxy in front of the moto S3 server: real sockets, loopback only.

Clients talk to ``proxy.url`` as their S3 endpoint; each request is forwarded to moto,
unless a rule says otherwise. A rule matches requests (``Rule.match``) and does one of:

* ``"stall"``: answer nothing, hold the connection until the client gives up;
* ``"stall-body"``: send the status, the headers and half of the body, then hold;
* ``"reset"``: close the connection with a TCP reset, no answer;
* ``"throttle"``: answer ``503 SlowDown`` without asking moto;
* ``"conflict"``: answer ``409 ConditionalRequestConflict`` without asking moto (what AWS says
  to a conditional PUT while another one to the key is in flight; moto never does);
* ``"delay"``: wait ``Rule.delay_s`` before forwarding.

Rules see every request, PUTs included (the proxy answers ``Expect: 100-continue`` itself).

A held connection is let go after ``max_hold_s`` or at ``close()``, whichever is first, so
nothing here can outlive its test. Every request is logged (method, path, headers,
the rule that fired) for the tests to check what the client sent.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

SLOW_DOWN = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
    b"<Message>Please reduce your request rate.</Message></Error>"
)
CONFLICT = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ConditionalRequestConflict</Code>"
    b"<Message>A conflicting operation occurred. Please retry.</Message></Error>"
)


@dataclass
class Request:
    method: str
    path: str  # "/bucket/key", percent-decoded, without the query
    headers: dict[str, str]  # lower-case names
    action: str = "forward"
    query: str = ""  # the query string, percent-decoded (a listing's prefix=...)

    @property
    def ranged_get(self) -> bool:
        return self.method == "GET" and "range" in self.headers

    @property
    def range_start(self) -> int:
        return int(self.headers.get("range", "bytes=0-").split("=")[1].split("-")[0])


@dataclass
class Rule:
    """``action`` on the requests ``match`` accepts: the first ``skip`` of them pass, then at
    most ``times`` (None: every one) get the action."""

    match: Callable[[Request], bool]
    action: str  # stall | stall-body | reset | throttle | conflict | delay
    times: int | None = None
    skip: int = 0
    delay_s: float = 0.0
    seen: int = 0
    fired: int = 0

    def applies(self, req: Request) -> bool:
        if not self.match(req):
            return False
        self.seen += 1
        if self.seen <= self.skip or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        return True


def ranged_get_of(key: str) -> Callable[[Request], bool]:
    """Matches the ranged GETs of object ``key`` (any bucket)."""
    return lambda req: req.ranged_get and req.path.endswith("/" + key)


@dataclass
class FaultyProxy:
    upstream: str  # the moto endpoint, http://127.0.0.1:PORT
    max_hold_s: float = 30.0
    rules: list[Rule] = field(default_factory=list)
    log: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        up = urlsplit(self.upstream)
        assert up.hostname == "127.0.0.1", "the proxy forwards to loopback only"
        self._up = (up.hostname, up.port or 80)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks: set[socket.socket] = set()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)  # accept() wakes up to see close()
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def __enter__(self) -> FaultyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        with self._lock:
            for s in list(self._socks):
                _close(s)
        self._accepter.join(timeout=5)

    # -----------------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _track(self, s: socket.socket) -> socket.socket:
        with self._lock:
            self._socks.add(s)
        return s

    def _action(self, req: Request) -> Rule | None:
        with self._lock:
            rule = next((r for r in self.rules if r.applies(req)), None)
            req.action = rule.action if rule else "forward"
            self.log.append(req)
            return rule

    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        client.settimeout(self.max_hold_s)
        upstream: socket.socket | None = None
        reader = _Reader(client)
        try:
            while not self._stop.is_set():
                head = reader.head()
                if head is None:
                    return
                req = _request(head)
                if req.headers.get("expect", "").lower() == "100-continue":
                    # botocore sends a PUT's body only after "100 Continue": answer it here
                    # and forward without the header, so moto answers once, with the result
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = _without_header(head, "expect")
                raw = head + reader.body(_headers(head), req.method, request=True)
                rule = self._action(req)
                action = rule.action if rule else "forward"
                if action == "reset":
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if action == "stall":
                    self._hold(client)
                    return
                if action in ("throttle", "conflict"):
                    status, body = ((b"503 Slow Down", SLOW_DOWN) if action == "throttle"
                                    else (b"409 Conflict", CONFLICT))
                    client.sendall(
                        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/xml\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                    )
                    continue
                if action == "delay":
                    self._stop.wait(rule.delay_s if rule else 0.0)
                if upstream is None:
                    upstream = self._track(socket.create_connection(self._up, timeout=30))
                upstream.sendall(raw)
                up_reader = _Reader(upstream)
                resp_head = up_reader.head()
                if resp_head is None:
                    return
                body = up_reader.body(_headers(resp_head), req.method, request=False)
                if action == "stall-body":
                    client.sendall(resp_head + body[: len(body) // 2])
                    self._hold(client)
                    return
                client.sendall(resp_head + body)
                if _headers(resp_head).get("connection", "").lower() == "close":
                    return
        except OSError:
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    _close(s)
                    with self._lock:
                        self._socks.discard(s)

    def _hold(self, client: socket.socket) -> None:
        """Keep the connection open, sending nothing, until the client hangs up, the
        proxy closes or ``max_hold_s`` passes."""
        until = time.monotonic() + self.max_hold_s
        while not self._stop.is_set() and time.monotonic() < until:
            ready, _, _ = select.select([client], [], [], 0.1)
            if ready:
                try:
                    if not client.recv(65536):
                        return  # the client gave up
                except OSError:
                    return


def _close(s: socket.socket) -> None:
    try:
        s.close()
    except OSError:
        pass


class _Reader:
    """HTTP/1.1 framing over a socket: a message head, then its body."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def head(self) -> bytes | None:
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                return None
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n"

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise OSError("connection closed mid-body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._more():
                raise OSError("connection closed mid-chunk")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def body(self, headers: dict[str, str], method: str, *, request: bool) -> bytes:
        status = 0 if request else int(headers.get(":status", "200"))
        if (not request and (method == "HEAD" or status in (204, 304) or status < 200)):
            return b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            out = b""
            while True:
                line = self._line()
                out += line
                size = int(line.split(b";")[0], 16)
                out += self._exactly(size + 2)
                if size == 0:
                    return out
        if "content-length" in headers:
            return self._exactly(int(headers["content-length"]))
        if request:
            return b""
        while self._more():  # no length: the body runs to the end of the connection
            pass
        out, self.buf = self.buf, b""
        return out


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")
    out = {}
    first = lines[0].split(" ")
    if first[0].startswith("HTTP/"):
        out[":status"] = first[1]
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            out[name.strip().lower()] = value.strip()
    return out


def _without_header(head: bytes, name: str) -> bytes:
    lines = head.split(b"\r\n")
    keep = [ln for ln in lines if ln.split(b":", 1)[0].strip().lower() != name.encode()]
    return b"\r\n".join(keep)


def _request(head: bytes) -> Request:
    method, target, _ = head.decode("latin-1").split("\r\n", 1)[0].split(" ", 2)
    parts = urlsplit(target)
    return Request(method, unquote(parts.path), _headers(head), query=unquote(parts.query))
