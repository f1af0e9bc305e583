"""Pure header decisions: what a request may carry, and the heads sent on each side.

Headers are kept as the parser gives them, a list of (name, value) byte pairs in order; names
are compared lower-cased. Nothing here does I/O, so every rule is tested without sockets.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass

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


def _tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def inspect_request(headers: Headers) -> RequestInfo:
    """Read the headers that matter for routing and framing; BadRequest when they conflict.

    The parser already refuses most smuggling shapes; this is the second line, so that a parser
    leniency never turns into a desynchronised backend connection (CWE-444).
    """
    info = RequestInfo()
    tokens: set[bytes] = set()
    lengths: set[bytes] = set()
    transfer: list[bytes] = []
    upgrade: bytes | None = None
    hosts = 0
    for name, value in headers:
        lname = name.lower()
        if lname == b"host":
            hosts += 1
            info.host = value.decode("latin-1")
        elif lname == b"content-length":
            lengths.add(value.strip())
        elif lname == b"transfer-encoding":
            transfer.extend(t.strip().lower() for t in value.split(b",") if t.strip())
        elif lname == b"connection":
            tokens |= _tokens(value)
        elif lname == b"upgrade":
            upgrade = value.strip()
        elif lname == b"x-request-id":
            if REQUEST_ID.match(value):
                info.request_id = value.decode("ascii")
        elif lname == b"x-forwarded-for":
            info.forwarded_for = value if info.forwarded_for is None else info.forwarded_for + b", " + value
        elif lname == b"via":
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
    return info


_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)  # workers must not share a sequence


def new_request_id() -> str:
    """A random (version 4) UUID, made without a syscall: ids need to be unique, not secret."""
    bits = _random.getrandbits(128) & ~(0xF << 76) & ~(0x3 << 62) | (0x4 << 76) | (0x2 << 62)
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def request_head(
    method: bytes,
    target: bytes,
    headers: Headers,
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
    drop = info.connection_tokens
    out = [method, b" ", target, b" HTTP/1.1\r\n"]
    append = out.append
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in REPLACED or lname in APPENDED or lname in drop:
            continue
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
    ip = client_ip.encode("ascii")
    forwarded = info.forwarded_for + b", " + ip if info.forwarded_for else ip
    append(b"X-Forwarded-For: " + forwarded + b"\r\n")
    append(b"X-Forwarded-Proto: " + proto + b"\r\nX-Forwarded-Port: " + port + b"\r\n")
    append(b"X-Request-Id: " + request_id.encode("ascii") + b"\r\n")
    append(b"X-Request-Start: " + str(start_ms).encode("ascii") + b"\r\n")
    append(b"Via: " + (info.via + b", " + via if info.via else via) + b"\r\n")
    if info.upgrade is not None:
        append(b"Connection: Upgrade\r\nUpgrade: " + info.upgrade + b"\r\n")
    elif info.chunked:
        append(b"Transfer-Encoding: chunked\r\n")
    append(b"\r\n")
    return b"".join(out)


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
    tokens: set[bytes] = set()
    length: bytes | None = None
    chunked = False
    for name, value in headers:
        lname = name.lower()
        if lname == b"connection":
            tokens |= _tokens(value)
        elif lname == b"content-length":
            length = value
        elif lname == b"transfer-encoding":
            chunked = chunked or value.strip().lower().endswith(b"chunked")
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
    out = [b"HTTP/1.1 ", str(status).encode("ascii"), b" ", reason or b"-", b"\r\n"]
    append = out.append
    via_seen: bytes | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in tokens:
            continue
        if lname == b"via":
            via_seen = value if via_seen is None else via_seen + b", " + value
            continue
        if lname == b"content-length" and framing != LENGTH and not (framing == NO_BODY and head_request):
            continue
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
    append(b"Via: " + (via_seen + b", " + via if via_seen else via) + b"\r\n")
    if upgraded:
        upgrade = next((v for n, v in headers if n.lower() == b"upgrade"), b"websocket")
        append(b"Connection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n")
    elif framing == CHUNKED:
        append(b"Transfer-Encoding: chunked\r\n")
    if not upgraded and status >= 200:
        append(b"Connection: keep-alive\r\n" if keep_alive else b"Connection: close\r\n")
    append(b"\r\n")
    return ResponsePlan(b"".join(out), framing, app_framing, keep_alive)
