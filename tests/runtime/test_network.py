"""Host networking, on hosts simulated by network namespaces of the test's own.

Every namespace, link, rule and route a test makes lives inside namespaces named uniquely for
that test and is removed with them, also when the test fails. Only 10.213.x.y addresses assigned
inside those namespaces are used.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runtime.network import HostNetwork, NetworkError

pytestmark = pytest.mark.root


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


@dataclass
class Lab:
    """Namespaces and processes made for one test; `close()` removes them all."""

    tag: str
    tmp: Path
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def netns(self, role: str) -> str:
        name = f"paas-{role}-{self.tag}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        return name

    def wire(self, a: str, a_ip: str, b: str, b_ip: str, prefix: int = 30) -> None:
        """Connect two namespaces with a veth pair addressed a_ip and b_ip."""
        left, right = f"w{secrets.token_hex(5)}", f"w{secrets.token_hex(5)}"
        sh("ip", "link", "add", left, "netns", a, "type", "veth", "peer", "name", right, "netns", b)
        for ns, dev, ip in ((a, left, a_ip), (b, right, b_ip)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/{prefix}", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def container(self) -> int:
        """A process in a network namespace of its own, like a container's PID 1."""
        proc = subprocess.Popen(["unshare", "--net", "--", "sleep", "600"])
        self.procs.append(proc)
        for _ in range(100):
            try:
                if Path(f"/proc/{proc.pid}/ns/net").resolve() != Path("/proc/self/ns/net").resolve():
                    break
            except FileNotFoundError:
                pass
            subprocess.run(["sleep", "0.02"])
        return proc.pid

    def host(self, name: str, subnet: str) -> HostNetwork:
        ns = self.netns(name)
        net = HostNetwork(f"pbr{self.tag}", subnet, self.tmp / name, netns=ns)
        net.ensure()
        return net

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tag=secrets.token_hex(4), tmp=tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def in_container(pid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return sh("nsenter", "-t", str(pid), "-n", "--", *argv, check=False)


def pings(pid: int, ip: str) -> bool:
    return in_container(pid, "busybox", "ping", "-c", "1", "-W", "2", ip).returncode == 0


SERVER = (
    "import socket, sys\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], 8080)); s.listen(); print('listening', flush=True)\n"
    "c, peer = s.accept(); print(peer[0], flush=True)\n"
)


def tcp_peer_seen_by(server_pid: int, server_ip: str, client: int) -> str:
    """Connect from `client` to a TCP server in `server_pid`'s netns; return the peer it saw."""
    server = subprocess.Popen(
        ["nsenter", "-t", str(server_pid), "-n", "--", sys.executable, "-c", SERVER, server_ip],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "listening"
        in_container(client, sys.executable, "-c",
                     f"import socket; socket.create_connection(({server_ip!r}, 8080), timeout=5)")
        return server.communicate(timeout=30)[0].strip()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_it_gives_a_container_an_address_loopback_and_a_default_route(lab: Lab) -> None:
    net = lab.host("h1", "10.213.1.0/24")
    pid = lab.container()
    att = net.attach("web-1", pid, nat=False)
    assert (att.ip, att.gateway, att.prefixlen) == ("10.213.1.2", "10.213.1.1", 24)
    links = {i["ifname"]: i for i in json.loads(in_container(pid, "ip", "-j", "addr").stdout)}
    assert set(links) == {"lo", "eth0"}
    assert "UP" in links["lo"]["flags"]
    assert {(a["local"], a["prefixlen"]) for a in links["eth0"]["addr_info"] if a["family"] == "inet"} == {
        ("10.213.1.2", 24)
    }
    [default] = json.loads(in_container(pid, "ip", "-j", "route", "show", "default").stdout)
    assert default["gateway"] == "10.213.1.1"
    assert pings(pid, "10.213.1.1")
    assert pings(pid, "127.0.0.1")


def test_it_connects_two_containers_on_one_host(lab: Lab) -> None:
    net = lab.host("h1", "10.213.1.0/24")
    a, b = lab.container(), lab.container()
    net.attach("a", a, nat=False)
    att_b = net.attach("b", b, nat=False)
    assert pings(a, att_b.ip)


def test_it_reaches_a_container_on_another_host_through_routes(lab: Lab) -> None:
    h1 = lab.host("h1", "10.213.1.0/24")
    h2 = lab.host("h2", "10.213.2.0/24")
    lab.wire(h1.netns or "", "10.213.0.1", h2.netns or "", "10.213.0.2")
    h1.route_add("10.213.2.0/24", via="10.213.0.2")
    h2.route_add("10.213.1.0/24", via="10.213.0.1")
    c1, c2 = lab.container(), lab.container()
    h1.attach("c1", c1, nat=True)
    att2 = h2.attach("c2", c2, nat=True)
    assert pings(c1, att2.ip)
    assert tcp_peer_seen_by(c2, att2.ip, client=c1) == "10.213.1.2"
    # The peer sees the container's own address, not its host's: cross-host traffic is not NATed.
    nat_rules = sh("ip", "netns", "exec", h1.netns or "", "iptables", "-t", "nat", "-S", h1.chain).stdout
    assert "-d 10.213.2.0/24" in nat_rules and "RETURN" in nat_rules
    assert h1.routes() == {"10.213.2.0/24": "10.213.0.2"}


def test_it_gives_outbound_access_only_to_containers_with_nat(lab: Lab) -> None:
    h1 = lab.host("h1", "10.213.1.0/24")
    outside = lab.netns("out")
    # The outside world knows the host's address but has no route to its container subnet.
    lab.wire(h1.netns or "", "10.213.9.1", outside, "10.213.9.2")
    with_nat, without = lab.container(), lab.container()
    h1.attach("with-nat", with_nat, nat=True)
    h1.attach("without-nat", without, nat=False)
    assert pings(with_nat, "10.213.9.2")
    assert not pings(without, "10.213.9.2")


def test_it_removes_the_veth_rule_and_address_on_detach(lab: Lab) -> None:
    net = lab.host("h1", "10.213.1.0/24")
    pid = lab.container()
    att = net.attach("gone", pid, nat=True)
    net.detach("gone")
    links = sh("ip", "-n", net.netns or "", "-j", "link").stdout
    assert att.host_veth not in links
    assert "eth0" not in in_container(pid, "ip", "link").stdout
    assert att.ip not in sh("ip", "netns", "exec", net.netns or "", "iptables", "-t", "nat", "-S").stdout
    assert net.ipam.allocations() == {}
    assert net.attachments() == []
    net.detach("gone")  # idempotent


def test_it_keeps_addresses_across_a_restart(lab: Lab) -> None:
    net = lab.host("h1", "10.213.1.0/24")
    first = net.attach("one", lab.container(), nat=False)
    restarted = HostNetwork(net.bridge, "10.213.1.0/24", net.state_dir, netns=net.netns)
    restarted.ensure()
    second = restarted.attach("two", lab.container(), nat=False)
    assert first.ip != second.ip
    assert [a.container_id for a in restarted.attachments()] == ["one", "two"]
    restarted.detach("one")
    assert list(restarted.ipam.allocations().values()) == ["two"]


def test_it_tears_down_everything_it_made(lab: Lab) -> None:
    net = lab.host("h1", "10.213.1.0/24")
    lab.wire(net.netns or "", "10.213.0.1", lab.netns("h2"), "10.213.0.2")
    net.route_add("10.213.2.0/24", via="10.213.0.2")
    net.attach("x", lab.container(), nat=True)
    net.teardown()
    ns = net.netns or ""
    assert net.bridge not in sh("ip", "-n", ns, "link").stdout
    assert "10.213.2.0" not in sh("ip", "-n", ns, "route").stdout
    rules = sh("ip", "netns", "exec", ns, "iptables-save").stdout
    assert "paas:" not in rules and net.chain not in rules


def test_it_refuses_to_attach_a_process_that_does_not_exist(lab: Lab) -> None:
    net = lab.host("h1", "10.213.1.0/24")
    with pytest.raises(NetworkError, match="process 999999999 does not exist"):
        net.attach("ghost", 999999999, nat=False)
    assert net.ipam.allocations() == {}


def test_it_refuses_a_route_overlapping_its_own_subnet(lab: Lab) -> None:
    net = lab.host("h1", "10.213.1.0/24")
    with pytest.raises(NetworkError, match="overlaps"):
        net.route_add("10.213.0.0/16", via="10.213.0.2")
    with pytest.raises(NetworkError, match="invalid gateway"):
        net.route_add("10.213.2.0/24", via="not-an-ip")


@pytest.mark.parametrize(
    ("bridge", "subnet", "message"),
    [
        ("bridge-name-far-too-long", "10.213.1.0/24", "invalid bridge name"),
        ("pbr0", "10.213.1.0/33", "invalid subnet"),
        ("pbr0", "10.213.1.7/24", "invalid subnet"),
        ("pbr0", "10.213.1.0/30", "too small"),
    ],
)
def test_it_refuses_bad_configuration(tmp_path: Path, bridge: str, subnet: str, message: str) -> None:
    with pytest.raises(NetworkError, match=message):
        HostNetwork(bridge, subnet, tmp_path)


def test_it_refuses_a_container_id_that_is_not_a_name(lab: Lab) -> None:
    net = lab.host("h1", "10.213.1.0/24")
    with pytest.raises(NetworkError, match="invalid container id"):
        net.attach("../../etc", lab.container(), nat=False)


def test_it_records_a_reserved_attachment_that_detach_undoes(lab: Lab) -> None:
    net = lab.host("h1", "10.213.1.0/24")
    ns = net.netns or ""
    att = net.reserve("plugged", host_veth=f"p{lab.tag}", nat=True)
    # Someone else (the runtime's setup process) plugs the veth in.
    sh("ip", "-n", ns, "link", "add", att.host_veth, "type", "veth", "peer", "name", f"q{lab.tag}")
    net.nat_enable(att)
    net.nat_enable(att)
    rules = sh("ip", "netns", "exec", ns, "iptables", "-t", "nat", "-S", net.chain).stdout
    assert rules.count(f"{att.ip}/32") == 1
    assert [a.container_id for a in net.attachments()] == ["plugged"]
    net.detach("plugged")
    assert att.host_veth not in sh("ip", "-n", ns, "link").stdout
    assert att.ip not in sh("ip", "netns", "exec", ns, "iptables", "-t", "nat", "-S").stdout
    assert net.ipam.allocations() == {}
