"""Pure header decisions: what a request may carry, and the heads sent on each side.

Headers are kept as the parser gives them, a list of (name, value) byte pairs in order; names
are compared lower-cased. Nothing here does I/O, so every rule is tested without sockets.
"""

from __future__ import annotations

import itertools
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

Headers = list[tuple[bytes, bytes]]

# RFC 9110 section 7.6.1: hop-by-hop fields apply to one connection only and are never forwarded,
# nor is any field the Connection header names. Proxy-Authorization is for the proxy itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by the router on the way in: whatever a client sent under these names is replaced.
REPLACED = frozenset({b"x-forwarded-proto", b"x-forwarded-port", b"x-request-id", b"x-request-start"})
APPENDED = frozenset({b"x-forwarded-for", b"via"})

REQUEST_ID = re.compile(rb"^[A-Za-z0-9+/=._-]{8,200}$")


class BadRequest(Exception):
    """A request the router refuses before it reaches an app."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(slots=True)
class RequestInfo:
    """What the router needs to know about a request's head."""

    host: str | None = None
    request_id: str | None = None
    content_length: int | None = None
    chunked: bool = False
    upgrade: bytes | None = None
    connection_tokens: frozenset[bytes] = frozenset()
    forwarded_for: bytes | None = None
    via: bytes | None = None
    forward: list[bytes] = field(default_factory=list)  # the header lines passed on, pieces


def _tokens(value: bytes) -> set[bytes]:
    if b"," not in value:  # the usual `keep-alive` or `close`
        token = value.strip().lower()
        return {token} if token else set()
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


# What inspect_request does with each header it knows; unknown ones are passed on as they are.
_DROP, _HOST, _LENGTH, _TRANSFER, _CONNECTION, _UPGRADE, _REQUEST_ID, _FORWARDED_FOR, _VIA = range(9)
_REQUEST_KINDS: dict[bytes, int] = {name: _DROP for name in HOP_BY_HOP | REPLACED}
_REQUEST_KINDS.update({
    b"host": _HOST, b"content-length": _LENGTH, b"transfer-encoding": _TRANSFER,
    b"connection": _CONNECTION, b"upgrade": _UPGRADE, b"x-request-id": _REQUEST_ID,
    b"x-forwarded-for": _FORWARDED_FOR, b"via": _VIA,
})
_CONNECTION_OPTIONS = frozenset({b"keep-alive", b"close", b"upgrade"})
_PASS = -1
# Header names as apps and clients spell them, mapped to what to do with them: they repeat the
# same few spellings, so this saves lower-casing every name of every message.
_raw_response_kinds: dict[bytes, int] = {}
_raw_request_kinds: dict[bytes, int] = {}
_status_lines: dict[tuple[int, bytes], bytes] = {}
_RAW_CACHE_LIMIT = 4096


def _request_kind(name: bytes) -> int:
    kind = _REQUEST_KINDS.get(name.lower(), _PASS)
    if len(_raw_request_kinds) < _RAW_CACHE_LIMIT:
        _raw_request_kinds[name] = kind
    return kind


