"""Build containers reach the package registries, not the platform's insides: real packets.

A host is simulated by a network namespace of the test's own with the runtime's bridge in it;
a second namespace is the host's private network (a LAN at 172.29.0.0/24 with a resolver and an
allowed mirror on it, and a route to one public address). Every namespace, process and rule is
removed with the namespaces, also when a test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.egress import parse_allow
from runtime.network import HostNetwork
from tests.runtime.daemon_fixtures import Daemon, Image, tiny_fixture  # noqa: F401  (fixture)
from tests.runtime.test_network import Lab, sh

pytestmark = pytest.mark.root

SUBNET = "10.213.1.0/24"
GATEWAY = "10.213.1.1"
LAN_HOST, LAN_PEER, MIRROR, RESOLVER = "172.29.0.1", "172.29.0.2", "172.29.0.3", "172.29.0.53"
PUBLIC = "198.51.100.7"  # stands for a registry: a public address routed into the LAN namespace
ALLOW = f"{MIRROR}/32:8080"

LISTENER = """
import socket, sys
host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
if proto == "tcp":
    s.listen(16)
print("listening", flush=True)
while True:
    if proto == "tcp":
        c, _ = s.accept()
        c.sendall(b"hello\\n")
        c.close()
    else:
        data, peer = s.recvfrom(512)
        s.sendto(b"hello\\n", peer)
"""

CLIENT = """
import errno, socket, sys
host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
addr = (host, port) if fam == socket.AF_INET else (host, port, 0, socket.if_nametoindex("eth0"))
try:
    with socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.connect(addr)
        if proto == "udp":
            s.send(b"question")
        print(s.recv(16).decode().strip())
except TimeoutError:
    print("timeout")
except OSError as e:
    print(errno.errorcode.get(e.errno or 0, type(e).__name__))
"""


@dataclass
class Site:
    """One simulated host with its LAN; `listen` and `reach` are the two ends of a probe."""

    lab: Lab
    net: HostNetwork
    host: str  # the host's namespace
    lan: str  # the LAN's namespace

    def listen(self, where: str | int, ip: str, port: int, proto: str = "tcp") -> None:
        listen(self.lab, where, ip, port, proto)

    def container(self, name: str, egress: str) -> tuple[int, str]:
        pid = self.lab.container()
        return pid, self.net.attach(name, pid, nat=True, egress=egress).ip


def listen(lab: Lab, where: str | int, ip: str, port: int, proto: str = "tcp") -> None:
    """Serve `hello` at ip:port in a named namespace or a container's (a pid)."""
    enter = ["-t", str(where), "-n"] if isinstance(where, int) else [f"--net=/run/netns/{where}"]
    proc = subprocess.Popen(
        ["nsenter", *enter, "--", sys.executable, "-c", LISTENER, ip, str(port), proto],
        stdout=subprocess.PIPE,
    )
    lab.procs.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"listening\n"


def reach(pid: int, ip: str, port: int, proto: str = "tcp") -> str:
    """From a container: `hello` when the listener answered, else how it failed."""
    out = sh("nsenter", "-t", str(pid), "-n", "--", sys.executable, "-c", CLIENT, ip, str(port), proto)
    return out.stdout.strip()


@pytest.fixture(name="lab")
def lab_fixture(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tag=secrets.token_hex(4), tmp=tmp_path)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(name="site")
def site_fixture(lab: Lab, tmp_path: Path) -> Site:
    host = lab.netns("h")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver 127.0.0.53\nnameserver {RESOLVER}\n")
    net = HostNetwork(
        f"pbr{lab.tag}", SUBNET, tmp_path / "h", netns=host, build_allow=parse_allow(ALLOW),
        resolv_conf=resolv,
    )
    net.ensure()
    lan = lab.netns("lan")
    lab.wire(host, LAN_HOST, lan, LAN_PEER, prefix=24)
    for ip in (MIRROR, RESOLVER, PUBLIC):
        sh("ip", "-n", lan, "addr", "add", f"{ip}/32", "dev", "lo")
    sh("ip", "-n", host, "route", "add", f"{PUBLIC}/32", "via", LAN_PEER)
    return Site(lab, net, host, lan)


