"""The proxy on real sockets: a router worker in-process in front of small real app servers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
from dataclasses import replace

import pytest

from router.balancer import Balancer
from tests.router import helpers
from tests.router.app import App
from tests.router.helpers import DOMAIN, Client, free_port, get, run, running_router


@pytest.fixture(autouse=True, params=["fast", "general"])
def message_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every proxy test twice: with the compiled fast path, and with the general path only."""
    monkeypatch.setattr(helpers, "TEST_CONFIG", replace(helpers.TEST_CONFIG, fast_path=request.param == "fast"))


@run
async def test_it_routes_each_host_to_its_own_app() -> None:
    one, two = await App("one").start(), await App("two").start()
    async with running_router() as router:
        router.set_app("web1", [one.endpoint])
        router.set_app("shop", [two.endpoint])
        router.set_domain("www.example.com", "shop")
        assert json.loads((await get(router.port, host=f"web1.{DOMAIN}")).body)["app"] == "one"
        assert json.loads((await get(router.port, host="www.example.com:80")).body)["app"] == "two"
    await one.stop()
    await two.stop()


@run
async def test_it_answers_404_with_a_code_and_the_request_id_for_an_unknown_host() -> None:
    async with running_router() as router:
        response = await get(router.port, host="nobody.apps.test", headers={"X-Request-Id": "trace-me-12345"})
        assert response.status == 404
        assert response.header("X-Paas-Error") == "no_such_app"
        assert response.header("X-Request-Id") == "trace-me-12345"
        assert b"no_such_app" in response.body and b"trace-me-12345" in response.body


@run
async def test_it_answers_503_when_no_web_process_runs_and_in_maintenance() -> None:
    async with running_router() as router:
        router.set_app("web1", [])
        router.set_app("shop", ["127.0.0.1:1"], maintenance=True)
        idle = await get(router.port)
        down = await get(router.port, host=f"shop.{DOMAIN}")
        assert (idle.status, idle.header("X-Paas-Error")) == (503, "no_web_process")
        assert (down.status, down.header("X-Paas-Error")) == (503, "maintenance")
        counts = router.worker.recorder.counts("shop")
        assert counts["status_5xx"] == 1


@run
async def test_it_adds_forwarding_headers_and_keeps_a_request_id() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        response = await get(router.port, headers={"X-Request-Id": "abcdefgh-1234", "X-Forwarded-For": "203.0.113.9",
                                                   "Connection": "keep-alive, X-Hop", "X-Hop": "secret"})
        seen = {k.lower(): v for k, v in json.loads(response.body)["headers"]}
        assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "http" and seen["x-forwarded-port"] == "80"
        assert seen["x-request-id"] == "abcdefgh-1234"
        assert seen["x-request-start"].isdigit() and seen["via"] == "1.1 paas-router"
        assert "x-hop" not in seen and "connection" not in seen
        assert response.header("Via") == "1.1 paas-router"
    await app.stop()


@run
async def test_it_routes_an_absolute_form_target_by_its_authority() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        response = await get(router.port, path=f"http://web1.{DOMAIN}/x?y=1", host="elsewhere.example")
        assert response.status == 200 and json.loads(response.body)["target"] == "/x?y=1"
    await app.stop()


@run
async def test_it_keeps_both_sides_alive_and_reuses_the_app_connection() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        for _ in range(5):
            response = await client.request()
            assert response.status == 200 and response.header("Connection") == "keep-alive"
        client.close()
        second = await Client.connect(router.port)
        assert (await second.request()).status == 200
        second.close()
        assert app.requests == 6 and app.connections == 1
    await app.stop()


@run
async def test_it_opens_a_new_app_connection_when_the_app_closed_a_pooled_one() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        for _ in range(10):
            response = await client.request(path="/close-after")
            assert (response.status, response.body) == (200, b"closing now")
        client.close()
        assert app.connections == 10
    await app.stop()


@run
async def test_it_retries_a_bodyless_request_once_when_a_reused_app_connection_drops_it() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        for _ in range(4):
            assert (await client.request(path="/second-dies")).status == 200
        client.close()
        assert app.connections == 4  # each reuse was dropped, and answered on a new connection
    await app.stop()


