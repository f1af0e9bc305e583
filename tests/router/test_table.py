"""The route table contract: parsing what is in Redis, and the writer the control plane calls."""

from __future__ import annotations

import json

import pytest
import redis

from router.table import (
    APPS_KEY,
    CHANGES_CHANNEL,
    DOMAINS_KEY,
    VERSION_KEY,
    RouteError,
    decode_app,
    parse_change,
    parse_endpoint,
    route_app_delete,
    route_app_set,
    route_domain_delete,
    route_domain_set,
    route_table_replace,
)


def test_it_parses_ipv4_and_ipv6_endpoints() -> None:
    assert parse_endpoint("10.1.0.5:5000").host == "10.1.0.5"
    six = parse_endpoint("[fd00::5]:5000")
    assert (six.host, six.port, six.key) == ("fd00::5", 5000, "[fd00::5]:5000")


@pytest.mark.parametrize("bad", ["10.1.0.5", "10.1.0.5:", "10.1.0.5:0", "10.1.0.5:70000", ":80", "x:y", 5000])
def test_it_refuses_a_malformed_endpoint_with_a_clear_message(bad: object) -> None:
    with pytest.raises(RouteError, match=r"endpoint must (look like|be a string)"):
        parse_endpoint(bad)  # type: ignore[arg-type]


def test_it_decodes_an_app_entry() -> None:
    r = decode_app("web1", '{"endpoints": ["10.0.0.1:5000"], "maintenance": true}')
    assert r.app == "web1" and r.maintenance and r.endpoints[0].port == 5000


@pytest.mark.parametrize("raw", ["not json", "[]", '{"endpoints": "10.0.0.1:5000"}', '{"maintenance": "yes"}'])
def test_it_refuses_a_malformed_app_entry(raw: str) -> None:
    with pytest.raises(RouteError):
        decode_app("web1", raw)


def test_it_refuses_garbled_change_messages() -> None:
    assert parse_change('{"version": 3, "apps": ["a"]}') == (3, ["a"], [])
    for raw in ("nope", '{"apps": []}', '{"version": "3"}'):
        with pytest.raises(RouteError):
            parse_change(raw)


def test_it_writes_an_app_bumps_the_version_and_announces_the_change(redis_client: redis.Redis) -> None:
    pubsub = redis_client.pubsub()
    pubsub.subscribe(CHANGES_CHANNEL)
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    version = route_app_set(redis_client, "web1", ["10.0.0.1:5000"])
    assert json.loads(redis_client.hget(APPS_KEY, "web1")) == {"endpoints": ["10.0.0.1:5000"], "maintenance": False}  # type: ignore[arg-type]
    assert int(redis_client.get(VERSION_KEY)) == version  # type: ignore[arg-type]
    message = pubsub.get_message(timeout=2)
    assert message is not None and json.loads(message["data"]) == {"version": version, "apps": ["web1"]}
    pubsub.close()


def test_it_removes_an_apps_domains_with_the_app(redis_client: redis.Redis) -> None:
    route_app_set(redis_client, "shop", ["10.0.0.1:5000"])
    route_domain_set(redis_client, "WWW.Example.com", "shop")
    route_domain_set(redis_client, "*.example.org", "shop")
    route_domain_set(redis_client, "blog.example.com", "blog")
    assert redis_client.hget(DOMAINS_KEY, "www.example.com") == b"shop"
    route_app_delete(redis_client, "shop")
    assert redis_client.hgetall(DOMAINS_KEY) == {b"blog.example.com": b"blog"}
    assert redis_client.hget(APPS_KEY, "shop") is None
    route_domain_delete(redis_client, "blog.example.com")
    assert redis_client.hgetall(DOMAINS_KEY) == {}


def test_it_refuses_bad_names_before_writing_anything(redis_client: redis.Redis) -> None:
    with pytest.raises(RouteError, match="not a host name"):
        route_domain_set(redis_client, "bad host!", "shop")
    with pytest.raises(RouteError, match="not an app name"):
        route_app_set(redis_client, "Bad_App", ["10.0.0.1:5000"])
    with pytest.raises(RouteError, match="endpoint"):
        route_app_set(redis_client, "web1", ["nowhere"])
    assert redis_client.get(VERSION_KEY) is None


def test_it_replaces_several_routes_as_one_change(redis_client: redis.Redis) -> None:
    route_app_set(redis_client, "old", ["10.0.0.9:5000"])
    version = route_table_replace(
        redis_client,
        apps={"a": (["10.0.0.1:5000"], False), "b": ([], True)},
        domains={"a.example.com": "a"},
        existing_apps=["old", "a"],
    )
    assert version == 2
    assert set(redis_client.hkeys(APPS_KEY)) == {b"a", b"b"}