def test_it_refuses_a_build_container_the_host_and_the_private_network_but_not_an_app_container(site: Site) -> None:
    site.listen(site.host, GATEWAY, 8080)  # a platform service on the host's bridge address
    site.listen(site.host, LAN_HOST, 6379)  # ... and on the host's LAN address
    site.listen(site.lan, LAN_PEER, 5432)  # another machine on the host's private network
    build, _ = site.container("build-1", "build")
    app, _ = site.container("web-1", "open")
    assert reach(build, GATEWAY, 8080) == "EHOSTUNREACH"
    assert reach(build, LAN_HOST, 6379) == "EHOSTUNREACH"
    assert reach(build, LAN_PEER, 5432) == "EHOSTUNREACH"
    assert reach(app, GATEWAY, 8080) == "hello"
    assert reach(app, LAN_HOST, 6379) == "hello"
    assert reach(app, LAN_PEER, 5432) == "hello"


def test_it_lets_a_build_container_reach_an_allowed_destination_on_its_port_only(site: Site) -> None:
    site.listen(site.lan, MIRROR, 8080)
    site.listen(site.lan, MIRROR, 8081)
    build, _ = site.container("build-1", "build")
    assert reach(build, MIRROR, 8080) == "hello"
    assert reach(build, MIRROR, 8081) == "EHOSTUNREACH"


def test_it_lets_a_build_container_reach_a_public_address_on_443_only(site: Site) -> None:
    # No internet here: the public address lives in the LAN namespace, behind the same rules.
    site.listen(site.lan, PUBLIC, 443)
    site.listen(site.lan, PUBLIC, 8443)
    build, _ = site.container("build-1", "build")
    assert reach(build, PUBLIC, 443) == "hello"
    assert reach(build, PUBLIC, 8443) == "EHOSTUNREACH"


def test_it_lets_a_build_container_ask_its_resolver_and_no_other_server(site: Site) -> None:
    site.listen(site.lan, RESOLVER, 53, "udp")
    site.listen(site.lan, LAN_PEER, 53, "udp")
    build, _ = site.container("build-1", "build")
    assert reach(build, RESOLVER, 53, "udp") == "hello"
    assert reach(build, LAN_PEER, 53, "udp") == "EHOSTUNREACH"


