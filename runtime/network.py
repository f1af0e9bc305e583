"""Host networking: a bridge per host, a veth into each container, NAT and routes between hosts.

Each host owns one subnet. Its bridge holds the subnet's first address, which is every
container's default gateway; containers on other hosts are reached through plain routes to their
hosts' subnets ("host-gateway" style: no overlay, no encapsulation). Outbound access beyond the
known subnets is masqueraded per container, only for containers that ask for it.

iptables, all under one chain per bridge so removing the network removes every rule:

    nat/POSTROUTING  -j PAAS-NAT-<bridge>
    nat/PAAS-NAT-<bridge>:  -d <own subnet> -j RETURN, -d <each routed subnet> -j RETURN,
                            -s <container ip>/32 -j MASQUERADE      (one per NAT container)
    filter/FORWARD   -i <bridge> -j ACCEPT, -o <bridge> -j ACCEPT

State (`state_dir`): the address allocator's file, `attachments/<container id>.json` and
`routes.json`, so a restarted agent can detach containers and list routes it made.

`netns` names a network namespace to act in instead of the caller's: tests simulate several
hosts on one machine with it. The caller never changes namespace (pyroute2 opens its netlink
socket in a forked child; commands run under nsenter).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from runtime.ipam import IPAM, IPAMError

_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_NS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CONTAINER_IFNAME = "eth0"


class NetworkError(Exception):
    """A networking step failed; the message says which and why."""


@dataclass(frozen=True)
class Attachment:
    """A container's place on the host network."""

    container_id: str
    ip: str
    gateway: str
    prefixlen: int
    host_veth: str
    nat: bool


