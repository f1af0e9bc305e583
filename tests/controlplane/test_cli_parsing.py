"""The CLI's pure parts: what the user types becomes what the API expects, or a clear message."""

from __future__ import annotations

import pytest

from paas_cli.parsing import (
    ScaleUpdate,
    UsageError,
    app_from_git_url,
    normalize_server,
    parse_assignments,
    parse_keys,
    parse_scale,
    parse_size,
    parse_version,
)


def test_it_parses_key_value_pairs_keeping_equals_signs_and_empty_values() -> None:
    assert parse_assignments(["A=1", "URL=postgres://x?a=b", "EMPTY="]) == {
        "A": "1", "URL": "postgres://x?a=b", "EMPTY": "",
    }


def test_it_lets_a_later_pair_win_over_an_earlier_one() -> None:
    assert parse_assignments(["A=1", "A=2"]) == {"A": "2"}


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("A", "the '=' is missing"),
        ("=1", "not a valid config key"),
        ("1A=x", "not a valid config key"),
        ("A-B=x", "not a valid config key"),
        ("A B=x", "not a valid config key"),
    ],
)
def test_it_refuses_malformed_pairs_with_a_message(pair: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_assignments([pair])


def test_it_asks_for_at_least_one_pair() -> None:
    with pytest.raises(UsageError, match="at least one KEY=VALUE"):
        parse_assignments([])


def test_it_checks_keys_to_unset() -> None:
    assert parse_keys(["A", "_B9"]) == ["A", "_B9"]
    with pytest.raises(UsageError, match="not a valid config key"):
        parse_keys(["A=1"])


def test_it_parses_scale_quantities_and_sizes() -> None:
    assert parse_scale(["web=3", "worker=1:512M", "clock=1g", "big=0:basic"]) == [
        ScaleUpdate("web", 3, None),
        ScaleUpdate("worker", 1, "512M"),
        ScaleUpdate("clock", None, "1G"),
        ScaleUpdate("big", 0, "basic"),
    ]


def test_it_sends_only_what_was_given_when_scaling() -> None:
    assert ScaleUpdate("web", 2).as_api() == {"type": "web", "quantity": 2}
    assert ScaleUpdate("web", None, "1G").as_api() == {"type": "web", "size": "1G"}
    both = {"type": "web", "quantity": 0, "size": "basic"}
    assert ScaleUpdate("web", 0, "basic").as_api() == both


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("web", "not TYPE=QUANTITY"),
        ("web=", "not TYPE=QUANTITY"),
        ("Web=1", "not a process type"),
        ("1web=1", "not a process type"),
        ("web=-1", "between 0 and 100"),
        ("web=101", "between 0 and 100"),
        ("web=2:", "no size after it"),
        ("web=2:lots", "not a size"),
        ("web=x:512M", "not a whole number"),
        ("web=512K", "not a size"),
    ],
)
def test_it_refuses_malformed_scale_arguments(arg: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_scale([arg])


def test_it_refuses_the_same_process_type_twice() -> None:
    with pytest.raises(UsageError, match="given twice"):
        parse_scale(["web=1", "web=2"])


def test_it_normalizes_sizes() -> None:
    assert parse_size("BASIC") == "basic"
    assert parse_size("256m") == "256M"
    assert parse_size("512mb") == "512MB"
    with pytest.raises(UsageError):
        parse_size("0M")


@pytest.mark.parametrize(("text", "number"), [("v1", 1), ("V12", 12), ("3", 3)])
def test_it_reads_release_versions(text: str, number: int) -> None:
    assert parse_version(text) == number


@pytest.mark.parametrize("text", ["v", "v0", "x3", "v1.2", "", "-1"])
def test_it_refuses_what_is_not_a_version(text: str) -> None:
    with pytest.raises(UsageError, match="not a release version"):
        parse_version(text)


@pytest.mark.parametrize(
    ("url", "app"),
    [
        ("http://127.0.0.1:8000/git/demo.git", "demo"),
        ("https://paas.example.com/git/my-app.git/", "my-app"),
        ("https://user@paas.example.com:8443/prefix/git/web1.git", "web1"),
        ("/srv/paas/git/local.git", "local"),
        ("http://example.com/demo.git", None),
        ("git@github.com:someone/demo.git", None),
        ("http://example.com/git/.git", None),
    ],
)
def test_it_finds_the_app_in_a_remote_url(url: str, app: str | None) -> None:
    assert app_from_git_url(url) == app


def test_it_normalizes_server_urls() -> None:
    assert normalize_server("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert normalize_server("paas.example.com") == "http://paas.example.com"
    assert normalize_server("https://paas.example.com/base") == "https://paas.example.com/base"
    for bad in ["", "ftp://x", "http://", "http://x/?a=1"]:
        with pytest.raises(UsageError):
            normalize_server(bad)
