"""The asyncio shell around the pure decisions: client and app connections, streaming, timers.

One `ClientConnection` per client socket parses requests with httptools and drives one request
(an `Exchange`) at a time; pipelined requests wait in a queue. Each exchange borrows a
`BackendConnection` from a per-endpoint pool (or opens one), writes the request head, streams the
body both ways with flow control (a slow reader pauses the other side), and returns the app
connection to the pool when the response ends cleanly.

With the compiled fast path loaded, a worker runs the classes `compiled_classes` builds: the same
classes on C cores (router/fastconn.c) that take a plain request and its response whole and call
the methods here for everything else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import httptools

from router.balancer import Balancer
from router.config import RouterConfig
from router.errors import ERRORS, error_response
from router.fastpath import FastPath, ResponseParts
from router.fastpath import load as load_fast_path
from router.headers import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    BadRequest,
    Headers,
    RequestInfo,
    ResponsePlan,
    inspect_request,
    new_request_id,
    request_head,
    response_head,
)
from router.metrics import _BUCKET_BASE, BUCKETS, FIELDS, Recorder
from router.routing import Forward, Refuse, RouteTable
from router.table import AppRoute, Endpoint

log = logging.getLogger("router")

# Reasons a client connection's reading is paused; reading resumes when none is left.
PAUSE_PIPELINE = 1  # a request is queued behind the current one
PAUSE_BUFFER = 2  # request body is buffered while the app connection is opened
PAUSE_BACKEND = 4  # the app reads the request body slower than the client sends it
PAUSE_DONE = 8  # the connection will close after the current response

BUFFER_LIMIT = 256 * 1024
POOL_LIMIT = 256  # idle app connections kept per endpoint
CONNECT_ATTEMPTS = 3
DRAIN_GRACE = 1.0  # seconds an idle connection may still send one request when draining
INFINITY = float("inf")


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing; the reason is on the connection."""


class Worker:
    """What one router worker process shares between its connections."""

    def __init__(self, config: RouterConfig, table: RouteTable, recorder: Recorder | None = None) -> None:
        self.config = config
        self.table = table
        # The compiled fast path takes the plain requests and responses whole; None keeps every
        # message on the general path (httptools and router/headers.py).
        self.fast: FastPath | None = load_fast_path() if config.fast_path else None
        # With it, connections and exchanges are the classes built on its compiled cores.
        self.client_class, self.backend_class, self.exchange_class = (
            compiled_classes(self.fast) if self.fast is not None else (ClientConnection, BackendConnection, Exchange)
        )
        self.recorder = recorder or Recorder(log_maxlen=config.log_stream_maxlen, formatter=format_access_line,
                                             pack_lines=self.fast.xadd_batch if self.fast else None)
        self.balancer = Balancer(config.set_aside)
        self.pool: dict[str, list[BackendConnection]] = {}
        self.clients: set[ClientConnection] = set()
        self.draining = False
        self.via = config.via.encode("ascii")

    def protocol_factory(self, proto: str, port: int) -> Callable[[], ClientConnection]:
        proto_b, port_b = proto.encode("ascii"), str(port).encode("ascii")
        client_class = self.client_class
        return lambda: client_class(self, proto_b, port_b)

    def drain(self) -> None:
        """Stop taking new requests on open connections: idle ones close now, busy ones after."""
        self.draining = True
        for client in list(self.clients):
            client.drain()
        for conns in self.pool.values():
            for conn in conns:
                conn.close()
        self.pool.clear()

    def take_idle(self, endpoint: Endpoint) -> BackendConnection | None:
        conns = self.pool.get(endpoint.key)
        while conns:
            conn = conns.pop()
            if not conn.closed:
                return conn
        return None

    def give_back(self, conn: BackendConnection) -> None:
        conns = self.pool.setdefault(conn.endpoint.key, [])
        if self.draining or len(conns) >= POOL_LIMIT:
            conn.close()
        else:
            conn.idle = True
            conns.append(conn)

    def forget(self, conn: BackendConnection) -> None:
        conns = self.pool.get(conn.endpoint.key)
        if conns and conn in conns:
            conns.remove(conn)


