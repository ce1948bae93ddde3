"""The connections the server holds: read timeouts, a connection limit, and file descriptors to spare.

Left to itself uvicorn (0.54 here, with h11: httptools is not installed, and the server names its
protocol class instead of letting uvicorn pick) waits for a request head and body as long as a client
takes, holds as many connections as clients open, and logs every refusal. A few hundred idle sockets
then use up the open-file limit, accept() fails with EMFILE and the liveness probe goes unanswered.
Here, for each listener:

- a connection completes its request head, TLS handshake included, within ``header_timeout_s`` of
  arriving (or of its first byte after a keep-alive pause) and its body within ``body_timeout_s`` of
  the head (else 408); an idle keep-alive connection closes after ``keep_alive_s``;
- at most ``max_connections`` are held. A new one past that closes one without a request in progress:
  one that has sent nothing at all first, else the one waiting longest (in its handshake, head, body
  or keep-alive pause; ``ConnectionLimiter`` says which exactly), so a flood of idle or slow sockets
  cannot lock out a probe or a client that sends its request at once; only when every held connection
  has a request in progress is the new one refused: a fixed 503 on plain HTTP, a close on TLS (a
  handshake is what a refusal must not pay for);
- the listening socket holds at most ``max_connections + ACCEPT_BURST`` accepted sockets (past that it
  closes a connection as it accepts it), and the start-up raises the soft open-file limit and checks
  that these and the process's own files fit under it, so accept() never meets EMFILE;
- evictions, refusals, timeouts and uvicorn's per-request warnings are counted and logged as one line
  per ``LOG_INTERVAL_S`` at most, never a line per event.

TLS is terminated here (``loop.start_tls``) rather than by asyncio's server: the handshake then runs
under the connection's own timer and limit, where asyncio's server runs it for up to 60 s out of the
protocol's sight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import socket
import ssl
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from plan import contract
from runtime.settings import refusal

log = logging.getLogger(__name__)

LOG_INTERVAL_S: Final = 10.0
# Accepted sockets a listener may hold past its connection limit: the ones it accepted in one burst
# before its protocol could evict or refuse, and the ones it closed that the loop has yet to release.
ACCEPT_BURST: Final = 32
ACCEPT_BATCH: Final = ACCEPT_BURST // 4  # accepted per turn of the event loop (see Listener)
# The newest connections that have sent nothing yet are spared while older silent ones remain: a
# client's first bytes are read a turn or two of the loop after it is accepted (see ConnectionLimiter).
FRESH_SILENT: Final = 2 * ACCEPT_BATCH
# Files the process opens besides its listeners' connections: the listening sockets, model and cache
# files while loading, connections to AWS, logs, the interpreter's and libraries' own.
FILE_HEADROOM: Final = 64
METRICS_MAX_CONNECTIONS: Final = 8  # Prometheus and an operator's curl
TLS_SHUTDOWN_TIMEOUT_S: Final = 5.0  # a closing TLS connection waits this long for the client's close_notify
# After an answer to a request it did not read (a refusal, a 408), the server stops writing and reads
# what still comes for this long before it closes: closing with unread bytes would reset the
# connection, and the client could lose the answer.
LINGER_S: Final = 1.0
# uvicorn.error warnings logged once per request (an attacker's request rate would be the log's line
# rate): counted into the interval line instead.
FOLDED_WARNINGS: Final = {
    "Invalid HTTP request received.": "invalid_request",
    "Exceeded concurrency limit.": "over_concurrency_limit",
    "Unsupported upgrade request.": "unsupported_upgrade",
}
_NO_WEBSOCKETS_PREFIX: Final = "No supported WebSocket library detected"
_WAITING, _BUSY = "waiting", "busy"
_ALWAYS_WARN: Final = ("evicted", "evicted_silent", "refused", "refused_on_accept", "accept_out_of_files")


@dataclass(frozen=True)
class ConnectionLimits:
    """What one listener allows a connection: how many at once and how long each read may take."""

    max_connections: int
    header_timeout_s: float
    body_timeout_s: float
    keep_alive_s: int

    @property
    def files(self) -> int:
        """Accepted sockets the listener may hold at once (its share of the open-file limit)."""
        return self.max_connections + ACCEPT_BURST


def refusal_answer(limits: ConnectionLimits) -> bytes:
    """The 503 a plain-HTTP connection gets when every held connection has a request in progress: the
    API's error shape, written whole without reading the request."""
    message = f"server busy: all {limits.max_connections} connections have a request in progress; retry"
    payload = json.dumps({"error": message, "request_id": None}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + payload


class IntervalLog:
    """Counts events and logs them as one line per interval: the first event of an interval starts it."""

    def __init__(self, name: str, interval_s: float = LOG_INTERVAL_S) -> None:
        self.name = name
        self.interval_s = interval_s
        self.counts: Counter[str] = Counter()
        self.detail = ""
        self._flush: asyncio.TimerHandle | None = None

    def note(self, event: str, n: int = 1) -> None:
        self.counts[event] += n
        if self._flush is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to wait on: say it now
            self.flush()
            return
        self._flush = loop.call_later(self.interval_s, self.flush)

    def flush(self) -> None:
        """Log what was counted since the last line (nothing when nothing was)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if not self.counts:
            return
        counted = " ".join(f"{event}={n}" for event, n in self.counts.items())
        level = logging.WARNING if any(e in self.counts for e in _ALWAYS_WARN) else logging.INFO
        detail = f" ({self.detail})" if self.detail else ""
        log.log(level, "%s in the last %g s: %s%s", self.name, self.interval_s, counted, detail)
        self.counts.clear()


class ConnectionLimiter:
    """One listener's connections: who is held, in which order one is evicted, and the accepted sockets.

    A held connection is *silent* (not a byte received yet), *waiting* (TLS handshake, request head or
    body still arriving, or a keep-alive pause) or *busy* (its request is in and the app is answering:
    never evicted; the request deadline bounds it). Eviction takes the oldest silent connection that
    is not among the ``FRESH_SILENT`` newest (those may have bytes the loop has yet to read), else the
    one waiting longest, else the oldest silent one. So a client that sends its TLS hello or request
    at once outlives a flood of sockets that send nothing, however fast the flood comes, and a flood of
    sockets that do send is evicted oldest first while a new client's first bytes are being read.
    """

    def __init__(
        self,
        name: str,
        limits: ConnectionLimits,
        ssl_context: ssl.SSLContext | None = None,
        interval_s: float = LOG_INTERVAL_S,
    ) -> None:
        self.name = name
        self.limits = limits
        self.ssl_context = ssl_context
        self.events = IntervalLog(f"{name} connections", interval_s)
        self.refusal = refusal_answer(limits)
        self.accepted: dict[int, _AcceptedSocket] = {}  # open accepted sockets by descriptor
        self.peak = 0  # most connections held at once
        self._silent: OrderedDict[GuardedH11Protocol, None] = OrderedDict()
        self._waiting: OrderedDict[GuardedH11Protocol, None] = OrderedDict()
        self._busy: set[GuardedH11Protocol] = set()

    @property
    def sockets(self) -> int:
        """Accepted sockets not yet closed."""
        return len(self.accepted)

    @property
    def held(self) -> int:
        return len(self._silent) + len(self._waiting) + len(self._busy)

    def admit(self, conn: GuardedH11Protocol, spoke: bool) -> bool:
        """Hold ``conn``, evicting (silent first, then longest waiting) when at the limit; False: refuse it."""
        if self.held >= self.limits.max_connections:
            stale = len(self._silent) > FRESH_SILENT
            queue = self._silent if stale or not self._waiting else self._waiting
            if not queue:
                self.note("refused")
                return False
            victim, _ = queue.popitem(last=False)
            self.note("evicted" if queue is self._waiting else "evicted_silent")
            victim.evict()
        (self._waiting if spoke else self._silent)[conn] = None
        self.peak = max(self.peak, self.held)
        return True

    def spoke(self, conn: GuardedH11Protocol) -> None:
        """``conn``'s first byte arrived: it waits now with the connections that say something."""
        if conn in self._silent:
            del self._silent[conn]
            self._waiting[conn] = None

    def set_busy(self, conn: GuardedH11Protocol, busy: bool) -> None:
        """``conn`` began (True) or finished (False) answering a request."""
        if conn not in self._busy and conn not in self._waiting and conn not in self._silent:
            return  # evicted or closed meanwhile
        self.forget(conn)
        if busy:
            self._busy.add(conn)
        else:
            self._waiting[conn] = None

    def forget(self, conn: GuardedH11Protocol) -> None:
        self._silent.pop(conn, None)
        self._waiting.pop(conn, None)
        self._busy.discard(conn)

    def refuse(self, transport: asyncio.Transport) -> None:
        """Turn away a connection before reading it: the fixed 503 on plain HTTP, a close on TLS."""
        if self.ssl_context is None:
            transport.write(self.refusal)
            close_after_answer(transport, transport)
        else:
            transport.abort()

    def note(self, event: str) -> None:
        self.events.detail = f"limit {self.limits.max_connections}, peak {self.peak} held"
        self.events.note(event)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol under its listener's limiter: timed reads, eviction, TLS with a deadline.

    ``protocol_class`` binds a subclass to one limiter; uvicorn makes one instance per accepted socket.
    """

    limiter: ClassVar[ConnectionLimiter]

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.timeout_keep_alive = self.limiter.limits.keep_alive_s
        self._raw: asyncio.Transport | None = None  # the accepted socket's transport (under TLS too)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = ""
        self._phase = ""  # "", _WAITING or _BUSY
        self._early: list[bytes] | None = None  # bytes decrypted before the handshake's end reached us
        self._handshake_task: asyncio.Task[None] | None = None
        self._established = False  # uvicorn's connection_made ran
        self._closing = False

    # --- the accepted socket ------------------------------------------------------------------------

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        self._raw = transport
        info = transport.get_extra_info("socket")
        sock = self.limiter.accepted.get(info.fileno()) if info is not None else None
        if sock is not None:
            sock.owner = self
        if not self.limiter.admit(self, spoke=sock is None or sock.spoke):
            self._closing = True
            self.limiter.refuse(transport)
            return
        self._phase = _WAITING
        self._arm("head", self.limiter.limits.header_timeout_s)
        context = self.limiter.ssl_context
        if context is None:
            self._establish(transport)
        else:
            self._early = []
            self._handshake_task = self.loop.create_task(self._handshake(transport, context))

    async def _handshake(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        tls: asyncio.Transport | None
        try:
            tls = await self.loop.start_tls(
                raw,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self.limiter.limits.header_timeout_s,
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT_S,
            )
        except Exception:  # failed, timed out, or evicted: asyncio closed the socket
            tls = None
        early, self._early = self._early or [], None
        if tls is None or self._closing or tls.is_closing():
            self._drop()
            return
        self._establish(tls)
        for chunk in early:
            self.data_received(chunk)

    def _establish(self, transport: asyncio.Transport) -> None:
        self._established = True
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.limiter.forget(self)
        self._closing = True
        if self._established:
            self._established = False
            super().connection_lost(exc)

    def evict(self) -> None:
        """Close at once: the limiter gave this connection's place to a newer one."""
        self._closing = True
        self._drop()

    def _drop(self) -> None:
        self._disarm()
        self.limiter.forget(self)
        if self._raw is not None:
            self._raw.abort()

    # --- reading ------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._early is not None:  # start_tls has not returned yet
            self._early.append(data)
            return
        if self._closing or not self._established:
            return
        if self._timer is None and self.conn.their_state is h11.IDLE:
            self._arm("head", self.limiter.limits.header_timeout_s)  # a request begins after a keep-alive pause
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def _track(self) -> None:
        """Timer and phase from where h11 is: waiting for a head or a body, or the app has the request."""
        if self._closing or self.transport is None or self.transport.is_closing():
            return
        their = self.conn.their_state
        if their is h11.SEND_BODY:
            if self._timer_kind != "body":
                self._arm("body", self.limiter.limits.body_timeout_s)
            phase = _WAITING
        elif their is h11.IDLE:
            phase = _WAITING  # the head timer runs from its first byte, uvicorn's keep-alive timer until then
        else:
            self._disarm()
            phase = _BUSY
        if phase != self._phase:
            self._phase = phase
            self.limiter.set_busy(self, phase == _BUSY)

    # --- timers -------------------------------------------------------------------------------------

    def _arm(self, kind: str, delay_s: float) -> None:
        self._disarm()
        self._timer_kind = kind
        self._timer = self.loop.call_later(delay_s, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_kind = None, ""

    def _expired(self) -> None:
        kind, self._timer, self._timer_kind = self._timer_kind, None, ""
        if self._closing:
            return
        self.limiter.note(f"{kind}_timeout")
        cycle = self.cycle
        if kind == "body" and self._established and cycle is not None and not cycle.response_started:
            self._answer_408(cycle)
            return
        self._closing = True
        self._drop()

    def _answer_408(self, cycle: Any) -> None:
        """The body did not arrive in time: the app's receive() says the client left, the client gets 408."""
        cycle.disconnected = True  # the app's answer, if any, goes nowhere
        cycle.message_event.set()
        seconds = f"{self.limiter.limits.body_timeout_s:g}"
        message = {"error": f"body: not received within {seconds} s", "request_id": None, "field": "body"}
        body = json.dumps(message).encode()
        events: Iterable[h11.Event] = (
            h11.Response(
                status_code=408,
                reason=b"Request Timeout",
                headers=[
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            ),
            h11.Data(data=body),
            h11.EndOfMessage(),
        )
        with contextlib.suppress(h11.LocalProtocolError):
            for event in events:
                if (data := self.conn.send(event)) is not None:
                    self.transport.write(data)
        self._closing = True
        self._disarm()
        if self._raw is not None:
            close_after_answer(self.transport, self._raw)


def close_after_answer(transport: asyncio.Transport, raw: asyncio.Transport) -> None:
    """Close once the answer is out, without resetting it away: plain HTTP sends FIN and reads on for
    ``LINGER_S`` (the peer's close ends it sooner); TLS closes with close_notify (bounded by
    ``TLS_SHUTDOWN_TIMEOUT_S``)."""
    if not transport.can_write_eof():
        transport.close()
        return
    transport.write_eof()
    asyncio.get_running_loop().call_later(LINGER_S, raw.abort)


def protocol_class(limiter: ConnectionLimiter) -> type[GuardedH11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, bound to one listener's limiter."""
    return type(f"Guarded{limiter.name.title()}Protocol", (GuardedH11Protocol,), {"limiter": limiter})


# --- the listening socket ---------------------------------------------------------------------------


class _AcceptedSocket(socket.socket):
    """An accepted connection's socket: it tells its connection's protocol when the first byte arrives
    (under TLS too, where the protocol sees nothing until the handshake ends), and closing it frees its
    place among the listener's sockets."""

    def __init__(self, family: int, type: int, proto: int, fileno: int, limiter: ConnectionLimiter) -> None:
        super().__init__(family, type, proto, fileno)
        self._limiter: ConnectionLimiter | None = limiter
        self._fd = fileno
        self.spoke = False
        self.owner: GuardedH11Protocol | None = None
        limiter.accepted[fileno] = self

    def _heard(self) -> None:
        self.spoke = True
        if self.owner is not None and self._limiter is not None:
            self._limiter.spoke(self.owner)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if data and not self.spoke:
            self._heard()
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        n = super().recv_into(buffer, nbytes, flags)
        if n and not self.spoke:
            self._heard()
        return n

    def close(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None and limiter.accepted.get(self._fd) is self:
            del limiter.accepted[self._fd]
        self.owner = None
        super().close()


class Listener(socket.socket):
    """A listening socket that accepts no more sockets than its limiter's share of the open-file limit.

    asyncio accepts every waiting connection (up to the backlog) in one go, before the protocol of
    any of them can evict another; this accepts ``ACCEPT_BATCH`` per turn of the event loop and leaves
    the rest in the kernel's queue, so the protocols of one batch make room before the next is taken.
    Past ``limits.files`` open accepted sockets, a connection is closed as it is accepted (after the
    fixed 503 on plain HTTP): the process never asks for a descriptor it has not budgeted.
    """

    def __init__(self, family: int, limiter: ConnectionLimiter) -> None:
        # IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio sets TCP_NODELAY only on sockets
        # that say TCP (with Nagle's algorithm on, a response written in pieces waits for delayed ACKs).
        super().__init__(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.limiter = limiter
        self._batch = 0  # sockets accepted in this turn of the event loop

    def _next_turn(self) -> None:
        self._batch = 0

    def accept(self) -> tuple[socket.socket, Any]:
        if self._batch >= ACCEPT_BATCH:
            raise BlockingIOError  # asyncio stops accepting until the next turn
        if self._batch == 0:
            asyncio.get_running_loop().call_soon(self._next_turn)
        self._batch += 1
        while True:
            conn, address = super().accept()  # BlockingIOError when none is waiting: asyncio stops there
            accepted = _AcceptedSocket(conn.family, conn.type, conn.proto, conn.detach(), self.limiter)
            if self.limiter.sockets <= self.limiter.limits.files:
                return accepted, address
            self.limiter.note("refused_on_accept")
            if self.limiter.ssl_context is None:
                accepted.setblocking(False)
                with contextlib.suppress(OSError):
                    accepted.send(self.limiter.refusal)
            accepted.close()


def listen(host: str, port: int, limiter: ConnectionLimiter) -> Listener:
    """A bound ``Listener`` on ``host:port`` (uvicorn's own choices: IPv6 when the host has a colon,
    SO_REUSEADDR); asyncio starts listening on it. OSError when the address cannot be bound."""
    sock = Listener(socket.AF_INET6 if ":" in host else socket.AF_INET, limiter)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


# --- the process's open-file limit -------------------------------------------------------------------


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit allows; (soft before, soft after).

    An unprivileged process may go up to its hard limit. Where the hard limit is unlimited (macOS),
    the kernel still caps it (kern.maxfilesperproc): a few sizes are tried, largest first.
    """
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if before == resource.RLIM_INFINITY:
        return before, before
    targets = [hard] if hard != resource.RLIM_INFINITY else [1 << 20, 1 << 16, 10240]
    for target in targets:
        if target <= before:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return before, target
    return before, before


def open_file_count() -> int:
    """Descriptors this process has open now (0 where the system does not list them)."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return max(0, len(os.listdir(directory)) - 1)  # less the one the listing itself opened
    return 0


def ensure_file_budget(api: ConnectionLimits, others: Iterable[ConnectionLimits] = ()) -> str:
    """Raise the open-file limit, then check that every listener's sockets and the process's own files
    fit under it; SettingsError (one line, naming the max-connections setting) when they cannot.

    Returns a line for the log: the limit and what is reserved out of it.
    """
    before, soft = raise_open_file_limit()
    reserved = open_file_count() + FILE_HEADROOM + ACCEPT_BURST + sum(o.files for o in others)
    most = soft - reserved
    if api.max_connections > most:
        why = (
            f"this process may open {soft} files (RLIMIT_NOFILE, raised as far as allowed) and keeps {reserved} "
            f"of them for its own files, accept bursts and the metrics listener"
        )
        allowed = f"an integer from 1 to {most}" if most >= 1 else "none under this limit: raise the open-file limit"
        raise refusal(contract.ENV_MAX_CONNECTIONS, api.max_connections, allowed, why)
    raised = f" (raised from {before})" if soft != before else ""
    return f"open-file limit {soft}{raised}: {api.files} for connections, {reserved} reserved"


# --- logging ----------------------------------------------------------------------------------------


class FoldedWarnings(logging.Filter):
    """uvicorn's per-request warnings (an invalid request, an unsupported upgrade), counted into an
    interval line instead of logged one by one."""

    def __init__(self, events: IntervalLog) -> None:
        super().__init__()
        self.events = events

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        event = FOLDED_WARNINGS.get(message)
        if event is None and message.startswith(_NO_WEBSOCKETS_PREFIX):
            return False  # follows "Unsupported upgrade request.", already counted
        if event is None:
            return True
        self.events.note(event)
        return False


def accept_error_handler(events: IntervalLog) -> Any:
    """A loop exception handler that counts asyncio's 'out of system resource' accept errors (one per
    retry, with a traceback each) instead of logging them; everything else goes to the default."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == "socket.accept() out of system resource":
            events.note("accept_out_of_files")
            return
        loop.default_exception_handler(context)

    return handle


def uvicorn_config(
    app: Any, limiter: ConnectionLimiter, *, host: str, port: int, log_level: str, lifespan: bool
) -> uvicorn.Config:
    """uvicorn's config for one listener: its guarded h11 protocol (named, so uvicorn picks no other) on
    asyncio's own loop (never uvloop, whose sockets the guard cannot see), no
    TLS of its own (the protocol terminates it), no WebSockets (no library in the images: an upgrade
    request is answered as plain HTTP), no access log and no Server header.

    limit_concurrency is the listener's file share plus one: uvicorn answers 503 (and logs a line) once
    its connections or tasks reach it, and its count includes connections the limiter has evicted but
    the loop has yet to close, a few per turn of the loop under a flood. At max_connections it would
    refuse a probe while the limiter makes room by eviction; above the accepted sockets the Listener
    allows, it is a backstop that a connection count gone wrong cannot pass.
    """
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(limiter),
        loop="asyncio",  # the guard reads Python sockets (_AcceptedSocket): uvloop, if installed, would bypass it
        ws="none",
        lifespan="auto" if lifespan else "off",
        log_level=log_level,
        access_log=False,
        server_header=False,
        limit_concurrency=limiter.limits.files + 1,
        timeout_keep_alive=limiter.limits.keep_alive_s,
    )
