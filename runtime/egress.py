"""The egress policy of build containers: what a buildpack may reach, as iptables rules.

A buildpack is code the app's author controls. Its build container may reach public addresses
on the ports package managers use (TCP 80 and 443), the DNS resolvers the container is given
(UDP and TCP 53), and the extra destinations the host's operator allows
(`PAAS_BUILD_EGRESS_ALLOW`); everything else is rejected: the host itself on any of its addresses,
the containers of this host and of the others, private, shared (CGNAT), link-local (the cloud
metadata address), loopback, multicast and reserved ranges. App containers are not filtered.

This module is pure: it parses the setting and the resolver list and writes the rules;
`runtime.network.HostNetwork` applies them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ALLOW_SETTING = "PAAS_BUILD_EGRESS_ALLOW"
PUBLIC_TCP_PORTS = (80, 443)
DNS_PORT = 53
# What a build container never reaches on TCP 80/443 (nor anywhere else), unless allowed.
NON_PUBLIC = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network" (RFC 791)
        "10.0.0.0/8",  # private (RFC 1918)
        "100.64.0.0/10",  # shared address space, carrier-grade NAT (RFC 6598)
        "127.0.0.0/8",  # loopback (RFC 1122)
        "169.254.0.0/16",  # link-local, with the cloud metadata address 169.254.169.254 (RFC 3927)
        "172.16.0.0/12",  # private (RFC 1918)
        "192.168.0.0/16",  # private (RFC 1918)
        "224.0.0.0/4",  # multicast (RFC 5771)
        "240.0.0.0/4",  # reserved, and the limited broadcast address (RFC 1112)
    )
)
# Build containers get no IPv6 address; what IPv6 they could still speak (link-local, e.g. to
# the host's fe80:: address on the bridge, or ULAs of RFC 4193) is dropped on their bridge port.


class EgressError(ValueError):
    """A bad egress setting; the message says which entry and what is expected."""


@dataclass(frozen=True)
class Allowed:
    """One extra destination build containers may reach: a network and a TCP port."""

    network: ipaddress.IPv4Network
    port: int

    def __str__(self) -> str:
        return f"{self.network}:{self.port}"


def parse_allow(value: str, setting: str = ALLOW_SETTING) -> tuple[Allowed, ...]:
    """Parse `ADDRESS[/PREFIX]:PORT,...` (TCP; IPv4): the destinations allowed besides the rest.

    An empty value allows nothing extra. Raise EgressError naming the bad entry.
    """
    out: list[Allowed] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        example = "e.g. 10.2.3.4/32:443 for a package mirror"
        addr, sep, port_s = entry.rpartition(":")
        if not sep or not addr:
            raise EgressError(f"{setting}: {entry!r} has no port; write ADDRESS[/PREFIX]:PORT ({example})")
        if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
            raise EgressError(f"{setting}: {entry!r}: the port must be a number from 1 to 65535 ({example})")
        try:
            net = ipaddress.ip_network(addr, strict=True)
        except ValueError as e:
            raise EgressError(f"{setting}: {entry!r}: {e} ({example})") from None
        if not isinstance(net, ipaddress.IPv4Network):
            raise EgressError(f"{setting}: {entry!r}: build containers have no IPv6; give an IPv4 address")
        out.append(Allowed(net, int(port_s)))
    return tuple(out)


def resolvers(resolv_conf: str) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 name servers a container is given: those of the host's resolv.conf but loopback.

    The same choice as the container's own /etc/resolv.conf (see `container_resolv_conf`).
    """
    out: list[ipaddress.IPv4Address] = []
    for line in container_resolv_conf(resolv_conf).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                addr = ipaddress.ip_address(parts[1])
            except ValueError:
                continue
            if isinstance(addr, ipaddress.IPv4Address) and addr not in out:
                out.append(addr)
    return tuple(out)


def container_resolv_conf(host_resolv_conf: str) -> str:
    """The host's resolv.conf minus loopback name servers: the container's loopback is its own."""
    kept = [
        ln for ln in host_resolv_conf.splitlines()
        if not (ln.startswith("nameserver") and (" 127." in ln or " ::1" in ln))
    ]
    return "\n".join(kept) + "\n"


def policy_rules(
    chain: str,
    *,
    subnet: ipaddress.IPv4Network,
    other_hosts_chain: str,
    dns: Sequence[ipaddress.IPv4Address],
    allow: Iterable[Allowed],
    comment: str,
) -> list[list[str]]:
    """The rules of `chain`, which sees every packet a build container sends to the host or
    through it: RETURN lets it on (to the rest of INPUT/FORWARD), REJECT refuses it at once.

    `other_hosts_chain` rejects the container subnets of the other hosts (kept up to date as
    routes come and go); `comment` tags every rule.
    """
    tag = ["-m", "comment", "--comment", comment]
    reject = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]
    rules: list[list[str]] = []
    for server in dns:
        for proto in ("udp", "tcp"):
            rules.append(["-A", chain, "-d", f"{server}/32", "-p", proto, "--dport", str(DNS_PORT), *tag, "-j", "RETURN"])
    # Other containers, here and on the other hosts, are never reached, not even when allowed.
    rules.append(["-A", chain, "-d", str(subnet), "-m", "addrtype", "!", "--dst-type", "LOCAL", *tag, *reject])
    rules.append(["-A", chain, *tag, "-j", other_hosts_chain])
    for a in allow:
        rules.append(["-A", chain, "-d", str(a.network), "-p", "tcp", "--dport", str(a.port), *tag, "-j", "RETURN"])
    # The host itself, on any of its addresses (the gateway, loopback, its public address).
    rules.append(["-A", chain, "-m", "addrtype", "--dst-type", "LOCAL", *tag, *reject])
    for net in NON_PUBLIC:
        rules.append(["-A", chain, "-d", str(net), *tag, *reject])
    ports = ",".join(str(p) for p in PUBLIC_TCP_PORTS)
    rules.append(["-A", chain, "-p", "tcp", "-m", "multiport", "--dports", ports, *tag, "-j", "RETURN"])
    rules.append(["-A", chain, *tag, *reject])
    return rules

