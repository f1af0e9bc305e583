"""A small real HTTP/1.1 app server for the router's tests, on asyncio streams.

Paths choose the behaviour: /echo (default), /slow?ms=N, /chunked?n=N, /big?kb=N, /reset,
/close-delimited, /hang, /ws (101 then echo bytes), /status?code=N, /continue (reads the body
after sending 100 Continue).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
import struct
from urllib.parse import parse_qs, urlsplit

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, list[tuple[str, str]], bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    lower = {k.lower(): v for k, v in headers}
    body = b""
    if lower.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readline()
    elif "content-length" in lower and urlsplit(target).path not in ("/continue", "/early"):
        body = await reader.readexactly(int(lower["content-length"]))
    return method, target, headers, body


def response(status: int, body: bytes, extra: str = "", reason: str = "OK") -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


class App:
    """One app web process: counts requests and connections so tests can look inside."""

    def __init__(self, name: str = "app") -> None:
        self.name = name
        self.requests = 0
        self.connections = 0
        self.seen: list[dict[str, object]] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.ends_on_reuse = False  # a container stopping: its next reused connection ends it

    async def start(self, port: int = 0) -> App:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                self.server.close_clients()  # type: ignore[attr-defined]
            self.server = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served_here = 0
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    break
                served_here += 1
                if request[1] == "/second-dies" and served_here > 1:
                    break  # a keep-alive connection the app dropped just as the router reused it
                if self.ends_on_reuse and served_here > 1 and self.server:
                    self.server.close()  # the app goes away for good (no more connections) ...
                    break  # ... and drops the connection the router reused
                if not await self.answer(request, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def answer(self, request: tuple[str, str, list[tuple[str, str]], bytes],
                     reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        method, target, headers, body = request
        self.requests += 1
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        lower = {k.lower(): v for k, v in headers}
        self.seen.append({"method": method, "target": target, "headers": headers, "body": body})
        path = url.path
        if path == "/slow":
            await asyncio.sleep(int(query.get("ms", "100")) / 1000)
        if path == "/hang":
            await asyncio.sleep(3600)
        if path == "/status":
            code = int(query.get("code", "200"))
            writer.write(response(code, b"" if code in (204, 304) else b"status", reason="Whatever"))
        elif path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(int(query.get("n", "3"))):
                part = f"part{i};".encode()
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
        elif path == "/big":
            size = int(query.get("kb", "1024")) * 1024
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            block = b"x" * 65536
            sent = 0
            while sent < size:
                piece = block[: size - sent]
                writer.write(piece)
                sent += len(piece)
                await writer.drain()
        elif path == "/reset":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial")
            await writer.drain()
            await asyncio.sleep(0.05)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        elif path == "/reset-early":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        elif path == "/early":  # refuses an upload without reading it, like a 413 would
            writer.write(response(413, b"too big", "Connection: close\r\n", reason="Payload Too Large"))
            await writer.drain()
            return False
        elif path == "/close-after":  # answers as if keeping the connection, then closes it
            writer.write(response(200, b"closing now"))
            await writer.drain()
            return False
        elif path == "/close-delimited":
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-close-body")
            await writer.drain()
            return False
        elif path == "/continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            data = await reader.readexactly(int(lower.get("content-length", "0")))
            writer.write(response(200, b"got " + data))
        elif path == "/ws":
            key = lower.get("sec-websocket-key", "").encode()
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
            writer.write(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
            )
            await writer.drain()
            while True:
                data = await reader.read(65536)
                if not data:
                    return False
                writer.write(data)
                await writer.drain()
        else:
            payload = json.dumps({
                "app": self.name, "method": method, "target": target,
                "headers": headers, "body_length": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }).encode()
            writer.write(response(200, payload, "Content-Type: application/json\r\n"))
        await writer.drain()
        return lower.get("connection", "").lower() != "close"
