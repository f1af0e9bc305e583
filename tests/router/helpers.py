"""Helpers for the router's tests: a router worker in-process, and a raw HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import uvloop

from router.config import RouterConfig
from router.proxy import Worker
from router.routing import RouteTable
from router.table import AppRoute, parse_endpoint

DOMAIN = "apps.test"
T = TypeVar("T")


def run(fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """Run an async test function on uvloop, as the router runs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        async def main() -> T:
            async with asyncio.timeout(60):
                return await fn(*args, **kwargs)

        return uvloop.run(main())

    return wrapper


def route(app: str, endpoints: list[str], maintenance: bool = False) -> AppRoute:
    return AppRoute(app, tuple(parse_endpoint(e) for e in endpoints), maintenance)


@dataclass
class RunningRouter:
    worker: Worker
    port: int
    server: asyncio.Server

    @property
    def table(self) -> RouteTable:
        return self.worker.table

    def set_app(self, app: str, endpoints: list[str], maintenance: bool = False) -> None:
        self.table.patch({app: route(app, endpoints, maintenance)}, {}, self.table.version + 1)

    def set_domain(self, host: str, app: str) -> None:
        self.table.patch({}, {host: app}, self.table.version + 1)


TEST_CONFIG = RouterConfig(
    bind=("127.0.0.1", 0), domain=DOMAIN, connect_timeout=1.0, first_byte_timeout=2.0,
    idle_timeout=5.0, header_timeout=1.0, drain_timeout=5.0, set_aside=30.0,
    max_header_bytes=4096, max_headers=50,
)


@contextlib.asynccontextmanager
async def running_router(**overrides: Any) -> AsyncIterator[RunningRouter]:
    config = replace(TEST_CONFIG, **overrides)
    worker = Worker(config, RouteTable(DOMAIN))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(worker.protocol_factory("http", 80), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield RunningRouter(worker, port, server)
    finally:
        server.close()
        worker.drain()
        for client in list(worker.clients):
            if client.transport is not None:
                client.transport.abort()


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""
    chunked: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Client:
    """One client connection speaking raw HTTP/1.1, so tests control every byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, method: str = "GET", path: str = "/", host: str = f"web1.{DOMAIN}",
                      headers: dict[str, str] | None = None, body: bytes | None = None) -> Response:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        return await self.response(head=method == "HEAD")

    async def response(self, head: bool = False) -> Response:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        _, status, reason = ([*lines[0].split(" ", 2), ""])[:3]
        headers = []
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers.append((k.strip(), v.strip()))
        resp = Response(int(status), reason, headers, b"", raw)
        code = int(status)
        if head or code in (204, 304) or 100 <= code < 200:
            return resp
        te = resp.header("transfer-encoding")
        if te and "chunked" in te.lower():
            resp.chunked = True
            body = b""
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    break
                body += await self.reader.readexactly(size)
                await self.reader.readline()
            resp.body = body
        elif resp.header("content-length") is not None:
            resp.body = await self.reader.readexactly(int(resp.header("content-length") or 0))
        else:
            resp.body = await self.reader.read()
        return resp

    async def closed(self) -> bool:
        """True when the router has closed this connection (reads EOF or a reset)."""
        try:
            async with asyncio.timeout(5):
                while await self.reader.read(65536):
                    pass
            return True
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.writer.close()


async def get(port: int, path: str = "/", host: str = f"web1.{DOMAIN}", **kwargs: Any) -> Response:
    client = await Client.connect(port)
    try:
        return await client.request(path=path, host=host, **kwargs)
    finally:
        client.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