class Exchange:
    """One request and its response."""

    __slots__ = (
        "app",
        "attempts",
        "backend",
        "body",
        "body_done",
        "buffered",
        "bytes_in",
        "bytes_out",
        "connecting",
        "counted",
        "endpoint",
        "error_code",
        "head",
        "head_request",
        "http11",
        "info",
        "keep_alive",
        "last_activity",
        "method",
        "plan",
        "recorded",
        "request_id",
        "reused",
        "start",
        "start_wall",
        "status",
        "target",
        "tried",
    )

    def __init__(self, method: bytes, target: bytes, info: RequestInfo, http11: bool, keep_alive: bool,
                 request_id: str | None = None, start_wall: float | None = None) -> None:
        self.method = method
        self.target = target
        self.info = info
        self.http11 = http11
        self.keep_alive = keep_alive
        self.head_request = method == b"HEAD"
        self.request_id = request_id or info.request_id or new_request_id()
        self.start = time.monotonic()
        self.start_wall = start_wall or time.time()
        self.head = b""
        self.app: str | None = None
        self.body: list[bytes] = []
        self.buffered = 0
        self.body_done = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.backend: BackendConnection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.endpoint: Endpoint | None = None
        self.tried: set[str] = set()
        self.attempts = 0
        self.counted = False  # counted as outstanding on `endpoint` by the balancer
        self.reused = False
        self.plan: ResponsePlan | None = None
        self.status = 0
        self.error_code = ""
        self.last_activity = 0.0
        self.recorded = False


# How responses the fast path took are framed: a Content-Length body, passed through.
FAST_KEEP_ALIVE = ResponsePlan(b"", LENGTH, LENGTH, True)
FAST_CLOSE = ResponsePlan(b"", LENGTH, LENGTH, False)


# An access-log line travels to the flush as a tuple of plain values: formatting waits until
# then, and such a tuple holds nothing the garbage collector has to walk.
AccessFields = tuple[str, bytes, bytes, str | None, str, str, str, float, int, int, bytes]


def format_access_line(fields: AccessFields) -> str:
    """Format an access-log line in Heroku's router style (key=value)."""
    code, method, target, host, request_id, client_ip, endpoint, elapsed, status, size, proto = fields
    at = f"error code={code}" if code else "info"
    return (
        f'at={at} method={method.decode("latin-1")} path="{target.decode("latin-1")}" '
        f'host={host} request_id={request_id} fwd="{client_ip}" endpoint={endpoint} '
        f"service={elapsed:.0f}ms status={status} bytes={size} protocol={proto.decode('latin-1')}"
    )