def _check_subnet(subnet: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(subnet)
    except ValueError as e:
        raise NetworkError(f"invalid subnet {subnet!r}: {e}") from None


class HostNetwork:
    """The bridge, addresses, NAT rules and routes of one host."""

    def __init__(
        self,
        bridge: str,
        subnet: str,
        state_dir: Path,
        netns: str | None = None,
        iptables: str = "iptables",
    ) -> None:
        if not _IFNAME_RE.match(bridge):
            raise NetworkError(
                f"invalid bridge name {bridge!r}: 1-15 letters, digits, '_', '.' or '-'"
            )
        if netns is not None and not _NS_NAME_RE.match(netns):
            raise NetworkError(f"invalid network namespace name {netns!r}")
        self.bridge = bridge
        self.subnet = _check_subnet(subnet)
        self.state_dir = Path(state_dir)
        try:
            self.ipam = IPAM(subnet, self.state_dir)
        except IPAMError as e:
            raise NetworkError(str(e)) from None
        self.netns = netns
        self.iptables = iptables
        self.chain = f"PAAS-NAT-{bridge}"
        (self.state_dir / "attachments").mkdir(parents=True, exist_ok=True)

    @property
    def gateway(self) -> str:
        return str(self.ipam.gateway)

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _host(self) -> Iterator[IPRoute]:
        if self.netns is None:
            ipr = IPRoute()
        else:
            if not os.path.exists(f"/run/netns/{self.netns}"):
                raise NetworkError(f"network namespace {self.netns!r} does not exist")
            ipr = IPRoute(netns=self.netns, flags=0)
        try:
            yield ipr
        finally:
            ipr.close()

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        if self.netns is not None:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]
        if shutil.which(argv[0]) is None:
            raise NetworkError(f"{argv[0]} is not installed (Debian package: iptables)")
        proc = subprocess.run(argv, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise NetworkError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
        return proc

    def _ipt(self, table: str, *rule: str, check: bool = True) -> bool:
        """Run one iptables command; with check=False return whether it succeeded."""
        proc = self._run([self.iptables, "-w", "-t", table, *rule], check=check)
        return proc.returncode == 0

    def _ipt_ensure(self, table: str, chain: str, *rule: str, insert: bool = False) -> None:
        if not self._ipt(table, "-C", chain, *rule, check=False):
            if insert:
                self._ipt(table, "-I", chain, "1", *rule)
            else:
                self._ipt(table, "-A", chain, *rule)

    def _ipt_delete(self, table: str, chain: str, *rule: str) -> None:
        while self._ipt(table, "-C", chain, *rule, check=False):
            self._ipt(table, "-D", chain, *rule)

    @staticmethod
    def _index(ipr: IPRoute, ifname: str) -> int | None:
        found = ipr.link_lookup(ifname=ifname)
        return int(found[0]) if found else None

    def _comment(self, what: str = "") -> list[str]:
        return ["-m", "comment", "--comment", f"paas:{self.bridge}{':' + what if what else ''}"]

    # -- the bridge -------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the bridge with the gateway address, forwarding and the NAT chain; idempotent."""
        try:
            with self._host() as ipr:
                idx = self._index(ipr, self.bridge)
                if idx is None:
                    ipr.link("add", ifname=self.bridge, kind="bridge")
                    idx = self._index(ipr, self.bridge)
                    assert idx is not None
                have = {
                    (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                    for a in ipr.get_addr(index=idx, family=2)
                }
                if (self.gateway, self.subnet.prefixlen) not in have:
                    ipr.addr("add", index=idx, address=self.gateway, prefixlen=self.subnet.prefixlen)
                ipr.link("set", index=idx, state="up")
        except NetlinkError as e:
            raise NetworkError(f"cannot set up bridge {self.bridge}: {e}") from None
        self._run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        if not self._ipt("nat", "-n", "-L", self.chain, check=False):
            self._ipt("nat", "-N", self.chain)
        self._ipt_ensure("nat", "POSTROUTING", *self._comment(), "-j", self.chain)
        self._ipt_ensure(
            "nat", self.chain, "-d", str(self.subnet), *self._comment(), "-j", "RETURN", insert=True
        )
        self._ipt_ensure("filter", "FORWARD", "-i", self.bridge, *self._comment(), "-j", "ACCEPT")
        self._ipt_ensure("filter", "FORWARD", "-o", self.bridge, *self._comment(), "-j", "ACCEPT")

    def teardown(self) -> None:
        """Remove the bridge, every rule and route this network made, and forget its state."""
        for att in self.attachments():
            self.detach(att.container_id)
        for dst in list(self.routes()):
            self.route_del(dst)
        with self._host() as ipr:
            idx = self._index(ipr, self.bridge)
            if idx is not None:
                ipr.link("del", index=idx)
        self._ipt_delete("filter", "FORWARD", "-i", self.bridge, *self._comment(), "-j", "ACCEPT")
        self._ipt_delete("filter", "FORWARD", "-o", self.bridge, *self._comment(), "-j", "ACCEPT")
        self._ipt_delete("nat", "POSTROUTING", *self._comment(), "-j", self.chain)
        if self._ipt("nat", "-n", "-L", self.chain, check=False):
            self._ipt("nat", "-F", self.chain)
            self._ipt("nat", "-X", self.chain)

    # -- containers -------------------------------------------------------------------------

    def _veth_names(self, container_id: str) -> tuple[str, str]:
        h = hashlib.sha256(f"{self.bridge}/{container_id}".encode()).hexdigest()[:11]
        return f"v{h}", f"c{h}"

    def _attachment_path(self, container_id: str) -> Path:
        if not _CONTAINER_ID_RE.match(container_id):
            raise NetworkError(
                f"invalid container id {container_id!r}: 1-128 letters, digits, '_', '.' or '-'"
            )
        return self.state_dir / "attachments" / f"{container_id}.json"

    def attach(self, container_id: str, pid: int, nat: bool) -> Attachment:
        """Give the network namespace of `pid` an address on the bridge and a default route."""
        path = self._attachment_path(container_id)
        if not isinstance(pid, int) or pid <= 0 or not os.path.exists(f"/proc/{pid}/ns/net"):
            raise NetworkError(f"process {pid} does not exist; cannot attach {container_id}")
        if path.exists():
            self.detach(container_id)
        try:
            ip = str(self.ipam.allocate(container_id))
        except IPAMError as e:
            raise NetworkError(str(e)) from None
        host_veth, peer = self._veth_names(container_id)
        att = Attachment(
            container_id=container_id,
            ip=ip,
            gateway=self.gateway,
            prefixlen=self.subnet.prefixlen,
            host_veth=host_veth,
            nat=nat,
        )
        try:
            self._plumb(att, peer, pid)
            if nat:
                self._ipt_ensure("nat", self.chain, *self._masquerade_rule(att))
            path.write_text(json.dumps(asdict(att)))
        except BaseException:
            self._unplumb(att)
            raise
        return att

    def reserve(self, container_id: str, host_veth: str, nat: bool) -> Attachment:
        """Allocate an address and record an attachment whose veth someone else plugs in.

        For a runtime that creates the veth itself (from the container's setup process):
        `detach` then undoes it like one of `attach`'s. Call `nat_enable` once the veth is up.
        """
        path = self._attachment_path(container_id)
        if not _IFNAME_RE.match(host_veth):
            raise NetworkError(f"invalid interface name {host_veth!r}")
        if path.exists():
            self.detach(container_id)
        try:
            ip = str(self.ipam.allocate(container_id))
        except IPAMError as e:
            raise NetworkError(str(e)) from None
        att = Attachment(
            container_id=container_id,
            ip=ip,
            gateway=self.gateway,
            prefixlen=self.subnet.prefixlen,
            host_veth=host_veth,
            nat=nat,
        )
        path.write_text(json.dumps(asdict(att)))
        return att

    def nat_enable(self, att: Attachment) -> None:
        """Masquerade the container's traffic beyond the known subnets (idempotent)."""
        self._ipt_ensure("nat", self.chain, *self._masquerade_rule(att))

    def _masquerade_rule(self, att: Attachment) -> list[str]:
        return ["-s", f"{att.ip}/32", *self._comment(att.container_id), "-j", "MASQUERADE"]

    def _plumb(self, att: Attachment, peer: str, pid: int) -> None:
        try:
            with self._host() as ipr:
                bridge_idx = self._index(ipr, self.bridge)
                if bridge_idx is None:
                    raise NetworkError(f"bridge {self.bridge} does not exist; call ensure() first")
                stale = self._index(ipr, att.host_veth)
                if stale is not None:
                    ipr.link("del", index=stale)
                ipr.link("add", ifname=att.host_veth, kind="veth", peer=peer)
                host_idx = self._index(ipr, att.host_veth)
                peer_idx = self._index(ipr, peer)
                assert host_idx is not None and peer_idx is not None
                ipr.link("set", index=host_idx, master=bridge_idx)
                ipr.link("set", index=peer_idx, net_ns_pid=pid)
                ipr.link("set", index=host_idx, state="up")
            with IPRoute(netns=f"/proc/{pid}/ns/net", flags=0) as cipr:
                idx = self._index(cipr, peer)
                lo = self._index(cipr, "lo")
                if idx is None or lo is None:
                    raise NetworkError(f"the veth of {att.container_id} vanished from {pid}'s netns")
                cipr.link("set", index=idx, ifname=CONTAINER_IFNAME)
                cipr.addr("add", index=idx, address=att.ip, prefixlen=att.prefixlen)
                cipr.link("set", index=idx, state="up")
                cipr.link("set", index=lo, state="up")
                cipr.route("add", dst="0.0.0.0/0", gateway=att.gateway, oif=idx)
        except NetlinkError as e:
            raise NetworkError(f"cannot attach {att.container_id} to {self.bridge}: {e}") from None

    def _unplumb(self, att: Attachment) -> None:
        with contextlib.suppress(NetlinkError, NetworkError), self._host() as ipr:
            idx = self._index(ipr, att.host_veth)
            if idx is not None:
                ipr.link("del", index=idx)  # takes the peer in the container with it
        with contextlib.suppress(NetworkError):
            self._ipt_delete("nat", self.chain, *self._masquerade_rule(att))
        self.ipam.release(att.container_id)

    def detach(self, container_id: str) -> None:
        """Remove the container's veth and NAT rule and release its address; idempotent."""
        path = self._attachment_path(container_id)
        if path.exists():
            att = Attachment(**json.loads(path.read_text()))
            self._unplumb(att)
            path.unlink()
        else:
            self.ipam.release(container_id)

    def attachments(self) -> list[Attachment]:
        """Return every container attached, as recorded on disk."""
        out = []
        for p in sorted((self.state_dir / "attachments").glob("*.json")):
            out.append(Attachment(**json.loads(p.read_text())))
        return out

    # -- routes to other hosts --------------------------------------------------------------

    def _routes_path(self) -> Path:
        return self.state_dir / "routes.json"

    def routes(self) -> dict[str, str]:
        """Return {subnet: via} of the routes to other hosts' subnets this network added."""
        p = self._routes_path()
        data: dict[str, str] = json.loads(p.read_text()) if p.exists() else {}
        return data

    def route_add(self, subnet: str, via: str) -> None:
        """Route another host's container subnet through that host's address `via`."""
        net = _check_subnet(subnet)
        try:
            gw = ipaddress.IPv4Address(via)
        except ValueError as e:
            raise NetworkError(f"invalid gateway address {via!r}: {e}") from None
        if net.overlaps(self.subnet):
            raise NetworkError(f"subnet {net} overlaps this host's subnet {self.subnet}")
        try:
            with self._host() as ipr:
                ipr.route("replace", dst=str(net), gateway=str(gw))
        except NetlinkError as e:
            raise NetworkError(f"cannot add route to {net} via {gw}: {e}") from None
        self._ipt_ensure(
            "nat", self.chain, "-d", str(net), *self._comment(), "-j", "RETURN", insert=True
        )
        routes = self.routes()
        routes[str(net)] = str(gw)
        self._routes_path().write_text(json.dumps(routes, indent=1, sort_keys=True))

    def route_del(self, subnet: str) -> None:
        """Remove a route added by route_add; idempotent."""
        net = _check_subnet(subnet)
        routes = self.routes()
        via = routes.pop(str(net), None)
        if via is not None:
            with contextlib.suppress(NetlinkError), self._host() as ipr:
                ipr.route("del", dst=str(net), gateway=via)
        self._ipt_delete("nat", self.chain, "-d", str(net), *self._comment(), "-j", "RETURN")
        self._routes_path().write_text(json.dumps(routes, indent=1, sort_keys=True))
