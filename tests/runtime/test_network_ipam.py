"""Host-local address allocation, kept on disk."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from runtime.ipam import IPAM, IPAMError, SubnetExhausted


def test_it_hands_out_addresses_after_the_gateway(tmp_path: Path) -> None:
    ipam = IPAM("10.213.1.0/24", tmp_path)
    assert ipam.gateway == ipaddress.IPv4Address("10.213.1.1")
    assert str(ipam.allocate("a")) == "10.213.1.2"
    assert str(ipam.allocate("b")) == "10.213.1.3"


def test_it_returns_the_same_address_to_the_same_container(tmp_path: Path) -> None:
    ipam = IPAM("10.213.1.0/24", tmp_path)
    assert ipam.allocate("a") == ipam.allocate("a")
    assert len(ipam.allocations()) == 1


def test_it_never_hands_out_an_address_twice_across_restarts(tmp_path: Path) -> None:
    seen = {IPAM("10.213.1.0/24", tmp_path).allocate(f"c{i}") for i in range(50)}
    seen |= {IPAM("10.213.1.0/24", tmp_path).allocate(f"d{i}") for i in range(50)}
    assert len(seen) == 100


def test_it_releases_an_address_and_reuses_it_only_after_the_others(tmp_path: Path) -> None:
    ipam = IPAM("10.213.1.0/29", tmp_path)  # .2 to .6 are usable
    first = ipam.allocate("a")
    ipam.release("a")
    assert ipam.allocations() == {}
    following = [ipam.allocate(f"n{i}") for i in range(4)]
    assert first not in following
    assert ipam.allocate("last") == first


def test_it_says_so_when_the_subnet_is_full(tmp_path: Path) -> None:
    ipam = IPAM("10.213.1.0/29", tmp_path)
    for i in range(5):
        ipam.allocate(f"c{i}")
    with pytest.raises(SubnetExhausted, match=r"no free address left in 10\.213\.1\.0/29"):
        ipam.allocate("one-too-many")


def test_it_never_hands_out_network_gateway_or_broadcast(tmp_path: Path) -> None:
    ipam = IPAM("10.213.1.0/29", tmp_path)
    got = {str(ipam.allocate(f"c{i}")) for i in range(5)}
    assert got == {f"10.213.1.{i}" for i in range(2, 7)}


def test_it_keeps_subnets_apart(tmp_path: Path) -> None:
    IPAM("10.213.1.0/24", tmp_path).allocate("a")
    assert IPAM("10.213.2.0/24", tmp_path).allocations() == {}


@pytest.mark.parametrize("subnet", ["nonsense", "10.213.1.0/31", "10.213.1.5/24", "fd00::/64"])
def test_it_refuses_a_bad_subnet(tmp_path: Path, subnet: str) -> None:
    with pytest.raises(IPAMError):
        IPAM(subnet, tmp_path)
