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

Build containers (`egress="build"`) get the egress policy of `runtime.egress` on top, keyed on
their address (what they send to the host or through it) and on their bridge port (what the
bridge would hand straight to another port, and any IPv6):

    filter/INPUT, filter/FORWARD  -i <bridge> -j PAAS-EGRESS-<bridge>       (first rule)
    filter/PAAS-EGRESS-<bridge>:  -s <build container ip>/32 -j PAAS-BUILD-<bridge>   (one each)
    filter/PAAS-BUILD-<bridge>:   the policy (runtime.egress.policy_rules), replaced atomically
    filter/PAAS-HOSTS-<bridge>:   -d <each routed subnet> -j REJECT
    ebtables FORWARD -j PAAS-BFWD-<bridge>:  -i <build veth> -j DROP        (no other port)
    ebtables INPUT   -j PAAS-BIN-<bridge>:   -i <build veth> -p IPv6 -j DROP (no IPv6 to the host)

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
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from runtime import egress
from runtime.ipam import IPAM, IPAMError

_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_NS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CONTAINER_IFNAME = "eth0"
EGRESS_POLICIES = ("open", "build")


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
    egress: str = "open"  # "build": the build containers' egress policy applies


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
        build_allow: Sequence[egress.Allowed] = (),
        resolv_conf: Path = Path("/etc/resolv.conf"),
        ebtables: str = "ebtables",
    ) -> None:
        """`build_allow`: extra destinations of build containers (`PAAS_BUILD_EGRESS_ALLOW`);
        `resolv_conf`: the host's, whose name servers containers are given."""
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
        self.egress_chain = f"PAAS-EGRESS-{bridge}"
        self.build_chain = f"PAAS-BUILD-{bridge}"
        self.hosts_chain = f"PAAS-HOSTS-{bridge}"
        self.bridge_chains = {"FORWARD": f"PAAS-BFWD-{bridge}", "INPUT": f"PAAS-BIN-{bridge}"}
        self.build_allow = tuple(build_allow)
        self.resolv_conf = Path(resolv_conf)
        self.ebtables = ebtables
        self._policy: list[list[str]] | None = None  # the build policy as last applied
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
        self._egress_ensure()

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
        self._egress_teardown()

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

    def attach(self, container_id: str, pid: int, nat: bool, egress: str = "open") -> Attachment:
        """Give the network namespace of `pid` an address on the bridge and a default route.

        `egress="build"` puts the container under the build containers' egress policy before
        its veth is up.
        """
        path = self._attachment_path(container_id)
        _check_egress(egress)
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
            egress=egress,
        )
        try:
            if egress == "build":
                self._egress_add(att)
            self._plumb(att, peer, pid)
            if nat:
                self._ipt_ensure("nat", self.chain, *self._masquerade_rule(att))
            path.write_text(json.dumps(asdict(att)))
        except BaseException:
            self._unplumb(att)
            raise
        return att

    def reserve(self, container_id: str, host_veth: str, nat: bool, egress: str = "open") -> Attachment:
        """Allocate an address and record an attachment whose veth someone else plugs in.

        For a runtime that creates the veth itself (from the container's setup process):
        `detach` then undoes it like one of `attach`'s. Call `nat_enable` once the veth is up.
        With `egress="build"` the egress policy is in place when this returns.
        """
        path = self._attachment_path(container_id)
        _check_egress(egress)
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
            egress=egress,
        )
        path.write_text(json.dumps(asdict(att)))
        if egress == "build":
            try:
                self._egress_add(att)
            except BaseException:
                self.detach(container_id)
                raise
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
        if att.egress == "build":
            # Before the address goes back: the next container to get it may be an app's.
            self._egress_remove(att)
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
        self._ipt_chain("filter", self.hosts_chain)
        self._ipt_ensure("filter", self.hosts_chain, *self._hosts_rule(net))
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
        if self._ipt("filter", "-n", "-L", self.hosts_chain, check=False):
            self._ipt_delete("filter", self.hosts_chain, *self._hosts_rule(net))
        self._routes_path().write_text(json.dumps(routes, indent=1, sort_keys=True))

    # -- the build containers' egress policy ----------------------------------------------------

    def _ipt_chain(self, table: str, chain: str) -> None:
        if not self._ipt(table, "-n", "-L", chain, check=False):
            self._ipt(table, "-N", chain)

    def _ebt(self, *args: str, check: bool = True) -> bool:
        proc = self._run([self.ebtables, "-t", "filter", *args], check=check)
        return proc.returncode == 0

    def _ebt_list(self, chain: str) -> list[str]:
        proc = self._run([self.ebtables, "-t", "filter", "-L", chain], check=False)
        return [line.strip() for line in proc.stdout.splitlines()]

    def _ebt_delete(self, chain: str, rule: list[str]) -> None:
        """Delete every copy of `rule` from `chain` (-D fails once none is left)."""
        for _ in range(100):
            if not self._ebt("-D", chain, *rule, check=False):
                return

    def _hosts_rule(self, net: ipaddress.IPv4Network) -> list[str]:
        return ["-d", str(net), *self._comment(), "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]

    def _dispatch_rule(self, att: Attachment) -> list[str]:
        return ["-s", f"{att.ip}/32", *self._comment(att.container_id), "-j", self.build_chain]

    def _port_rules(self, att: Attachment) -> dict[str, list[str]]:
        return {
            "FORWARD": ["-i", att.host_veth, "-j", "DROP"],
            "INPUT": ["-i", att.host_veth, "-p", "IPv6", "-j", "DROP"],
        }

    def _egress_ensure(self) -> None:
        """Create the egress chains and their hooks, and apply the policy (idempotent)."""
        for chain in (self.hosts_chain, self.build_chain, self.egress_chain):
            self._ipt_chain("filter", chain)
        for net in self.routes():
            self._ipt_ensure("filter", self.hosts_chain, *self._hosts_rule(ipaddress.IPv4Network(net)))
        self._apply_policy(force=True)
        for hook in ("INPUT", "FORWARD"):
            self._ipt_ensure(
                "filter", hook, "-i", self.bridge, *self._comment(), "-j", self.egress_chain, insert=True
            )
        if shutil.which(self.ebtables) is None:
            raise NetworkError(f"{self.ebtables} is not installed (Debian package: iptables)")
        for hook, chain in self.bridge_chains.items():
            if not self._ebt("-L", chain, check=False):
                self._ebt("-N", chain, "-P", "RETURN")
            if f"-j {chain}" not in self._ebt_list(hook):
                self._ebt("-I", hook, "1", "-j", chain)

    def _apply_policy(self, force: bool = False) -> None:
        """Replace the policy chain's rules in one transaction when they changed.

        The name servers come from the host's resolv.conf at each build container's start, as
        the container's own resolv.conf does.
        """
        try:
            text = self.resolv_conf.read_text()
        except OSError:
            text = ""
        rules = egress.policy_rules(
            self.build_chain,
            subnet=self.subnet,
            other_hosts_chain=self.hosts_chain,
            dns=egress.resolvers(text),
            allow=self.build_allow,
            comment=f"paas:{self.bridge}:build",
        )
        if rules == self._policy and not force:
            return
        # iptables-restore --noflush: the chain declared is emptied and refilled in one commit,
        # so no packet ever sees it half made.
        lines = ["*filter", f":{self.build_chain} - [0:0]"]
        lines += [" ".join(_quote(a) for a in rule) for rule in rules]
        lines.append("COMMIT")
        argv = [f"{self.iptables}-restore", "--noflush"]
        if self.netns is not None:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]
        if shutil.which(argv[0]) is None:
            raise NetworkError(f"{argv[0]} is not installed (Debian package: iptables)")
        proc = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True)
        if proc.returncode != 0:
            raise NetworkError(f"cannot apply the build egress policy: {proc.stderr.strip()}")
        self._policy = rules

    def _egress_add(self, att: Attachment) -> None:
        """Put one build container under the policy: its address and its bridge port."""
        if self._policy is None:
            self._egress_ensure()  # a network made by another process (e.g. after a restart)
        else:
            self._apply_policy()
        for hook, rule in self._port_rules(att).items():
            chain = self.bridge_chains[hook]
            self._ebt_delete(chain, rule)  # ebtables has no check (-C changes counters)
            self._ebt("-A", chain, *rule)
        self._ipt_ensure("filter", self.egress_chain, *self._dispatch_rule(att))

    def _egress_remove(self, att: Attachment) -> None:
        with contextlib.suppress(NetworkError):
            self._ipt_delete("filter", self.egress_chain, *self._dispatch_rule(att))
        for hook, rule in self._port_rules(att).items():
            chain = self.bridge_chains[hook]
            with contextlib.suppress(NetworkError):
                self._ebt_delete(chain, rule)

    def _egress_teardown(self) -> None:
        for hook in ("INPUT", "FORWARD"):
            self._ipt_delete("filter", hook, "-i", self.bridge, *self._comment(), "-j", self.egress_chain)
        for chain in (self.egress_chain, self.build_chain, self.hosts_chain):
            if self._ipt("filter", "-n", "-L", chain, check=False):
                self._ipt("filter", "-F", chain)
        for chain in (self.egress_chain, self.build_chain, self.hosts_chain):
            if self._ipt("filter", "-n", "-L", chain, check=False):
                self._ipt("filter", "-X", chain)
        if shutil.which(self.ebtables) is None:
            return
        for hook, chain in self.bridge_chains.items():
            self._ebt_delete(hook, ["-j", chain])
            if self._ebt("-L", chain, check=False):
                self._ebt("-F", chain)
                self._ebt("-X", chain)
        self._policy = None


def _check_egress(value: str) -> None:
    if value not in EGRESS_POLICIES:
        raise NetworkError(f"invalid egress policy {value!r}: one of {', '.join(EGRESS_POLICIES)}")


def _quote(arg: str) -> str:
    """Quote one argument for iptables-restore (the comments hold ':' but never a space)."""
    return f'"{arg}"' if not arg or any(c.isspace() for c in arg) else arg