class ClientConnection(asyncio.Protocol):
    """One client socket: parse requests, route them, relay responses."""

    def __init__(self, worker: Worker, proto: bytes, port: bytes) -> None:
        self.worker = worker
        self.config = worker.config
        self.proto = proto
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = "-"
        self.url = b""
        self.headers: Headers = []
        self.header_bytes = 0
        self.parsing: Exchange | None = None
        self.current: Exchange | None = None
        self.pending: deque[Exchange] = deque()
        self.paused = 0
        self.refusal: tuple[int, str, str] | None = None
        self.tunnel: BackendConnection | None = None
        self.upgrading = False
        self.closing = False
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = INFINITY  # when `timer` fires
        self.deadline = 0.0
        self.on_deadline: Callable[[], None] | None = None
        self.batch: list[bytes] | None = None  # writes gathered while an app chunk is parsed
        self.loop = asyncio.get_event_loop()
        self.max_header_bytes = worker.config.max_header_bytes
        self.max_headers = worker.config.max_headers
        self.in_message = False  # httptools is inside a message: the fast path must wait
        self.fast = worker.fast
        self.fast_ctx: tuple[object, ...] = ()
        self.first_byte_timeout = worker.config.first_byte_timeout
        self.idle_timeout = worker.config.idle_timeout

    # --- connection events -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = str(peer[0])
        config = self.config
        self.fast_ctx = (self.client_ip.encode("ascii"), self.proto, self.port, self.worker.via,
                         config.max_url_bytes, config.max_header_bytes, config.max_headers)
        self.worker.clients.add(self)
        self._arm(self.config.idle_timeout, self._idle_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.worker.clients.discard(self)
        self._disarm()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.timer_at = INFINITY
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        ex = self.current
        if ex is not None:
            self.current = None
            if ex.connecting is not None:
                ex.connecting.cancel()
            self._release(ex, reusable=False)
            self._uncount(ex)
            if not ex.status:
                ex.status = 499
                ex.error_code = "client_closed"
            self._record(ex)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        """Bytes from the client (the compiled core takes plain whole requests before this)."""
        if self.tunnel is not None:
            self.tunnel.send(data)
            if self.current is not None:
                self.current.last_activity = self.loop.time()
            return
        if self.upgrading:
            ex = self.current
            if ex is not None:
                ex.body.append(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade_requested(data[upgrade.args[0]:])
        except (httptools.HttpParserError, _Stop):
            refusal = self.refusal or (400, "bad_request", "The request is malformed.")
            self._refuse_connection(*refusal)

    _general_data_received = data_received  # what the compiled core hands on

    def eof_received(self) -> bool | None:
        # A client half-closing mid-request gets its response, then the connection closes; one
        # half-closing between requests is done.
        if self.current is None:
            return None
        self.closing = True
        return True

    def pause_writing(self) -> None:
        backend = self.tunnel or (self.current.backend if self.current else None)
        if backend is not None:
            backend.pause_reading()

    def resume_writing(self) -> None:
        backend = self.tunnel or (self.current.backend if self.current else None)
        if backend is not None:
            backend.resume_reading()

    # --- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = True
        self.url = b""
        self.headers = []
        self.header_bytes = 0
        if self.current is None:
            self._arm(self.config.header_timeout, self._header_expired)

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.config.max_url_bytes:
            self.refusal = (414, "url_too_long", ERRORS["url_too_long"][1])
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        headers.append((name, value))
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.max_header_bytes or len(headers) > self.max_headers:
            self.refusal = (431, "headers_too_large", ERRORS["headers_too_large"][1])
            raise _Stop

    def on_headers_complete(self) -> None:
        parser = self.parser
        method = parser.get_method()
        try:
            info = inspect_request(self.headers)
        except BadRequest as bad:
            self.refusal = (bad.status, bad.code, bad.message)
            raise _Stop from None
        if method == b"CONNECT":
            self.refusal = (405, "method_not_allowed", "CONNECT is not supported.")
            raise _Stop
        target = self.url
        if not target.startswith(b"/") and target != b"*":
            # absolute-form (RFC 9112 section 3.2.2): the target's authority wins over Host.
            scheme, sep, rest = target.partition(b"://")
            if not sep or scheme.lower() not in (b"http", b"https"):
                self.refusal = (400, "bad_request", "The request target is malformed.")
                raise _Stop
            authority, _slash, path = rest.partition(b"/")
            info.host = authority.decode("latin-1")
            target = b"/" + path
        keep_alive = parser.should_keep_alive() and info.upgrade is None
        ex = self.worker.exchange_class(method, target, info, parser.get_http_version() == "1.1", keep_alive)
        ex.head = request_head(
            method, target, info,
            client_ip=self.client_ip, proto=self.proto, port=self.port,
            request_id=ex.request_id, start_ms=int(ex.start_wall * 1000), via=self.worker.via,
        )
        self.parsing = ex
        if self.current is None:
            self.current = ex
            self._disarm()
            self._dispatch(ex)
        else:
            self.pending.append(ex)
            self._pause(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None:
            return
        ex.bytes_in += len(body)
        ex.last_activity = self.loop.time()
        backend = ex.backend
        if backend is not None and ex is self.current:
            if ex.info.chunked:
                backend.send_many((b"%x\r\n" % len(body), body, b"\r\n"))
            else:
                backend.send(body)
        else:
            ex.body.append(body)
            ex.buffered += len(body)
            if ex.buffered > BUFFER_LIMIT:
                self._pause(PAUSE_BUFFER)

    def on_message_complete(self) -> None:
        self.in_message = False
        ex = self.parsing
        if ex is None:
            return
        self.parsing = None
        ex.body_done = True
        backend = ex.backend
        if backend is not None and ex is self.current and ex.info.chunked:
            backend.send(b"0\r\n\r\n")

    # --- routing and app connections ---------------------------------------------------------

    def _dispatch(self, ex: Exchange) -> None:
        decision = self.worker.table.decide(ex.info.host)
        if isinstance(decision, Refuse):
            ex.app = decision.app
            self._answer_error(ex, decision.status, decision.code, decision.message)
            return
        route = decision.route
        ex.app = route.app
        self._connect(ex, route)

    def _connect(self, ex: Exchange, route: AppRoute, *, fresh: bool = False) -> None:
        balancer = self.worker.balancer
        # The clock only matters to the balancer while an endpoint is set aside.
        endpoint = balancer.pick(route.endpoints, self.loop.time() if balancer.aside_until else 0.0, ex.tried)
        if endpoint is None:
            self._answer_error(ex, 502, "app_not_answering", ERRORS["app_not_answering"][1])
            return
        ex.endpoint = endpoint
        ex.attempts += 1
        # Counted from the pick, so concurrent connects spread out (Balancer.started, inline).
        key = endpoint.key
        outstanding = balancer.outstanding
        outstanding[key] = outstanding.get(key, 0) + 1
        ex.counted = True
        # An upgrade takes its app connection over for good: it gets a new one, never a pooled one.
        conn = None
        if not fresh and ex.info.upgrade is None:
            conns = self.worker.pool.get(key)
            while conns:  # Worker.take_idle, inline
                conn = conns.pop()
                if not conn.closed:
                    break
                conn = None
        if conn is None:
            self._open_new(ex, route, endpoint)
        elif not ex.body and not ex.info.chunked:
            # The common case, _attach's work in short: a pooled connection and a head to send.
            ex.backend = conn
            ex.reused = True
            conn.client = self
            conn.exchange = ex
            conn.idle = False
            conn.transport.write(ex.head)  # type: ignore[union-attr]  # set: the connection was made
            self._arm(self.config.first_byte_timeout, self._first_byte_expired)
        else:
            self._attach(ex, conn, reused=True)

    def _open_new(self, ex: Exchange, route: AppRoute, endpoint: Endpoint) -> None:
        ex.connecting = self.loop.create_task(self._open(ex, route, endpoint))

    async def _open(self, ex: Exchange, route: AppRoute, endpoint: Endpoint) -> None:
        worker = self.worker
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: worker.backend_class(worker, endpoint), endpoint.host, endpoint.port
                )
        except (OSError, TimeoutError):
            ex.connecting = None
            self._uncount(ex)
            worker.balancer.connect_failed(endpoint, self.loop.time())
            ex.tried.add(endpoint.key)
            if self.closed or ex is not self.current:
                return
            log.warning(
                "at=warning code=connect_failed app=%s request_id=%s endpoint=%s attempt=%d",
                ex.app, ex.request_id, endpoint.key, ex.attempts,
            )
            if ex.attempts < CONNECT_ATTEMPTS and len(ex.tried) < len(route.endpoints):
                self._connect(ex, route)
            else:
                self._answer_error(ex, 502, "app_not_answering", ERRORS["app_not_answering"][1])
            return
        ex.connecting = None
        if self.closed or ex is not self.current:
            conn.close()
            return
        worker.balancer.connected(endpoint)
        self._attach(ex, conn, reused=False)

    def _attach(self, ex: Exchange, conn: BackendConnection, *, reused: bool) -> None:
        ex.backend = conn
        ex.reused = reused
        conn.attach(self, ex)
        if ex.body:
            if ex.info.upgrade is None and ex.info.chunked:
                parts = [ex.head]
                for chunk in ex.body:
                    parts += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
                conn.send_many(parts)
            else:
                conn.send_many([ex.head, *ex.body])
            ex.body = []
            ex.buffered = 0
            self._resume(PAUSE_BUFFER)
        else:
            conn.send(ex.head)
        if ex.body_done and ex.info.chunked:
            conn.send(b"0\r\n\r\n")
        self._arm(self.config.first_byte_timeout, self._first_byte_expired)

    def _release(self, ex: Exchange, *, reusable: bool) -> None:
        conn = ex.backend
        if conn is None:
            return
        ex.backend = None
        if ex.counted and ex.endpoint is not None:  # _uncount, inline
            ex.counted = False
            self.worker.balancer.finished(ex.endpoint)
        conn.detach()
        if reusable and not conn.closed:
            self.worker.give_back(conn)
        else:
            conn.close()

    def _uncount(self, ex: Exchange) -> None:
        if ex.counted and ex.endpoint is not None:
            ex.counted = False
            self.worker.balancer.finished(ex.endpoint)

    # --- events from the app connection ------------------------------------------------------

    def response_head(self, conn: BackendConnection, status: int, reason: bytes, headers: Headers) -> None:
        ex = self.current
        if ex is None or ex.backend is not conn or self.transport is None:
            return
        self._disarm()
        if status < 200 and status != 101:  # interim (100 Continue, 103 Early Hints): relay
            if ex.http11:
                plan = response_head(status, reason, headers, head_request=False, client_http11=True,
                                     client_keep_alive=True, via=self.worker.via)
                self._write(plan.head)
            conn.interim = True
            self._arm(self.config.first_byte_timeout, self._first_byte_expired)
            return
        upgraded = status == 101 and ex.info.upgrade is not None
        plan = response_head(
            status, reason, headers,
            head_request=ex.head_request, client_http11=ex.http11,
            # An answer that comes before the upload ended (a 413, say) ends the connection too.
            client_keep_alive=ex.keep_alive and ex.body_done and not self.closing and not self.worker.draining,
            via=self.worker.via, upgraded=upgraded,
        )
        ex.plan = plan
        ex.status = status
        self._write(plan.head)
        ex.last_activity = self.loop.time()
        if upgraded:
            self._start_tunnel(ex, conn)
        elif ex.head_request:
            # The parser cannot be told a response to HEAD has no body; finish it here and do
            # not reuse the app connection, whose parser would wait for the announced body.
            self._finish(ex, reusable=False)
        elif plan.app_framing == NO_BODY:
            pass  # the parser ends the message by itself (1xx, 204, 304)
        else:
            self._arm(self.config.idle_timeout, self._stream_idle)

    def fast_response(self, conn: BackendConnection, parts: ResponseParts) -> None:
        """Relay a response head (and its body so far) that the fast path parsed and rebuilt."""
        ex = self.current
        if ex is None or ex.backend is not conn or self.transport is None:
            conn.close()  # a response nobody waits for: the connection's state is unknown
            return
        status, data, body_bytes, remaining, app_keep_alive = parts
        self.on_deadline = None
        worker = self.worker
        keep_alive = ex.keep_alive and ex.body_done and not self.closing and not worker.draining
        ex.plan = FAST_KEEP_ALIVE if keep_alive else FAST_CLOSE
        ex.status = status
        ex.bytes_out = body_bytes
        self.transport.write(data)
        if remaining:
            conn.remaining = remaining
            conn.app_keep_alive = app_keep_alive
            ex.last_activity = self.loop.time()
            self._arm(self.config.idle_timeout, self._stream_idle)
            return
        # The whole response is out: what _finish does for a Content-Length body, in short.
        ex.backend = None
        if ex.counted and ex.endpoint is not None:
            ex.counted = False
            worker.balancer.finished(ex.endpoint)
        if conn.reading_paused:
            conn.detach()
        else:
            conn.client = None
            conn.exchange = None
        if app_keep_alive and ex.body_done and not conn.closed:
            worker.give_back(conn)
        else:
            conn.close()
        self._record(ex)
        self.current = None
        if not keep_alive or self.closing:
            self._close()
        elif self.pending or worker.draining:
            self._next()
        else:
            self._arm(self.config.idle_timeout, self._idle_expired)

    def fast_body(self, conn: BackendConnection, data: bytes) -> None:
        """Relay more of a Content-Length body whose response head took the fast path."""
        ex = self.current
        if ex is None or ex.backend is not conn or self.transport is None:
            conn.remaining = 0
            conn.close()
            return
        size = len(data)
        remaining = conn.remaining
        if size < remaining:
            conn.remaining = remaining - size
            ex.bytes_out += size
            ex.last_activity = self.loop.time()
            self.transport.write(data)
            return
        conn.remaining = 0
        if size > remaining:  # bytes after the announced body: the app connection is unusable
            data = data[:remaining]
        ex.bytes_out += remaining
        self.transport.write(data)
        self._finish(ex, reusable=conn.app_keep_alive and size == remaining and ex.body_done)

    def response_body(self, body: bytes) -> None:
        ex = self.current
        if ex is None or ex.plan is None or self.transport is None:
            return
        ex.bytes_out += len(body)
        if ex.plan.framing == CHUNKED:
            self._write(b"%x\r\n" % len(body))
            self._write(body)
            self._write(b"\r\n")
        else:
            self._write(body)
        ex.last_activity = self.loop.time()

    def response_complete(self, conn: BackendConnection, app_keep_alive: bool) -> None:
        ex = self.current
        if ex is None or ex.backend is not conn:
            return
        if conn.interim:
            conn.interim = False
            return
        if conn.upgraded:
            return  # the end of the 101 head: from here on the bytes are the tunnel's
        self._finish(ex, reusable=app_keep_alive and ex.body_done)

    def backend_lost(self, conn: BackendConnection) -> None:
        """The app closed its side: a close-delimited body ended, or the app failed."""
        ex = self.current
        if ex is None or ex.backend is not conn:
            return
        if self.tunnel is conn:
            self.tunnel = None
            self.current = None
            self._release(ex, reusable=False)
            self._close()
            return
        plan = ex.plan
        if plan is not None and plan.app_framing == UNTIL_CLOSE:
            self._finish(ex, reusable=False)
            return
        if plan is None:
            if ex.reused and ex.bytes_in == 0 and ex.attempts < CONNECT_ATTEMPTS and not self.closed:
                # A pooled connection the app had closed just as we reused it: open a new one,
                # to any of the app's endpoints (this one may be going away for good).
                self._release(ex, reusable=False)
                decision = self.worker.table.decide(ex.info.host)
                if type(decision) is Forward:
                    if ex.endpoint is not None and len(decision.route.endpoints) > 1:
                        ex.tried.add(ex.endpoint.key)  # another one first, while there are others
                    self._connect(ex, decision.route, fresh=True)
                else:
                    self._answer_error(ex, 502, "app_reset", ERRORS["app_reset"][1])
                return
            self._release(ex, reusable=False)
            self._answer_error(ex, 502, "app_reset", ERRORS["app_reset"][1])
            return
        # The response was under way: nothing honest can be sent any more, so cut the client
        # connection and let it see a truncated response.
        ex.error_code = "app_reset"
        log.warning("at=error code=app_reset app=%s request_id=%s status=%d desc=\"app closed mid-response\"",
                    ex.app, ex.request_id, ex.status)
        self._release(ex, reusable=False)
        self._record(ex)
        self.current = None
        if self.transport is not None:
            self.batch = None
            self.transport.abort()

    def backend_garbled(self, conn: BackendConnection) -> None:
        ex = self.current
        if ex is None or ex.backend is not conn:
            conn.close()
            return
        self._release(ex, reusable=False)
        if ex.plan is None:
            self._answer_error(ex, 502, "app_not_answering", "The app sent a malformed response.")
        else:
            ex.error_code = "app_garbled"
            self._record(ex)
            self.current = None
            self.batch = None
            if self.transport is not None:
                self.transport.abort()

    # --- ending requests ---------------------------------------------------------------------

    def _finish(self, ex: Exchange, *, reusable: bool) -> None:
        """The response is complete: recycle the app connection, move to the next request."""
        plan = ex.plan
        assert plan is not None and self.transport is not None
        if plan.framing == CHUNKED:
            self._write(b"0\r\n\r\n")
        self._release(ex, reusable=reusable)
        self._record(ex)
        self.current = None
        if plan.framing == UNTIL_CLOSE or not plan.keep_alive or not ex.body_done or self.closing:
            self._close()
            return
        self._next()

    def _next(self) -> None:
        if self.pending:
            ex = self.pending.popleft()
            self.current = ex
            if not self.pending:
                self._resume(PAUSE_PIPELINE)
            self._dispatch(ex)
        elif self.worker.draining:
            self._close()
        else:
            self._arm(self.config.idle_timeout, self._idle_expired)

    def _answer_error(self, ex: Exchange, status: int, code: str, message: str) -> None:
        """Answer the current request with an error page of our own."""
        if self.transport is None or self.closed:
            return
        keep_alive = ex.keep_alive and ex.body_done and not self.closing and not self.worker.draining
        data = error_response(status, code, message, ex.request_id, keep_alive=keep_alive)
        self._write(data)
        ex.status = status
        ex.error_code = code
        ex.bytes_out = len(data)
        log.warning('at=error code=%s status=%d app=%s request_id=%s host=%s desc="%s"',
                    code, status, ex.app or "-", ex.request_id, ex.info.host or "-", message)
        self._record(ex)
        self.current = None
        if not keep_alive:
            self._close()
        else:
            self._next()

    def _refuse_connection(self, status: int, code: str, message: str) -> None:
        """Answer a request that could not be parsed, then close: the stream is unusable."""
        self._pause(PAUSE_DONE)
        self.refusal = None
        if self.current is not None:
            # Requests before the bad one are answered first; the connection ends after them.
            self.closing = True
            self.pending.clear()
            return
        request_id = new_request_id()
        log.warning('at=error code=%s status=%d request_id=%s fwd="%s"', code, status, request_id, self.client_ip)
        if self.transport is not None:
            self._write(error_response(status, code, message, request_id, keep_alive=False))
        self._close()

    def _record(self, ex: Exchange) -> None:
        if ex.app is None or ex.recorded:
            return
        ex.recorded = True
        elapsed = (time.monotonic() - ex.start) * 1000.0
        line: AccessFields = (
            ex.error_code, ex.method, ex.target, ex.info.host, ex.request_id, self.client_ip,
            ex.endpoint.key if ex.endpoint else "-", elapsed, ex.status, ex.bytes_out, self.proto,
        )
        self.worker.recorder.record(ex.app, ex.status, elapsed, ex.bytes_in, ex.bytes_out, line,
                                    ex.start_wall + elapsed / 1000.0)

    # --- upgrades (WebSocket) ----------------------------------------------------------------

    def _upgrade_requested(self, rest: bytes) -> None:
        ex = self.current
        if ex is None or ex.info.upgrade is None:
            self._refuse_connection(400, "bad_request", "This upgrade is not supported.")
            return
        self.upgrading = True
        self.closing = True
        if rest:
            ex.body.append(rest)

    def _start_tunnel(self, ex: Exchange, conn: BackendConnection) -> None:
        self.tunnel = conn
        self.upgrading = False
        conn.upgraded = True
        if ex.body:
            conn.send_many(ex.body)
            ex.body = []
        self._record(ex)
        self._arm(self.config.idle_timeout, self._stream_idle)

    # --- timers ------------------------------------------------------------------------------

    # One timer handle per connection, moved lazily: arming a later deadline than the pending
    # handle's only records it, and the handle re-schedules itself when it fires early. Most
    # requests then cost no timer operation at all.

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        deadline = self.loop.time() + seconds
        self.deadline = deadline
        self.on_deadline = callback
        if self.timer_at > deadline:  # no handle (inf), or one that fires too late
            timer = self.timer
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(deadline, self._tick)
            self.timer_at = deadline

    def _disarm(self) -> None:
        self.on_deadline = None

    def _tick(self) -> None:
        self.timer = None
        self.timer_at = INFINITY
        callback = self.on_deadline
        if callback is None or self.closed:
            return
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._tick)
            self.timer_at = self.deadline
            return
        self.on_deadline = None
        callback()

    def _write(self, data: bytes) -> None:
        batch = self.batch
        if batch is not None:
            batch.append(data)
        elif self.transport is not None:
            self.transport.write(data)

    def flush(self) -> None:
        batch = self.batch
        self.batch = None
        if batch and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(batch)

    def _idle_expired(self) -> None:
        if self.current is None and not self.pending:
            self._close()

    def _header_expired(self) -> None:
        if self.current is None:
            self._refuse_connection(408, "request_timeout", ERRORS["request_timeout"][1])

    def _first_byte_expired(self) -> None:
        ex = self.current
        if ex is None or ex.plan is not None:
            return
        self._release(ex, reusable=False)
        self._answer_error(ex, 504, "app_timeout", ERRORS["app_timeout"][1])

    def _stream_idle(self) -> None:
        ex = self.current
        if ex is None:
            return
        quiet = self.loop.time() - ex.last_activity
        if quiet < self.config.idle_timeout:
            self._arm(self.config.idle_timeout - quiet, self._stream_idle)
            return
        log.warning("at=error code=idle_timeout app=%s request_id=%s", ex.app, ex.request_id)
        if self.tunnel is None:
            ex.error_code = "idle_timeout"
            self._record(ex)
        self.current = None
        self._release(ex, reusable=False)
        self.tunnel = None
        if self.transport is not None:
            self.batch = None
            self.transport.abort()

    # --- flow control and closing ------------------------------------------------------------

    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def backend_paused(self) -> None:
        self._pause(PAUSE_BACKEND)

    def backend_resumed(self) -> None:
        self._resume(PAUSE_BACKEND)

    def drain(self) -> None:
        """Answer what is in flight with Connection: close, then close.

        An idle keep-alive connection gets a short grace instead of an immediate close, so that a
        request its client is sending right now is answered rather than lost in the race.
        """
        self.closing = True
        if self.current is None and not self.pending:
            self._arm(min(self.config.idle_timeout, DRAIN_GRACE), self._idle_expired)

    def _close(self) -> None:
        self._disarm()
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class BackendConnection(asyncio.Protocol):
    """One connection to an app's web process; reused across requests while it stays clean."""

    def __init__(self, worker: Worker, endpoint: Endpoint) -> None:
        self.worker = worker
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: ClientConnection | None = None
        self.exchange: Exchange | None = None
        self.headers: Headers = []
        self.reason = b""
        self.idle = False
        self.closed = False
        self.interim = False
        self.upgraded = False
        self.reading_paused = False
        self.in_message = False  # httptools is inside a response: the fast path must wait
        self.remaining = 0  # body bytes still to come of a response the fast path took
        self.app_keep_alive = False
        self.fast = worker.fast

    def attach(self, client: ClientConnection, ex: Exchange) -> None:
        self.client = client
        self.exchange = ex
        self.idle = False

    def detach(self) -> None:
        self.client = None
        self.exchange = None
        if self.remaining:  # detached mid-body: the rest of the body would be read as a response
            self.remaining = 0
            self.close()
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def send_many(self, parts: list[bytes] | tuple[bytes, ...]) -> None:
        if self.transport is not None and not self.closed:
            self.transport.writelines(parts)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed = self.closed
        self.closed = True
        if self.idle:
            self.worker.forget(self)
            return
        client = self.client
        if client is not None and not was_closed:
            client.backend_lost(self)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            # Nothing was asked: an idle app connection must stay silent. Drop it.
            self.close()
            return
        if self.upgraded:
            if client.transport is not None:
                client.transport.write(data)
                if client.current is not None:
                    client.current.last_activity = client.loop.time()
            return
        if self.remaining:
            client.fast_body(self, data)
            return
        client.batch = []
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0]:]
            client.flush()
            if rest and self.upgraded and client.transport is not None:
                client.transport.write(rest)
        except httptools.HttpParserError:
            client.flush()
            if self.client is not None:
                self.client.backend_garbled(self)
            else:
                self.close()
        finally:
            client.flush()

    _general_data_received = data_received  # what the compiled core hands on

    def pause_writing(self) -> None:
        if self.client is not None:
            if self.client.tunnel is self and self.client.transport is not None:
                self.client.transport.pause_reading()
            else:
                self.client.backend_paused()

    def resume_writing(self) -> None:
        if self.client is not None:
            if self.client.tunnel is self and self.client.transport is not None:
                self.client.transport.resume_reading()
            else:
                self.client.backend_resumed()

    # parser callbacks

    def on_message_begin(self) -> None:
        self.in_message = True
        self.headers = []
        self.reason = b""

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.client is not None:
            self.client.response_head(self, self.parser.get_status_code(), self.reason, self.headers)

    def on_body(self, body: bytes) -> None:
        if self.client is not None:
            self.client.response_body(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.client is not None:
            self.client.response_complete(self, self.parser.should_keep_alive())


_compiled: dict[int, tuple[type[ClientConnection], type[BackendConnection], type[Exchange]]] = {}


def compiled_classes(fast: FastPath) -> tuple[type[ClientConnection], type[BackendConnection], type[Exchange]]:
    """The connection classes on the extension's compiled cores, and its Exchange.

    The cores hold the attributes the common case touches as C fields of the same names and
    replace `data_received`; every other method is the Python class's, so both sets of classes
    behave alike (the proxy tests run on both).
    """
    found = _compiled.get(id(fast))
    if found is None:
        module = cast(Any, fast)
        module.setup(Forward, RequestInfo, FAST_KEEP_ALIVE, FAST_CLOSE, new_request_id, POOL_LIMIT,
                     tuple(float(b) for b in BUCKETS), _BUCKET_BASE, len(FIELDS))
        client = type("ClientConnection", (module.ClientCore, ClientConnection), {"__module__": __name__})
        backend = type("BackendConnection", (module.BackendCore, BackendConnection), {"__module__": __name__})
        found = _compiled[id(fast)] = (client, backend, module.Exchange)
    return found


__all__ = ["CHUNKED", "LENGTH", "NO_BODY", "UNTIL_CLOSE", "BackendConnection", "ClientConnection", "Worker"]