@run
async def test_it_retries_on_another_endpoint_when_a_reused_connection_drops_and_its_app_is_gone() -> None:
    """A container stopping during a redeploy: it drops the pooled connection the router reuses
    and accepts no new one, while the route table still lists it next to a healthy one."""
    healthy = await App("healthy").start()
    async with running_router() as router:
        for _ in range(8):  # the balancer picks at random: often enough to reuse the dying one
            dying = await App("dying").start()
            dying.ends_on_reuse = True
            router.set_app("web1", [dying.endpoint])
            client = await Client.connect(router.port)
            assert (await client.request()).status == 200
            router.set_app("web1", [dying.endpoint, healthy.endpoint])
            response = await client.request()
            assert response.status == 200, response.header("X-Paas-Error")
            client.close()
            await dying.stop()
    await healthy.stop()


@run
async def test_it_streams_a_chunked_upload_and_a_chunked_response() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        parts = [bytes([65 + i]) * (1000 * (i + 1)) for i in range(20)]
        await client.send(f"POST /echo HTTP/1.1\r\nHost: web1.{DOMAIN}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        for part in parts:
            await client.send(b"%x\r\n%s\r\n" % (len(part), part))
            await asyncio.sleep(0.001)
        await client.send(b"0\r\n\r\n")
        echoed = json.loads((await client.response()).body)
        assert echoed["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
        chunked = await client.request(path="/chunked?n=5")
        assert chunked.chunked and chunked.body == b"part0;part1;part2;part3;part4;"
        client.close()
    await app.stop()


@run
async def test_it_relays_an_answer_sent_before_the_upload_ended_and_closes() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        await client.send(f"POST /early HTTP/1.1\r\nHost: web1.{DOMAIN}\r\nContent-Length: 10000000\r\n\r\n".encode())
        await client.send(b"x" * 100_000)
        response = await client.response()
        assert (response.status, response.body) == (413, b"too big")
        assert response.header("Connection") == "close"
        assert await client.closed()
        client.close()
        assert (await get(router.port)).status == 200
    await app.stop()


@run
async def test_it_streams_a_large_upload_intact() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        body = bytes(range(256)) * 40_000  # about 10 MB
        response = await get(router.port, path="/echo", body=body)
        assert json.loads(response.body)["body_sha256"] == hashlib.sha256(body).hexdigest()
    await app.stop()


@run
async def test_it_streams_a_large_response_to_a_slow_reader_intact() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        await client.send(f"GET /big?kb=8192 HTTP/1.1\r\nHost: web1.{DOMAIN}\r\n\r\n".encode())
        await asyncio.sleep(0.5)  # the client is not reading: the router must hold back, not buffer
        (conn,) = router.worker.clients
        assert conn.transport is not None
        assert conn.transport.get_write_buffer_size() < 1024 * 1024  # far less than the 8 MiB body
        response = await client.response()
        assert len(response.body) == 8192 * 1024 and set(response.body) == {ord("x")}
        client.close()
    await app.stop()


@run
async def test_it_retries_a_refused_connect_on_another_endpoint_and_sets_the_refuser_aside() -> None:
    app = await App().start()
    dead = f"127.0.0.1:{free_port()}"
    async with running_router() as router:
        router.set_app("web1", [dead, app.endpoint])
        for _ in range(6):
            assert (await get(router.port)).status == 200
        assert dead in router.worker.balancer.aside_until
        assert app.requests == 6
    await app.stop()


@run
async def test_it_gives_up_on_a_connect_that_hangs_and_tries_another_endpoint() -> None:
    app = await App().start()
    # A listener whose accept queue is full: the kernel drops further SYNs, so connects hang.
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    filler = socket.create_connection(stuck.getsockname())
    try:
        async with running_router(connect_timeout=0.3) as router:
            router.set_app("web1", [f"127.0.0.1:{stuck.getsockname()[1]}", app.endpoint])
            # Each pick is random between the two: 16 requests miss the stuck one 1 time in 65536.
            for _ in range(16):
                assert (await get(router.port)).status == 200
            assert f"127.0.0.1:{stuck.getsockname()[1]}" in router.worker.balancer.aside_until
    finally:
        filler.close()
        stuck.close()
        await app.stop()


@run
async def test_it_answers_502_when_every_endpoint_refuses() -> None:
    async with running_router() as router:
        router.set_app("web1", [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"])
        response = await get(router.port)
        assert (response.status, response.header("X-Paas-Error")) == (502, "app_not_answering")


@run
async def test_it_answers_504_when_the_app_sends_nothing_in_time() -> None:
    app = await App().start()
    async with running_router(first_byte_timeout=0.3) as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        response = await client.request(path="/hang")
        assert (response.status, response.header("X-Paas-Error")) == (504, "app_timeout")
        assert (await client.request(path="/echo")).status == 200  # the client connection lives on
        client.close()
    await app.stop()


@run
async def test_it_answers_502_when_the_app_resets_before_answering() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        response = await get(router.port, path="/reset-early")
        assert (response.status, response.header("X-Paas-Error")) == (502, "app_reset")
    await app.stop()


@run
async def test_it_cuts_the_client_when_the_app_resets_mid_response_and_other_clients_go_on() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        await client.send(f"GET /reset HTTP/1.1\r\nHost: web1.{DOMAIN}\r\n\r\n".encode())
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await client.closed()
        client.close()
        assert (await get(router.port)).status == 200
        assert router.worker.recorder.counts("web1")["requests"] == 2
    await app.stop()


@run
async def test_it_turns_an_app_response_ended_by_close_into_a_chunked_one() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        response = await client.request(path="/close-delimited")
        assert response.chunked and response.body == b"until-close-body"
        assert (await client.request()).status == 200
        client.close()
    await app.stop()


@run
async def test_it_answers_a_http10_client_and_closes() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        await client.send(f"GET /chunked?n=2 HTTP/1.0\r\nHost: web1.{DOMAIN}\r\n\r\n".encode())
        data = await asyncio.wait_for(client.reader.read(), 5)
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\npart0;part1;")
        client.close()
    await app.stop()


@run
async def test_it_answers_head_without_waiting_for_a_body() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        head = await client.request(method="HEAD", path="/echo")
        assert head.status == 200 and int(head.header("Content-Length") or 0) > 0
        assert (await client.request()).status == 200
        client.close()
    await app.stop()


@run
async def test_it_relays_100_continue() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        await client.send(f"POST /continue HTTP/1.1\r\nHost: web1.{DOMAIN}\r\nContent-Length: 5\r\n"
                          "Expect: 100-continue\r\n\r\n".encode())
        interim = await client.response()
        assert interim.status == 100
        await client.send(b"hello")
        final = await client.response()
        assert (final.status, final.body) == (200, b"got hello")
        # The app connection goes back to the pool clean: a chunked answer on it comes through.
        async with asyncio.timeout(5):
            after = await client.request(path="/chunked?n=3")
        assert after.status == 200 and after.chunked
        assert app.connections == 1
        client.close()
    await app.stop()


@run
async def test_it_answers_pipelined_requests_in_order() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        request = "GET /slow?ms={} HTTP/1.1\r\nHost: web1." + DOMAIN + "\r\n\r\n"
        await client.send("".join(request.format(ms) for ms in (50, 0, 20)).encode())
        targets = [json.loads((await client.response()).body)["target"] for _ in range(3)]
        assert targets == ["/slow?ms=50", "/slow?ms=0", "/slow?ms=20"]
        client.close()
    await app.stop()


@run
async def test_it_proxies_a_websocket_upgrade_both_ways() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        await client.send(
            f"GET /ws HTTP/1.1\r\nHost: web1.{DOMAIN}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = await client.response()
        assert response.status == 101
        assert response.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert response.header("Upgrade") == "websocket"
        frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # a masked "Hello" text frame (RFC 6455 5.7)
        for _ in range(3):
            await client.send(frame)
            assert await asyncio.wait_for(client.reader.readexactly(len(frame)), 5) == frame
        client.close()
    await app.stop()


@run
async def test_it_balances_across_endpoints() -> None:
    apps = [await App(f"a{i}").start() for i in range(3)]
    async with running_router() as router:
        router.set_app("web1", [a.endpoint for a in apps])
        router.worker.balancer = Balancer(rng=random.Random(7))  # the test decides the dice
        clients = [await Client.connect(router.port) for _ in range(8)]
        await asyncio.gather(*(c.request(path="/slow?ms=30") for c in clients))
        assert all(a.requests > 0 for a in apps)
        for c in clients:
            c.close()
    for a in apps:
        await a.stop()


# --- bad input: each gets its own answer and leaves the other clients alone ------------------


async def refused(port: int, raw: bytes) -> tuple[int, str | None, bool]:
    client = await Client.connect(port)
    await client.send(raw)
    response = await client.response()
    closed = await client.closed()
    client.close()
    return response.status, response.header("X-Paas-Error"), closed


@run
async def test_it_answers_400_to_a_malformed_request_and_closes() -> None:
    async with running_router() as router:
        assert await refused(router.port, b"GARBAGE\r\n\r\n") == (400, "bad_request", True)
        assert await refused(router.port, b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n") == (400, "bad_request", True)


@run
async def test_it_answers_400_to_a_smuggling_attempt() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        raw = (f"POST / HTTP/1.1\r\nHost: web1.{DOMAIN}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
               f"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web1.{DOMAIN}\r\n\r\n").encode()
        assert await refused(router.port, raw) == (400, "bad_request", True)
        assert app.requests == 0
    await app.stop()


@run
async def test_it_answers_431_to_oversized_or_too_many_headers() -> None:
    async with running_router(max_header_bytes=4096, max_headers=50) as router:
        big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 5000 + b"\r\n\r\n"
        assert await refused(router.port, big) == (431, "headers_too_large", True)
        many = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(60)) + b"\r\n"
        assert await refused(router.port, many) == (431, "headers_too_large", True)


@run
async def test_it_answers_414_to_an_overlong_target() -> None:
    async with running_router() as router:
        raw = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
        assert (await refused(router.port, raw))[:2] == (414, "url_too_long")


@run
async def test_it_answers_408_to_a_slow_client_and_keeps_serving_the_others() -> None:
    app = await App().start()
    async with running_router(header_timeout=0.5) as router:
        router.set_app("web1", [app.endpoint])
        slow = await Client.connect(router.port)
        await slow.send(b"GET / HTTP/1.1\r\nHost: web1.apps.test\r\n")
        # Trickling a header line every 0.1 s does not buy more time: the router gives up on the
        # head long before 60 drips (6 s), and keeps serving other clients meanwhile.
        response = None
        for drip in range(60):
            try:
                response = await asyncio.wait_for(slow.response(), 0.1)
                break
            except TimeoutError:
                pass
            try:
                await slow.send(b"X-Drip: 1\r\n")
            except (ConnectionError, RuntimeError):  # it answered and closed just now
                break
            if drip < 3:
                assert (await get(router.port)).status == 200
        else:
            raise AssertionError("trickled header lines kept the connection open")
        if response is None:
            try:
                response = await slow.response()
            except (ConnectionError, asyncio.IncompleteReadError):  # lost with the connection
                response = None
        if response is not None:
            assert (response.status, response.header("X-Paas-Error")) == (408, "request_timeout")
            assert await slow.closed()
        slow.close()
    await app.stop()


@run
async def test_it_closes_an_idle_keep_alive_connection() -> None:
    app = await App().start()
    async with running_router(idle_timeout=0.3) as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        assert (await client.request()).status == 200
        assert await client.closed()
        client.close()
    await app.stop()


@run
async def test_it_refuses_connect_requests() -> None:
    async with running_router() as router:
        status, code, _ = await refused(router.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        assert (status, code) == (405, "method_not_allowed")


@run
async def test_it_answers_a_client_that_half_closes_after_its_request_then_closes() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        client = await Client.connect(router.port)
        await client.send(f"GET /slow?ms=50 HTTP/1.1\r\nHost: web1.{DOMAIN}\r\n\r\n".encode())
        client.writer.write_eof()
        response = await client.response()
        assert response.status == 200 and response.header("Connection") == "close"
        assert await client.closed()
        client.close()
    await app.stop()


@run
async def test_it_survives_a_client_that_vanishes_mid_request() -> None:
    app = await App().start()
    async with running_router() as router:
        router.set_app("web1", [app.endpoint])
        sock = socket.create_connection(("127.0.0.1", router.port))
        sock.sendall(f"GET /slow?ms=100 HTTP/1.1\r\nHost: web1.{DOMAIN}\r\n\r\n".encode())
        await asyncio.sleep(0.02)
        sock.close()
        await asyncio.sleep(0.2)
        assert (await get(router.port)).status == 200
        assert router.worker.balancer.outstanding == {}
    await app.stop()