def inspect_request(headers: Headers) -> RequestInfo:
    """Read the headers that matter for routing and framing; BadRequest when they conflict.

    One pass also collects the header lines to pass on to the app (all but the hop-by-hop ones
    and those the router sets itself). The parser already refuses most smuggling shapes; this is
    the second line, so that a parser leniency never turns into a desynchronised app connection
    (CWE-444).
    """
    info = RequestInfo()
    forward = info.forward
    tokens: set[bytes] = set()
    lengths: set[bytes] = set()
    transfer: list[bytes] = []
    upgrade: bytes | None = None
    hosts = 0
    raw_kinds = _raw_request_kinds
    for name, value in headers:
        kind = raw_kinds.get(name)
        if kind is None:
            kind = _request_kind(name)
        if kind == _PASS:
            forward += (name, b": ", value, b"\r\n")
        elif kind == _HOST:
            hosts += 1
            info.host = value.decode("latin-1")
            forward += (name, b": ", value, b"\r\n")
        elif kind == _LENGTH:
            lengths.add(value.strip())
            forward += (name, b": ", value, b"\r\n")
        elif kind == _TRANSFER:
            transfer.extend(t.strip().lower() for t in value.split(b",") if t.strip())
        elif kind == _CONNECTION:
            tokens |= _tokens(value)
        elif kind == _UPGRADE:
            upgrade = value.strip()
        elif kind == _REQUEST_ID:
            if REQUEST_ID.match(value):
                info.request_id = value.decode("ascii")
        elif kind == _FORWARDED_FOR:
            info.forwarded_for = value if info.forwarded_for is None else info.forwarded_for + b", " + value
        elif kind == _VIA:
            info.via = value if info.via is None else info.via + b", " + value
    if hosts > 1:
        raise BadRequest(400, "bad_request", "The request has more than one Host header.")
    if transfer and lengths:
        raise BadRequest(400, "bad_request", "Content-Length and Transfer-Encoding cannot be combined.")
    if transfer:
        if transfer[-1] != b"chunked" or transfer.count(b"chunked") != 1:
            raise BadRequest(400, "bad_request", "Transfer-Encoding must end with chunked.")
        info.chunked = True
    if lengths:
        if len(lengths) > 1:
            raise BadRequest(400, "bad_request", "The request has conflicting Content-Length headers.")
        (length,) = lengths
        if not length.isdigit():
            raise BadRequest(400, "bad_request", "Content-Length must be a number.")
        info.content_length = int(length)
    info.connection_tokens = frozenset(tokens)
    if upgrade is not None and b"upgrade" in tokens:
        info.upgrade = upgrade
    named = tokens - _CONNECTION_OPTIONS
    if named:  # fields the client declared hop-by-hop in Connection stay with this hop too
        info.forward = [
            piece
            for i in range(0, len(forward), 4)
            if forward[i].lower() not in named
            for piece in forward[i : i + 4]
        ]
    return info


class _RequestIds:
    """Request ids shaped as version-4 UUIDs: a random prefix per process, then a counter.

    Ids must be unique, not secret; a counter costs a fraction of 128 fresh random bits per
    request. The prefix is drawn again in every forked worker, so workers never collide.
    """

    def __init__(self) -> None:
        self.seed_compiled: Callable[[str, int], None] | None = None
        self.new_compiled: Callable[[], str] | None = None
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        bits = random.SystemRandom().getrandbits(80)
        h = f"{bits:020x}"
        # version nibble 4, variant bits 10 (RFC 4122 section 4.4)
        self.prefix = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{(int(h[16], 16) & 0x3 | 0x8):x}{h[17:20]}-"
        start = random.SystemRandom().getrandbits(40)
        self.counter = itertools.count(start)
        if self.seed_compiled is not None:
            self.seed_compiled(self.prefix, start)

    def hand_over(self, seed: Callable[[str, int], None], new: Callable[[], str]) -> None:
        """Let the compiled fast path keep the counter, so both paths draw from one sequence."""
        self.seed_compiled, self.new_compiled = seed, new
        self.reset()

    def new(self) -> str:
        if self.new_compiled is not None:
            return self.new_compiled()
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFF:012x}"


_ids = _RequestIds()
new_request_id = _ids.new
hand_over_request_ids = _ids.hand_over


def request_head(
    method: bytes,
    target: bytes,
    info: RequestInfo,
    *,
    client_ip: str,
    proto: bytes,
    port: bytes,
    request_id: str,
    start_ms: int,
    via: bytes,
) -> bytes:
    """Build the request head the app receives: hop-by-hop fields out, forwarding fields in."""
    ip = client_ip.encode("ascii")
    tail = (
        b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Port: %s\r\n"
        b"X-Request-Id: %s\r\nX-Request-Start: %d\r\nVia: %s\r\n"
        % (
            info.forwarded_for + b", " + ip if info.forwarded_for else ip,
            proto,
            port,
            request_id.encode("ascii"),
            start_ms,
            info.via + b", " + via if info.via else via,
        )
    )
    if info.upgrade is not None:
        tail += b"Connection: Upgrade\r\nUpgrade: " + info.upgrade + b"\r\n\r\n"
    elif info.chunked:
        tail += b"Transfer-Encoding: chunked\r\n\r\n"
    else:
        tail += b"\r\n"
    return b"".join((method, b" ", target, b" HTTP/1.1\r\n", *info.forward, tail))


