"""Header decisions on both sides of the proxy. No sockets."""

from __future__ import annotations

import pytest

from router.headers import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    BadRequest,
    inspect_request,
    new_request_id,
    request_head,
    response_head,
)


def head_for(headers: list[tuple[bytes, bytes]], **kwargs: object) -> dict[bytes, list[bytes]]:
    info = inspect_request(headers)
    options: dict[str, object] = dict(client_ip="192.0.2.7", proto=b"https", port=b"443",
                                      request_id=info.request_id or "generated-id-1", start_ms=1700000000123,
                                      via=b"1.1 paas-router")
    options.update(kwargs)
    raw = request_head(b"GET", b"/x?y=1", info, **options)  # type: ignore[arg-type]
    lines = raw.split(b"\r\n")
    assert lines[0] == b"GET /x?y=1 HTTP/1.1"
    assert raw.endswith(b"\r\n\r\n")
    out: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b": ")
            out.setdefault(name.lower(), []).append(value)
    return out


def test_it_strips_hop_by_hop_headers_and_those_named_by_connection() -> None:
    h = head_for([(b"Host", b"a"), (b"Connection", b"keep-alive, X-Secret"), (b"Keep-Alive", b"timeout=5"),
                  (b"X-Secret", b"1"), (b"TE", b"trailers"), (b"Proxy-Authorization", b"Basic x"),
                  (b"Accept", b"*/*")])
    for name in (b"connection", b"keep-alive", b"x-secret", b"te", b"proxy-authorization"):
        assert name not in h
    assert h[b"accept"] == [b"*/*"] and h[b"host"] == [b"a"]


def test_it_appends_the_client_to_x_forwarded_for() -> None:
    assert head_for([(b"Host", b"a")])[b"x-forwarded-for"] == [b"192.0.2.7"]
    h = head_for([(b"Host", b"a"), (b"X-Forwarded-For", b"10.9.9.9")])
    assert h[b"x-forwarded-for"] == [b"10.9.9.9, 192.0.2.7"]


def test_it_replaces_forwarded_proto_and_port_whatever_the_client_claimed() -> None:
    h = head_for([(b"Host", b"a"), (b"X-Forwarded-Proto", b"http"), (b"X-Forwarded-Port", b"1")])
    assert h[b"x-forwarded-proto"] == [b"https"]
    assert h[b"x-forwarded-port"] == [b"443"]


def test_it_keeps_a_well_formed_request_id_and_replaces_a_bad_one() -> None:
    kept = head_for([(b"Host", b"a"), (b"X-Request-Id", b"abc-123-def-456")])
    assert kept[b"x-request-id"] == [b"abc-123-def-456"]
    bad = inspect_request([(b"Host", b"a"), (b"X-Request-Id", b"no spaces allowed")])
    assert bad.request_id is None


def test_it_generates_distinct_uuid4_request_ids() -> None:
    import uuid

    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(uuid.UUID(i).version == 4 for i in list(ids)[:20])


def test_it_adds_request_start_in_milliseconds_and_via() -> None:
    h = head_for([(b"Host", b"a"), (b"Via", b"1.0 corp-proxy")])
    assert h[b"x-request-start"] == [b"1700000000123"]
    assert h[b"via"] == [b"1.0 corp-proxy, 1.1 paas-router"]


