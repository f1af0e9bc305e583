"""The build containers' egress policy as a rule set: what it lets through, read rule by rule.

There is no internet here, so what the policy does for public addresses is asked of the rules
themselves: `verdict` reads the generated iptables rules the way iptables does (first match
wins). The rules applied to real packets are tested in test_build_egress.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import pytest

from runtime.egress import (
    Allowed,
    EgressError,
    container_resolv_conf,
    parse_allow,
    policy_rules,
    resolvers,
)

SUBNET = ipaddress.IPv4Network("10.88.0.0/24")
HOST = [ipaddress.IPv4Address("10.88.0.1"), ipaddress.IPv4Address("192.0.2.2")]
DNS = [ipaddress.IPv4Address("10.255.255.53")]
OTHER_HOSTS = [ipaddress.IPv4Network("10.88.1.0/24"), ipaddress.IPv4Network("45.10.0.0/24")]


def verdict(dst: str, port: int, proto: str = "tcp", allow: Iterable[Allowed] = ()) -> bool:
    """Whether the policy lets a packet from a build container to dst:port on (RETURN)."""
    rules = policy_rules("P", subnet=SUBNET, other_hosts_chain="O", dns=DNS, allow=allow, comment="c")
    addr = ipaddress.IPv4Address(dst)
    local = addr in HOST or addr in ipaddress.IPv4Network("127.0.0.0/8")
    for rule in rules:
        assert rule[:2] == ["-A", "P"]
        matched, target = True, ""
        args = rule[2:]
        i = 0
        while i < len(args):
            opt, val = args[i], args[i + 1] if i + 1 < len(args) else ""
            if opt == "-d":
                matched &= addr in ipaddress.IPv4Network(val)
            elif opt == "-p":
                matched &= proto == val
            elif opt == "--dport":
                matched &= port == int(val)
            elif opt == "--dports":
                matched &= port in {int(p) for p in val.split(",")}
            elif opt == "!" and val == "--dst-type":
                assert args[i + 2] == "LOCAL"
                matched &= not local
                i += 1
            elif opt == "--dst-type":
                assert val == "LOCAL"
                matched &= local
            elif opt == "-j":
                target = val
            elif opt not in ("-m", "--comment", "--reject-with"):
                raise AssertionError(f"this reader does not know {opt}")
            i += 2
        if not matched:
            continue
        if target == "O":  # the other hosts' chain rejects their subnets, else goes on
            if any(addr in net for net in OTHER_HOSTS):
                return False
            continue
        assert target in ("RETURN", "REJECT")
        return target == "RETURN"
    raise AssertionError("no rule matched: the policy has no last rule")


@pytest.mark.parametrize("dst", ["151.101.0.223", "104.16.2.35", "203.0.113.80", "8.8.4.4"])
@pytest.mark.parametrize("port", [80, 443])
def test_it_lets_build_containers_reach_public_addresses_on_80_and_443(dst: str, port: int) -> None:
    assert verdict(dst, port)


@pytest.mark.parametrize(("dst", "port", "proto"), [
    ("151.101.0.223", 22, "tcp"),
    ("151.101.0.223", 6379, "tcp"),
    ("151.101.0.223", 443, "udp"),
    ("8.8.8.8", 53, "udp"),  # only the resolvers the container is given
])
def test_it_refuses_public_addresses_on_other_ports(dst: str, port: int, proto: str) -> None:
    assert not verdict(dst, port, proto)


@pytest.mark.parametrize("dst", [
    "10.1.2.3", "172.16.0.9", "172.31.255.1", "192.168.1.10",  # RFC 1918
    "100.64.0.1", "100.127.255.254",  # CGNAT
    "169.254.169.254", "169.254.1.1",  # link-local, the cloud metadata address
    "127.0.0.1", "0.0.0.0", "224.0.0.251", "255.255.255.255",
])
@pytest.mark.parametrize("port", [80, 443])
def test_it_refuses_private_link_local_and_reserved_addresses_even_on_80_and_443(dst: str, port: int) -> None:
    assert not verdict(dst, port)


@pytest.mark.parametrize(("dst", "port"), [
    ("10.88.0.1", 443),  # the bridge gateway: the host
    ("192.0.2.2", 443),  # the host's own public address
    ("192.0.2.2", 80),
    ("10.88.0.7", 443),  # another container on this host
    ("10.88.1.5", 443),  # a container on another host
    ("45.10.0.9", 443),  # ... even when that host's subnet is a public range
])
def test_it_refuses_the_host_and_every_container(dst: str, port: int) -> None:
    assert not verdict(dst, port)


def test_it_lets_dns_through_to_the_containers_resolvers_only() -> None:
    assert verdict("10.255.255.53", 53, "udp")
    assert verdict("10.255.255.53", 53, "tcp")
    assert not verdict("10.255.255.53", 80)
    assert not verdict("10.255.255.54", 53, "udp")


def test_it_lets_allowed_destinations_through_on_their_port_only() -> None:
    allow = parse_allow("10.2.3.4/32:443, 192.168.50.0/24:8080,192.0.2.2/32:3128")
    assert verdict("10.2.3.4", 443, allow=allow)
    assert not verdict("10.2.3.4", 80, allow=allow)
    assert not verdict("10.2.3.5", 443, allow=allow)
    assert verdict("192.168.50.77", 8080, allow=allow)
    assert verdict("192.0.2.2", 3128, allow=allow)  # a proxy on the host itself, allowed
    assert not verdict("192.0.2.2", 443, allow=allow)


def test_it_never_lets_an_allowed_range_reach_containers() -> None:
    allow = parse_allow("10.0.0.0/8:443")
    assert verdict("10.9.9.9", 443, allow=allow)
    assert not verdict("10.88.0.7", 443, allow=allow)
    assert not verdict("10.88.1.5", 443, allow=allow)


def test_it_parses_the_allow_setting() -> None:
    assert parse_allow("") == ()
    assert parse_allow(" , ") == ()
    assert [str(a) for a in parse_allow("10.2.3.4/32:443,10.2.3.5:80")] == ["10.2.3.4/32:443", "10.2.3.5/32:80"]


@pytest.mark.parametrize(("value", "message"), [
    ("10.2.3.4/32", "has no port"),
    ("10.2.3.4/32:", "port must be a number from 1 to 65535"),
    ("10.2.3.4/32:0", "port must be a number from 1 to 65535"),
    ("10.2.3.4/32:70000", "port must be a number from 1 to 65535"),
    ("10.2.3.4/32:https", "port must be a number from 1 to 65535"),
    ("10.2.3.4/33:443", "'10.2.3.4/33:443'"),
    ("10.2.3.4/24:443", "has host bits set"),
    ("mirror.internal:443", "does not appear to be an IPv4 or IPv6 network"),
    ("fd00::1/128:443", "build containers have no IPv6"),
])
def test_it_refuses_a_bad_allow_entry_naming_it(value: str, message: str) -> None:
    with pytest.raises(EgressError, match="PAAS_BUILD_EGRESS_ALLOW") as e:
        parse_allow(f"10.9.9.9/32:443,{value}")
    assert message in str(e.value)
    assert "e.g. 10.2.3.4/32:443" in str(e.value) or "IPv6" in str(e.value)


def test_it_takes_the_resolvers_the_container_is_given() -> None:
    conf = (
        "# comment\nsearch example.internal\nnameserver 127.0.0.53\nnameserver 10.255.255.53\n"
        "nameserver ::1\nnameserver 2001:db8::53\nnameserver 192.0.2.53\nnameserver 10.255.255.53\n"
    )
    assert [str(a) for a in resolvers(conf)] == ["10.255.255.53", "192.0.2.53"]
    kept = container_resolv_conf(conf)
    assert "127.0.0.53" not in kept and "::1" not in kept
    assert "search example.internal" in kept and "nameserver 10.255.255.53" in kept