# How a response body travels to the client.
NO_BODY = 0  # HEAD, 1xx, 204, 304
LENGTH = 1  # Content-Length from the app, passed through
CHUNKED = 2  # re-chunked for an HTTP/1.1 client (the app sent chunked, or closed to end)
UNTIL_CLOSE = 3  # an HTTP/1.0 client: the body ends when the connection closes


@dataclass(slots=True)
class ResponsePlan:
    """How a response is framed to the client, and whether the app's connection can be kept."""

    head: bytes
    framing: int
    app_framing: int  # NO_BODY, LENGTH, CHUNKED, or UNTIL_CLOSE (the app closes to end it)
    keep_alive: bool


_RESPONSE_KINDS: dict[bytes, int] = {name: _DROP for name in HOP_BY_HOP}
_RESPONSE_KINDS.update({
    b"connection": _CONNECTION, b"content-length": _LENGTH, b"transfer-encoding": _TRANSFER,
    b"via": _VIA, b"upgrade": _UPGRADE,
})


def _response_kind(name: bytes) -> int:
    kind = _RESPONSE_KINDS.get(name.lower(), _PASS)
    if len(_raw_response_kinds) < _RAW_CACHE_LIMIT:
        _raw_response_kinds[name] = kind
    return kind


def response_head(
    status: int,
    reason: bytes,
    headers: Headers,
    *,
    head_request: bool,
    client_http11: bool,
    client_keep_alive: bool,
    via: bytes,
    upgraded: bool = False,
) -> ResponsePlan:
    """Build the response head the client receives and decide the body framing on both sides."""
    tokens: set[bytes] | None = None
    length: bytes | None = None
    length_name = b"Content-Length"
    chunked = False
    via_seen: bytes | None = None
    upgrade = b"websocket"
    status_line = _status_lines.get((status, reason))
    if status_line is None:
        status_line = b"HTTP/1.1 %d %s\r\n" % (status, reason or b"-")
        if len(_status_lines) < _RAW_CACHE_LIMIT:
            _status_lines[(status, reason)] = status_line
    forward: list[bytes] = [status_line]
    raw_kinds = _raw_response_kinds
    for name, value in headers:
        kind = raw_kinds.get(name)
        if kind is None:
            kind = _response_kind(name)
        if kind == _PASS:
            forward += (name, b": ", value, b"\r\n")
        elif kind == _CONNECTION:
            tokens = _tokens(value) if tokens is None else tokens | _tokens(value)
        elif kind == _LENGTH:
            length, length_name = value, name
        elif kind == _TRANSFER:
            chunked = chunked or value.strip().lower().endswith(b"chunked")
        elif kind == _VIA:
            via_seen = value if via_seen is None else via_seen + b", " + value
        elif kind == _UPGRADE:
            upgrade = value
    if upgraded or head_request or status < 200 or status in (204, 304):
        app_framing = framing = NO_BODY
    elif chunked:
        app_framing = CHUNKED
        framing = CHUNKED if client_http11 else UNTIL_CLOSE
    elif length is not None:
        app_framing = framing = LENGTH
    else:
        app_framing = UNTIL_CLOSE
        framing = CHUNKED if client_http11 else UNTIL_CLOSE
    keep_alive = client_keep_alive and framing != UNTIL_CLOSE and not upgraded
    if tokens is not None:
        named = tokens - _CONNECTION_OPTIONS
        if named:  # fields the app declared hop-by-hop in Connection stay on its side
            forward = [status_line] + [
                piece
                for i in range(1, len(forward), 4)
                if forward[i].lower() not in named
                for piece in forward[i : i + 4]
            ]
    forward += (b"Via: ", via_seen + b", " + via if via_seen else via, b"\r\n")
    if length is not None and (framing == LENGTH or (framing == NO_BODY and head_request)):
        forward += (length_name, b": ", length, b"\r\n")
    if upgraded:
        forward += (b"Connection: Upgrade\r\nUpgrade: ", upgrade, b"\r\n\r\n")
    else:
        if framing == CHUNKED:
            forward.append(b"Transfer-Encoding: chunked\r\n")
        if status >= 200:
            forward.append(b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n")
        else:
            forward.append(b"\r\n")
    return ResponsePlan(b"".join(forward), framing, app_framing, keep_alive)
