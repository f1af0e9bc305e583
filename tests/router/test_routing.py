"""The routing decision: Host header -> app -> forward, or an error page. No sockets."""

from __future__ import annotations

from router.routing import Forward, Refuse, RouteTable, host_name
from tests.router.helpers import route


def table() -> RouteTable:
    return RouteTable(
        "apps.test",
        apps={
            "web1": route("web1", ["10.0.0.1:5000", "10.0.0.2:5000"]),
            "shop": route("shop", ["10.0.0.3:5000"]),
            "blog": route("blog", ["10.0.0.4:5000"]),
            "down": route("down", ["10.0.0.5:5000"], maintenance=True),
            "idle": route("idle", []),
        },
        domains={"www.example.com": "shop", "*.example.com": "blog", "*.eu.example.com": "web1"},
        version=3,
    )


def app_of(decision: object) -> str:
    assert isinstance(decision, Forward)
    return decision.route.app


def test_it_routes_the_default_domain_to_the_app_named_by_the_first_label() -> None:
    assert app_of(table().decide("web1.apps.test")) == "web1"


def test_it_ignores_the_port_case_and_a_trailing_dot_of_the_host() -> None:
    assert app_of(table().decide("WEB1.Apps.Test.:8080")) == "web1"


def test_it_routes_a_custom_domain() -> None:
    assert app_of(table().decide("www.example.com")) == "shop"


def test_it_prefers_an_exact_custom_domain_to_a_wildcard() -> None:
    assert app_of(table().decide("www.example.com")) == "shop"
    assert app_of(table().decide("news.example.com")) == "blog"


def test_it_routes_a_wildcard_domain_most_specific_first() -> None:
    assert app_of(table().decide("paris.eu.example.com")) == "web1"
    assert app_of(table().decide("a.b.example.com")) == "blog"


def test_it_does_not_route_the_wildcard_parent_itself() -> None:
    decision = table().decide("example.com")
    assert isinstance(decision, Refuse) and decision.status == 404


def test_it_answers_404_for_an_unknown_host() -> None:
    decision = table().decide("nope.apps.test")
    assert isinstance(decision, Refuse)
    assert (decision.status, decision.code) == (404, "no_such_app")


def test_it_does_not_take_a_deeper_name_under_the_default_domain_for_an_app() -> None:
    decision = table().decide("x.web1.apps.test")
    assert isinstance(decision, Refuse) and decision.status == 404


def test_it_answers_503_for_an_app_without_ready_endpoints() -> None:
    decision = table().decide("idle.apps.test")
    assert isinstance(decision, Refuse)
    assert (decision.status, decision.code, decision.app) == (503, "no_web_process", "idle")


def test_it_answers_503_maintenance_for_an_app_in_maintenance_mode() -> None:
    decision = table().decide("down.apps.test")
    assert isinstance(decision, Refuse)
    assert (decision.status, decision.code, decision.app) == (503, "maintenance", "down")


def test_it_answers_400_without_a_host_header() -> None:
    decision = table().decide(None)
    assert isinstance(decision, Refuse) and decision.status == 400


def test_it_forgets_cached_decisions_when_the_table_changes() -> None:
    t = table()
    assert isinstance(t.decide("new.example.org"), Refuse)
    t.patch({"new": route("new", ["10.0.0.9:5000"])}, {"new.example.org": "new"}, 4)
    assert app_of(t.decide("new.example.org")) == "new"
    t.patch({"new": None}, {"new.example.org": None}, 5)
    assert isinstance(t.decide("new.example.org"), Refuse)
    assert t.version == 5


def test_it_reduces_ipv6_literal_hosts_without_cutting_the_address() -> None:
    assert host_name("[::1]:8080") == "[::1]"
    assert host_name("Example.COM:443") == "example.com"
