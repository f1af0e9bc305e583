"""The compiled fast path: what it takes, what it leaves to the general path, and that both agree.

Every head the fast path builds is compared byte for byte with what httptools and
router/headers.py make of the same message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import httptools
import pytest

from router import fastpath
from router.fastpath import FastPath, RequestParts, ResponseParts
from router.headers import Headers, inspect_request, request_head, response_head
from router.proxy import Worker
from router.routing import RouteTable
from tests.router.app import App
from tests.router.helpers import DOMAIN, TEST_CONFIG, Client, run, running_router

VIA = b"1.1 paas-router"
CTX = (b"192.0.2.7", b"https", b"443", VIA, 8192, 4096, 50)
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def fast() -> FastPath:
    module = fastpath.load()
    assert module is not None, "the fast path must build where gcc and the Python headers are installed"
    return module


class _Collect:
    def __init__(self) -> None:
        self.url = b""
        self.reason = b""
        self.headers: Headers = []
        self.done = False
        self.parser: Any = None
        self.keep_alive = False  # as the proxy reads it: when the head is complete

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self.done = True


def general_request(raw: bytes, request_id: str, start_ms: int) -> tuple[bytes, bool, bool, str | None]:
    """What the general path sends the app for this request: head and body, keep-alive, 1.1, host."""
    collect = _Collect()
    parser = collect.parser = httptools.HttpRequestParser(collect)
    parser.feed_data(raw)
    assert collect.done
    info = inspect_request(collect.headers)
    head = request_head(parser.get_method(), collect.url, info, client_ip="192.0.2.7", proto=b"https",
                        port=b"443", request_id=info.request_id or request_id, start_ms=start_ms, via=VIA)
    body = raw[raw.index(b"\r\n\r\n") + 4:]
    return head + body, collect.keep_alive, parser.get_http_version() == "1.1", info.host


def fast_request(fast: FastPath, raw: bytes) -> RequestParts:
    parts = fast.request(raw, CTX)
    assert parts is not None, raw
    return parts


REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: web1.apps.test\r\n\r\n",
    b"GET /a/b?c=d&e=%20f HTTP/1.1\r\nhost: Web1.Apps.Test:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\nVia: 1.0 lb\r\nx-forwarded-for: 10.0.0.2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: client-chosen-id.42\r\nX-Request-Start: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: bad id!\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Port: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Basic eA==\r\nTrailer: x\r\nCookie: a=b; c=d\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\nConnection: Keep-Alive\r\n\r\n",
    b"HEAD /x HTTP/1.1\r\nHost: a\r\nEmpty:\r\nTabbed:\tvalue with\tinner tab\r\n\r\n",
    b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"DELETE /x HTTP/1.1\r\nHost: a\r\nX-Latin: caf\xe9\r\n\r\n",
]


@pytest.mark.parametrize("raw", REQUESTS)
def test_it_builds_the_same_request_head_as_the_general_path(fast: FastPath, raw: bytes) -> None:
    method, target, host, request_id, keep_alive, http11, out, length, start_wall = fast_request(fast, raw)
    start = re.search(rb"X-Request-Start: (\d+)\r\n", out)
    assert start is not None
    expected, expected_keep_alive, expected_http11, expected_host = general_request(raw, request_id,
                                                                                    int(start.group(1)))
    assert out == expected
    assert (keep_alive, http11, host) == (expected_keep_alive, expected_http11, expected_host)
    assert raw.startswith(method + b" " + target + b" ")
    assert length == len(raw) - raw.index(b"\r\n\r\n") - 4
    assert abs(start_wall * 1000 - int(start.group(1))) < 1
    assert request_id == "client-chosen-id.42" or UUID.match(request_id)


GENERAL_REQUESTS = {
    "chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "upgrade": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "connection names a field": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Secret\r\nX-Secret: 1\r\n\r\n",
    "proxy-connection": b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: close\r\n\r\n",
    "no host": b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "two lengths": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    "signed length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
    "body still coming": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello",
    "head still coming": b"GET / HTTP/1.1\r\nHost: a\r\nAcc",
    "pipelined": b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: a\n\n",
    "absolute form": b"GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n",
    "CONNECT": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    "unknown method": b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n",
    "lower-case method": b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
    "HTTP/2.0": b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "trailing space": b"GET / HTTP/1.1\r\nHost: a \r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "control character in the target": b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
    "target too long": b"GET /" + b"x" * 8192 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    "too many headers": b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 50 + b"\r\n",
    "headers too large": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + b"b" * 4096 + b"\r\n\r\n",
}


@pytest.mark.parametrize("raw", GENERAL_REQUESTS.values(), ids=GENERAL_REQUESTS.keys())
def test_it_leaves_every_other_request_to_the_general_path(fast: FastPath, raw: bytes) -> None:
    assert fast.request(raw, CTX) is None


def general_response(raw: bytes, client_keep_alive: bool) -> tuple[bytes, bool]:
    collect = _Collect()
    parser = collect.parser = httptools.HttpResponseParser(collect)
    parser.feed_data(raw)
    plan = response_head(parser.get_status_code(), collect.reason, collect.headers, head_request=False,
                         client_http11=True, client_keep_alive=client_keep_alive, via=VIA)
    return plan.head + raw[raw.index(b"\r\n\r\n") + 4:], collect.keep_alive


RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 404 Not Found\r\nServer: app\r\ncontent-length: 2\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nno",
    b"HTTP/1.1 200 OK\r\nVia: 1.1 cdn\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 500 \r\nContent-Length: 1\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\n\r\nx",
    b"HTTP/1.1 302\r\nLocation: /next\r\nContent-Length: 0\r\nProxy-Authenticate: Basic\r\n\r\n",
]


@pytest.mark.parametrize("raw", RESPONSES)
@pytest.mark.parametrize("client_keep_alive", [True, False])
def test_it_builds_the_same_response_head_as_the_general_path(fast: FastPath, raw: bytes,
                                                              client_keep_alive: bool) -> None:
    parts: ResponseParts | None = fast.response(raw, VIA, client_keep_alive)
    assert parts is not None
    status, out, in_out, remaining, app_keep_alive = parts
    expected, expected_app_keep_alive = general_response(raw, client_keep_alive)
    assert out == expected
    assert app_keep_alive == expected_app_keep_alive
    assert status == int(raw[9:12])
    assert (in_out, remaining) == (len(raw) - raw.index(b"\r\n\r\n") - 4, 0)


def test_it_says_how_much_of_a_body_is_still_to_come(fast: FastPath) -> None:
    parts = fast.response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel", VIA, True)
    assert parts is not None
    assert parts[1].endswith(b"\r\n\r\nhel")
    assert (parts[2], parts[3]) == (3, 7)


GENERAL_RESPONSES = {
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "until close": b"HTTP/1.1 200 OK\r\nServer: app\r\n\r\nbody",
    "no content": b"HTTP/1.1 204 No Content\r\n\r\n",
    "not modified": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    "continue": b"HTTP/1.1 100 Continue\r\n\r\n",
    "switching": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "HTTP/1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "connection names a field": b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nContent-Length: 0\r\n\r\n",
    "more than the body": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxy",
    "two lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    "head still coming": b"HTTP/1.1 200 OK\r\nContent-Len",
    "garbage": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
}


@pytest.mark.parametrize("raw", GENERAL_RESPONSES.values(), ids=GENERAL_RESPONSES.keys())
def test_it_leaves_every_other_response_to_the_general_path(fast: FastPath, raw: bytes) -> None:
    assert fast.response(raw, VIA, True) is None


class Spy:
    """Wrap the fast path to see which messages it took."""

    def __init__(self, inner: FastPath) -> None:
        self.inner = inner
        self.requests: list[RequestParts | None] = []
        self.responses: list[ResponseParts | None] = []

    def request(self, data: bytes, ctx: tuple[Any, ...], /) -> RequestParts | None:
        self.requests.append(self.inner.request(data, ctx))
        return self.requests[-1]

    def response(self, data: bytes, via: bytes, client_keep_alive: bool, /) -> ResponseParts | None:
        self.responses.append(self.inner.response(data, via, client_keep_alive))
        return self.responses[-1]

    def access_lines(self, entries: list[tuple[float, Any]], /) -> str | None:
        return self.inner.access_lines(entries)

    def xadd_batch(self, key: bytes, entries: list[tuple[float, Any]], maxlen: int, /) -> bytes | None:
        return self.inner.xadd_batch(key, entries, maxlen)

    def seed_request_ids(self, prefix: str, start: int, /) -> None:
        self.inner.seed_request_ids(prefix, start)

    def new_request_id(self) -> str:
        return self.inner.new_request_id()


@run
async def test_it_takes_plain_requests_and_responses_on_the_fast_path(fast: FastPath) -> None:
    app = await App().start()
    async with running_router() as router:
        spy = Spy(fast)
        router.worker.fast = spy
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        first = await client.request(path="/one")
        second = await client.request(method="POST", path="/two", body=b"payload")
        big = await client.request(path="/big?kb=256")
        client.close()
    await app.stop()
    assert (first.status, second.status, big.status) == (200, 200, 200)
    assert json.loads(second.body)["body_sha256"] == hashlib.sha256(b"payload").hexdigest()
    assert len(big.body) == 256 * 1024
    assert len(spy.requests) == 3 and all(parts is not None for parts in spy.requests)
    assert len(spy.responses) == 3 and all(parts is not None for parts in spy.responses)
    assert spy.responses[2] is not None and spy.responses[2][3] > 0  # the big body came in pieces
    seen = dict(app.seen[0]["headers"])  # type: ignore[call-overload]
    assert spy.requests[0] is not None and seen["X-Request-Id"] == spy.requests[0][3]


def test_it_goes_without_the_fast_path_when_it_is_switched_off() -> None:
    worker = Worker(replace(TEST_CONFIG, fast_path=False), RouteTable(DOMAIN))
    assert worker.fast is None


def test_it_logs_and_goes_without_the_fast_path_when_there_is_no_compiler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PAAS_ROUTER_BUILD_DIR", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(fastpath, "_loaded", {})
    with caplog.at_level(logging.WARNING, logger="router"):
        assert fastpath.load() is None
    assert "code=fast_path_unavailable" in caplog.text and "no C compiler" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_it_compiles_once_per_version_of_the_source(tmp_path: Path) -> None:
    source = tmp_path / "fastpath.c"
    source.write_bytes(fastpath.SOURCE.read_bytes())
    built = fastpath.compile_extension(tmp_path / "build", source)
    assert fastpath.compile_extension(tmp_path / "build", source) == built
    assert fastpath.import_extension(built).request(REQUESTS[3], CTX) is not None
    source.write_bytes(source.read_bytes() + b"\n/* changed */\n")
    assert fastpath.compile_extension(tmp_path / "build", source) != built


def test_it_reports_a_source_that_does_not_compile(tmp_path: Path) -> None:
    source = tmp_path / "fastpath.c"
    source.write_text("this is not C\n")
    with pytest.raises(fastpath.BuildError, match="gcc failed"):
        fastpath.compile_extension(tmp_path / "build", source)
    assert list((tmp_path / "build").iterdir()) == []


def test_it_formats_access_log_lines_as_the_general_path_does(fast: FastPath) -> None:
    from router.metrics import Recorder
    from router.proxy import format_access_line

    lines = [
        ("", b"GET", b"/a?b=\xe9", "web1.apps.test", "0a1b2c3d-aaaa-4bbb-8ccc-000000000001", "127.0.0.1",
         "10.0.0.5:5000", 0.52, 200, 19, b"http"),
        ("app_reset", b"POST", b"/x\ny", None, "trace-me-12345", "::1", "-", 2.5, 499, 0, b"https"),
        ("", b"GET", b"/" + b"x" * 9000, "h\xe9", "id", "192.0.2.7", "-", 1e9, 200, 10**12, b"http"),
    ]
    entries = [(1795822720.123456 + i * 0.0000013, line) for i, line in enumerate(lines * 50)]
    recorder = Recorder(formatter=format_access_line)
    assert fast.access_lines(entries) == "\n".join(recorder.format_entry(when, line) for when, line in entries)
    assert fast.access_lines([]) == ""


def test_it_encodes_access_log_batches_as_the_python_encoder_does(fast: FastPath) -> None:
    from router.metrics import Recorder
    from router.proxy import format_access_line

    lines = [
        ("", b"GET", b"/a?b=\xe9", "web1.apps.test", "0a1b2c3d-aaaa-4bbb-8ccc-000000000001", "127.0.0.1",
         "10.0.0.5:5000", 0.52, 200, 19, b"http"),
        ("app_reset", b"POST", b"/x\ny\tz", None, "trace-me-12345", "::1", "-", 2.5, 499, 0, b"https"),
        ("", b"GET", b"/" + b"x" * 9000, "h\xe9", "id", "192.0.2.7", "-", 1e9, 200, 10**12, b"http"),
    ]
    entries = [(1795822720.123456 + i * 0.0000013, line) for i, line in enumerate(lines * 50)]
    recorder = Recorder(formatter=format_access_line, log_maxlen=12345)
    packed = fast.xadd_batch(b"paas:logs:web1", entries, 12345)
    assert packed == recorder.pack_entries("paas:logs:web1", entries)
    assert packed is not None and packed.count(b"\r\nXADD\r\n") == 150 and packed.count(b"XTRIM") == 1
    assert fast.xadd_batch(b"k", [], 5) == Recorder(log_maxlen=5).pack_entries("k", [])
    assert fast.xadd_batch(b"k", [(1.0, "a line the proxy did not record")], 5) is None


def test_it_leaves_unusual_access_log_entries_to_python(fast: FastPath) -> None:
    assert fast.access_lines([(1.0, "a line the proxy did not record")]) is None
    assert fast.access_lines([(1.0, ("", b"GET", b"/", "\u263a", "id", "ip", "-", 1.0, 200, 0, b"http"))]) is None


def test_it_draws_request_ids_from_one_counter_on_both_paths(fast: FastPath) -> None:
    from router.headers import new_request_id

    first = new_request_id()
    parts = fast.request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", CTX)
    assert parts is not None
    last = new_request_id()
    ids = [first, parts[3], last]
    assert all(UUID.match(i) for i in ids)
    assert len({i[:24] for i in ids}) == 1  # one prefix per worker
    counters = [int(i[24:], 16) for i in ids]
    assert counters[1] == (counters[0] + 1) & 0xFFFFFFFFFFFF and counters[2] == (counters[1] + 1) & 0xFFFFFFFFFFFF


def test_it_rounds_times_in_log_lines_exactly_as_python_does(fast: FastPath) -> None:
    import math
    import random
    import struct

    from router.metrics import Recorder
    from router.proxy import format_access_line

    rng = random.Random(20261128)
    values = [0.0, 0.5, 1.5, 2.5, 0.4999999999, 999.5, 1795822720.1234565, 2.0**53 - 1, 2.0**53, 1e300, 5e-324]
    values += [rng.uniform(0, 2e9) for _ in range(3000)] + [rng.uniform(0, 100) for _ in range(3000)]
    values += [round(rng.uniform(0, 1e4), rng.randint(0, 7)) + 0.0000005 for _ in range(3000)]
    values += [struct.unpack("d", struct.pack("Q", rng.getrandbits(63)))[0] for _ in range(1000)]
    values = [v for v in values if math.isfinite(v)]
    entries = [(v, ("", b"GET", b"/", "h", "id", "ip", "-", values[-1 - i], 200, 19, b"http"))
               for i, v in enumerate(values)]
    recorder = Recorder(formatter=format_access_line)
    assert fast.access_lines(entries) == "\n".join(recorder.format_entry(when, line) for when, line in entries)


def test_it_refuses_to_build_into_a_directory_others_can_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(fastpath.BuildError, match="writable by no one else"):
        fastpath.compile_extension(shared)
    assert list(shared.iterdir()) == []


# --- the compiled connection objects ------------------------------------------------------------


def test_a_worker_with_the_fast_path_runs_on_the_compiled_connections(fast: FastPath) -> None:
    from router.proxy import BackendConnection, ClientConnection, Exchange

    compiled = Worker(TEST_CONFIG, RouteTable(DOMAIN))
    assert issubclass(compiled.client_class, ClientConnection) and compiled.client_class is not ClientConnection
    assert issubclass(compiled.client_class, fast.ClientCore)  # type: ignore[attr-defined]
    assert issubclass(compiled.backend_class, BackendConnection)
    assert issubclass(compiled.backend_class, fast.BackendCore)  # type: ignore[attr-defined]
    assert compiled.exchange_class is fast.Exchange  # type: ignore[attr-defined]
    plain = Worker(replace(TEST_CONFIG, fast_path=False), RouteTable(DOMAIN))
    assert (plain.client_class, plain.backend_class, plain.exchange_class) == (ClientConnection, BackendConnection,
                                                                              Exchange)


def test_the_compiled_exchange_starts_as_the_python_one_does(fast: FastPath) -> None:
    from router.headers import RequestInfo
    from router.proxy import Exchange

    compiled_class = fast.Exchange  # type: ignore[attr-defined]
    for info, request_id in ((RequestInfo(host="a.test", request_id="kept-id-1234"), None),
                             (RequestInfo(host="a.test"), "given-id-5678"),
                             (RequestInfo(host="a.test"), None)):
        python = Exchange(b"HEAD", b"/x", info, True, False, request_id, 1700000000.5)
        compiled = compiled_class(b"HEAD", b"/x", info, True, False, request_id, 1700000000.5)
        for name in Exchange.__slots__:
            if name in ("request_id", "start"):
                continue
            assert getattr(compiled, name) == getattr(python, name), name
        if request_id or info.request_id:
            assert compiled.request_id == python.request_id
        else:
            assert UUID.match(compiled.request_id) and compiled.request_id != python.request_id
        assert abs(compiled.start - python.start) < 1.0
    compiled.body.append(b"x")
    compiled.tried.add("10.0.0.1:5000")
    compiled.status, compiled.bytes_out, compiled.keep_alive = 200, 12, True
    assert (compiled.body, compiled.tried, compiled.status, compiled.bytes_out) == ([b"x"], {"10.0.0.1:5000"}, 200, 12)
    with pytest.raises(TypeError):
        compiled.keep_alive = 1  # the same strictness everywhere: flags are bools


@run
async def test_the_compiled_connections_record_what_the_python_ones_do() -> None:
    app = await App().start()
    seen: dict[bool, tuple[dict[str, int], list[tuple[Any, ...]]]] = {}
    for fast_path in (True, False):
        async with running_router(fast_path=fast_path) as router:
            router.set_app("web1", [app.endpoint])
            client = await Client.connect(router.port)
            for path in ("/a", "/b?c=d", "/status?code=404"):
                await client.request(path=path, headers={"X-Request-Id": f"req-{path[1:2]}-0123456789"})
            client.close()
            recorder = router.worker.recorder
            counts = {k: v for k, v in recorder.counts("web1").items() if not k.startswith("latency")}
            # (code, method, target, host, request id, client ip, endpoint, ms, status, bytes, proto)
            lines = [(app_name, *fields[:7], *fields[8:]) for app_name, _when, fields in recorder.lines]
            seen[fast_path] = (counts, lines)
    await app.stop()
    assert seen[True] == seen[False]
    assert seen[True][0]["requests"] == 3 and seen[True][0]["status_4xx"] == 1


@run
async def test_the_compiled_connections_keep_nothing_after_a_request(fast: FastPath) -> None:
    import gc
    import tracemalloc

    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)

        async def requests(count: int) -> None:
            for _ in range(count):
                assert (await client.request(path="/")).status == 200
            router.worker.recorder.take(max_lines=10**6)  # what a flush would hand over
            app.seen.clear()

        await requests(50)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        await requests(1000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        live = [o for o in gc.get_objects() if type(o) is fast.Exchange]  # type: ignore[attr-defined]
        client.close()
    await app.stop()
    assert grown < 64 * 1024, f"{grown} bytes more after 1000 requests"
    assert len(live) <= 1