def test_it_forwards_a_chunked_request_as_chunked_and_a_sized_one_with_its_length() -> None:
    assert head_for([(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")])[b"transfer-encoding"] == [b"chunked"]
    sized = head_for([(b"Host", b"a"), (b"Content-Length", b"5")])
    assert sized[b"content-length"] == [b"5"] and b"transfer-encoding" not in sized


def test_it_keeps_the_upgrade_headers_of_a_websocket_request() -> None:
    h = head_for([(b"Host", b"a"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")])
    assert h[b"connection"] == [b"Upgrade"] and h[b"upgrade"] == [b"websocket"]


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")],
        [(b"Content-Length", b"3"), (b"Content-Length", b"4")],
        [(b"Transfer-Encoding", b"chunked, gzip")],
        [(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
        [(b"Content-Length", b"-1")],
        [(b"Host", b"b")],
    ],
    ids=["cl-and-te", "two-lengths", "te-not-ending-chunked", "chunked-twice", "negative-length", "two-hosts"],
)
def test_it_refuses_ambiguous_framing_that_could_smuggle_a_request(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(BadRequest) as refused:
        inspect_request([(b"Host", b"a"), *headers])
    assert refused.value.status == 400


def test_it_accepts_a_repeated_identical_content_length() -> None:
    assert inspect_request([(b"Content-Length", b"3"), (b"Content-Length", b"3")]).content_length == 3


def plan(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
    options: dict[str, object] = dict(head_request=False, client_http11=True, client_keep_alive=True, via=b"1.1 paas-router")
    options.update(kwargs)
    return response_head(status, b"OK", headers or [], **options)  # type: ignore[arg-type]


def test_it_passes_a_content_length_response_through() -> None:
    p = plan(headers=[(b"Content-Length", b"12"), (b"Connection", b"close")])
    assert p.framing == LENGTH and p.keep_alive
    assert b"Content-Length: 12\r\n" in p.head and b"Connection: keep-alive\r\n" in p.head
    assert b"close" not in p.head


def test_it_rechunks_a_chunked_response_for_a_http11_client() -> None:
    p = plan(headers=[(b"Transfer-Encoding", b"chunked")])
    assert (p.framing, p.app_framing) == (CHUNKED, CHUNKED)
    assert p.head.count(b"Transfer-Encoding") == 1


def test_it_sends_a_chunked_response_to_a_http10_client_until_close() -> None:
    p = plan(headers=[(b"Transfer-Encoding", b"chunked")], client_http11=False)
    assert p.framing == UNTIL_CLOSE and not p.keep_alive
    assert b"Transfer-Encoding" not in p.head and b"Connection: close" in p.head


def test_it_chunks_a_response_the_app_ends_by_closing() -> None:
    p = plan(headers=[])
    assert (p.framing, p.app_framing) == (CHUNKED, UNTIL_CLOSE) and p.keep_alive


def test_it_expects_no_body_after_head_204_and_304() -> None:
    assert plan(headers=[(b"Content-Length", b"5")], head_request=True).framing == NO_BODY
    assert b"Content-Length: 5" in plan(headers=[(b"Content-Length", b"5")], head_request=True).head
    assert plan(204).framing == NO_BODY
    assert plan(304, [(b"Content-Length", b"5")]).framing == NO_BODY


def test_it_adds_via_to_the_response_and_strips_hop_by_hop_fields() -> None:
    p = plan(headers=[(b"Content-Length", b"0"), (b"Keep-Alive", b"timeout=5"), (b"Via", b"1.1 app")])
    assert b"Keep-Alive" not in p.head
    assert b"Via: 1.1 app, 1.1 paas-router\r\n" in p.head


def test_it_closes_the_client_connection_when_the_client_asked_to() -> None:
    p = plan(headers=[(b"Content-Length", b"0")], client_keep_alive=False)
    assert not p.keep_alive and b"Connection: close" in p.head


def test_it_keeps_the_upgrade_headers_of_a_101_response() -> None:
    p = plan(101, [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")], upgraded=True)
    assert b"Connection: Upgrade\r\nUpgrade: websocket\r\n" in p.head
    assert p.framing == NO_BODY and not p.keep_alive


def test_it_gives_each_forked_worker_its_own_request_id_prefix() -> None:
    import os

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child writes one id and leaves at once
        os.write(write_end, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read_end, 100).decode()
    os.close(read_end)
    os.close(write_end)
    assert child[:24] != new_request_id()[:24]


def test_it_strips_response_fields_the_app_named_in_connection() -> None:
    p = plan(headers=[(b"Content-Length", b"0"), (b"Connection", b"keep-alive, X-Internal"),
                      (b"X-Internal", b"1"), (b"X-Public", b"2")])
    assert b"X-Internal" not in p.head and b"X-Public: 2\r\n" in p.head