def test_it_keeps_a_build_container_off_the_containers_beside_it_even_without_bridge_netfilter(site: Site) -> None:
    # With bridge netfilter off, frames between two ports of the bridge never meet iptables:
    # only the rule on the build container's bridge port stands between them.
    sh("ip", "netns", "exec", site.host, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
    target, target_ip = site.container("web-1", "open")
    site.listen(target, target_ip, 8080)
    build, _ = site.container("build-1", "build")
    app, _ = site.container("web-2", "open")
    assert reach(app, target_ip, 8080) == "hello"
    assert reach(build, target_ip, 8080) in ("timeout", "EHOSTUNREACH")


def link_local(ns: str | int, dev: str) -> str:
    """The IPv6 link-local address of `dev` once duplicate address detection is done."""
    enter = ["nsenter", "-t", str(ns), "-n", "--"] if isinstance(ns, int) else ["ip", "netns", "exec", ns]
    for _ in range(500):
        addrs = json.loads(sh(*enter, "ip", "-j", "-6", "addr", "show", "dev", dev).stdout)
        for info in addrs[0]["addr_info"] if addrs else []:
            if info.get("scope") == "link" and not info.get("tentative"):
                return str(info["local"])
        time.sleep(0.02)
    raise AssertionError(f"{dev} got no link-local IPv6 address")


def test_it_keeps_a_build_container_off_the_host_over_ipv6_link_local(site: Site) -> None:
    site.listen(site.host, "::", 8080)  # a service listening on every address, IPv6 too
    build, _ = site.container("build-1", "build")
    app, _ = site.container("web-1", "open")
    host_ll = link_local(site.host, site.net.bridge)
    link_local(build, "eth0")
    link_local(app, "eth0")
    assert reach(app, host_ll, 8080) == "hello"
    assert reach(build, host_ll, 8080) in ("timeout", "EHOSTUNREACH", "ENETUNREACH")


def rules(ns: str) -> str:
    ipt = sh("ip", "netns", "exec", ns, "iptables-save", "-t", "filter").stdout
    ebt = sh("ip", "netns", "exec", ns, "ebtables-save").stdout
    return ipt + ebt


def test_it_lifts_the_policy_with_the_container_and_leaves_nothing_after_teardown(site: Site) -> None:
    _, build_ip = site.container("build-1", "build")
    veth = site.net.attachments()[0].host_veth
    assert f"{build_ip}/32" in rules(site.host) and veth in rules(site.host)
    site.net.detach("build-1")
    assert f"{build_ip}/32" not in rules(site.host) and veth not in rules(site.host)
    site.net.route_add("10.213.2.0/24", via=LAN_PEER)
    site.container("build-2", "build")
    assert "-A PAAS-HOSTS-" in rules(site.host) and "10.213.2.0/24" in rules(site.host)
    site.net.teardown()
    left = rules(site.host)
    assert "paas:" not in left and "PAAS-" not in left, left


def test_it_refuses_an_unknown_egress_policy(site: Site) -> None:
    from runtime.network import NetworkError

    with pytest.raises(NetworkError, match="invalid egress policy 'closed'"):
        site.net.attach("x", site.lab.container(), nat=True, egress="closed")
    assert site.net.attachments() == []


@pytest.fixture(name="hostd")
def hostd_fixture(lab: Lab, tmp_path: Path) -> Iterator[tuple[Daemon, str]]:
    """A real runtime daemon run inside a simulated host's network namespace (its fast path)."""
    host = lab.netns("d")
    bridge = f"pd{secrets.token_hex(3)}"
    d = Daemon(tmp_path / "runtime", network=(bridge, SUBNET), netns=host,
               env={"PAAS_BUILD_EGRESS_ALLOW": ALLOW})
    try:
        d.start()
        yield d, host
    finally:
        d.cleanup()
        d.stop()
        d.teardown_network()


@pytest.mark.slow
def test_it_filters_a_build_container_of_the_daemon_until_it_dies(
    hostd: tuple[Daemon, str], lab: Lab, tiny: Image
) -> None:
    d, host = hostd
    listen(lab, host, GATEWAY, 8080)
    probe = f"echo hi | nc -w 2 {GATEWAY} 8080; echo rc=$?"
    app = d.run(tiny, ["sh", "-c", probe], network={"mode": "bridge", "nat": True})
    build = d.run(tiny, ["sh", "-c", f"{probe}; sleep 600"], process_type="build",
                  network={"mode": "bridge", "nat": True, "egress": "build"})
    d.wait(app["id"])
    assert d.output(app["id"]) == "hello\nrc=0"
    for _ in range(500):
        if "rc=" in d.output(build["id"]):
            break
        time.sleep(0.02)
    assert "hello" not in d.output(build["id"]) and "rc=1" in d.output(build["id"])
    assert f"{build['ip']}/32" in rules(host)
    d.client.kill(build["id"], "SIGKILL")  # it dies: the daemon lifts its policy
    d.wait(build["id"])
    record = d.root / "network" / "attachments" / f"{build['id']}.json"
    for _ in range(500):
        if not record.exists():
            break
        time.sleep(0.02)
    assert f"{build['ip']}/32" not in rules(host)
    assert "-i p" not in sh("ip", "netns", "exec", host, "ebtables", "-L").stdout


def test_it_refuses_to_start_the_daemon_with_a_bad_allow_setting(tmp_path: Path) -> None:
    from tests.runtime.daemon_fixtures import REPO

    env = {**os.environ, "PAAS_BUILD_EGRESS_ALLOW": "10.2.3.4/32:443,mirror:443"}
    bad = subprocess.run(
        [sys.executable, "-m", "runtime", "--root", str(tmp_path / "runtime"), "daemon"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: PAAS_BUILD_EGRESS_ALLOW: 'mirror:443': ")
    assert "e.g. 10.2.3.4/32:443" in bad.stderr and "Traceback" not in bad.stderr
