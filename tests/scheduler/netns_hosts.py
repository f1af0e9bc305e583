"""Several hosts on one machine, each in a network namespace of its own.

A `Cluster` makes, in the root namespace (the controller's):

    pmh<tag>u             the underlay: a bridge standing for the hosts' shared network, with the
                          controller's address <underlay>.1
    a Redis relay         <underlay>.1:<port> -> the test's redis-server (which listens on the
                          loopback only; hosts cannot reach the root namespace's loopback)
    python -m runtime.hostroutes
                          this namespace's routes to every host's container subnet, as a router or
                          controller host without containers keeps them

and for each host N:

    pmh<tag>hN            its network namespace
    pmh<tag>vN/pmh<tag>nN a veth from the underlay bridge into it, with the host's underlay
                          address <underlay>.(10+N) and a default route via the controller
    a runtime daemon      in the namespace (`nsenter --net`: same mounts and cgroups, own network),
                          with its own root, bridge pmh<tag>bN and container subnet
    an agent              in the namespace, reaching Redis and the controller over the underlay,
                          announcing its subnet and routing to the other hosts' (runtime.hostroutes)

Each cluster writes what it made to `STATE_DIR/<tag>.json` with its process id first, so a later
run removes what a crashed one left (`sweep_leftovers`), never what a live one is using.
Teardown kills every process and removes every namespace, veth, bridge, route, cgroup, mount and
directory, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PREFIX = "pmh"
STATE_DIR = Path("/run/paas-test-netns")
UNREACHABLE_METRIC = "4000"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Relay:
    """Forward TCP connections from (host, any port) to `target`, in threads of this process."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server((host, 0))
        self.port: int = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="relay").start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        with self.lock:
            for c in self.conns:
                with contextlib.suppress(OSError):
                    c.close()


@dataclass
class NetnsHost:
    """One simulated host: its namespace, underlay address, runtime daemon and agent."""

    cluster: Cluster
    index: int
    name: str
    netns: str
    address: str
    subnet: str
    bridge: str
    root: Path
    daemon: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None
    dead: bool = False

    def _in_ns(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]

    def start_daemon(self) -> None:
        env = dict(os.environ, PAAS_BRIDGE=self.bridge, PAAS_HOST_SUBNET=self.subnet)
        log = (self.root / "daemon.log").open("ab")
        self.daemon = subprocess.Popen(
            self._in_ns([sys.executable, "-m", "runtime", "--root", str(self.root), "daemon"]),
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        log.close()
        assert self.daemon.stdout is not None
        line = self.daemon.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError(f"the runtime daemon of {self.name} did not start: {line!r} "
                               f"{(self.root / 'daemon.log').read_text()}")

    def start_agent(self, host_token: str, heartbeat_s: float) -> None:
        c = self.cluster
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAAS_")}
        env.update({
            "REDIS_URL": c.redis_url_for_hosts, "PAAS_RUNTIME_DIR": str(self.root),
            "PAAS_AGENT_HEARTBEAT_S": str(heartbeat_s), "PAAS_CONTROLLER_URL": c.controller_url,
            "PAAS_HOST_TOKEN": host_token, "PAAS_HOST_ADDRESS": self.address,
            "PAAS_BRIDGE": self.bridge, "PAAS_HOST_SUBNET": self.subnet,
        })
        log = (self.root / "agent.log").open("ab")
        self.agent = subprocess.Popen(
            self._in_ns([sys.executable, "-m", "runtime.agent", "--host", self.name]),
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def container_ids(self) -> list[str]:
        d = self.root / "containers"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def kill(self) -> None:
        """The host dies: agent, daemon and every container killed, then its namespace deleted."""
        for proc in (self.agent, self.daemon):
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._kill_containers()
        _ip("netns", "del", self.netns, check=False)
        self.dead = True

    def _kill_containers(self) -> None:
        from runtime import cgroups

        for cid in self.container_ids():
            cg = cgroups.for_container(cid)
            with contextlib.suppress(cgroups.CgroupError, OSError):
                cgroups.kill_all(cg)
            for _ in range(50):
                try:
                    cg.remove()
                    break
                except (cgroups.CgroupError, OSError):
                    time.sleep(0.1)

    def teardown(self) -> None:
        for proc in (self.agent, self.daemon):
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._kill_containers()
        _unmount_under(self.root)
        _ip("netns", "del", self.netns, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self) -> str:
        out = []
        for name in ("agent.log", "daemon.log"):
            p = self.root / name
            if p.exists():
                out.append(f"--- {self.name} {name}\n" + p.read_text()[-3000:])
        return "\n".join(out)


def _unmount_under(root: Path) -> None:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


@dataclass
class Cluster:
    """The underlay, the Redis relay, the controller's routes, and the hosts."""

    redis_url: str
    work: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    hosts: list[NetnsHost] = field(default_factory=list)
    relay: Relay | None = None
    routes_proc: subprocess.Popen[bytes] | None = None
    controller_url: str = ""
    # Processes of the root namespace this cluster started (pid, a word of their command line),
    # so a sweep after a crash can end them without touching a process that reused the pid.
    root_procs: list[tuple[int, str]] = field(default_factory=list)
    underlay_net: str = field(init=False)
    gateway: str = field(init=False)
    subnet_base: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.underlay_net = f"172.31.{random.randint(0, 255)}"
        self.gateway = f"{self.underlay_net}.1"
        # Container subnets 10.<251-254>.<m+N>.0/24: out of the other tests' 10.160-250 range.
        self.subnet_base = (random.randint(251, 254), random.randint(0, 250))

    @property
    def underlay_bridge(self) -> str:
        return f"{PREFIX}{self.tag}u"

    @property
    def state_file(self) -> Path:
        return STATE_DIR / f"{self.tag}.json"

    @property
    def routes_state(self) -> Path:
        return self.work / "controller-routes.json"

    @property
    def redis_url_for_hosts(self) -> str:
        assert self.relay is not None
        db = self.redis_url.rsplit("/", 1)[1] if self.redis_url.count("/") >= 3 else "0"
        return f"redis://{self.gateway}:{self.relay.port}/{db}"

    def _record(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps({
            "pid": os.getpid(), "tag": self.tag, "work": str(self.work),
            "subnets": [h.subnet for h in self.hosts], "routes_state": str(self.routes_state),
            "hosts": [{"netns": h.netns, "root": str(h.root)} for h in self.hosts],
            "procs": self.root_procs,
        }))

    def own(self, proc: subprocess.Popen[bytes], word: str) -> None:
        """Record a root-namespace process of the cluster's, for `sweep_leftovers`."""
        self.root_procs.append((proc.pid, word))
        self._record()

    def start(self) -> None:
        """The underlay bridge with the controller's address, and the Redis relay on it."""
        self.work.mkdir(parents=True, exist_ok=True)
        self._record()
        br = self.underlay_bridge
        _ip("link", "add", br, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", br)
        _ip("link", "set", br, "up")
        host, _, port = self.redis_url.split("//", 1)[1].split("/", 1)[0].rpartition(":")
        self.relay = Relay(self.gateway, (host or "127.0.0.1", int(port)))

    def add_host(self) -> NetnsHost:
        n = len(self.hosts) + 1
        a, b = self.subnet_base
        h = NetnsHost(
            cluster=self, index=n, name=f"mh{self.tag}-{n}", netns=f"{PREFIX}{self.tag}h{n}",
            address=f"{self.underlay_net}.{10 + n}", subnet=f"10.{a}.{b + n}.0/24",
            bridge=f"{PREFIX}{self.tag}b{n}", root=self.work / f"h{n}",
        )
        h.root.mkdir(parents=True)
        self.hosts.append(h)
        self._record()
        outside, inside = f"{PREFIX}{self.tag}v{n}", f"{PREFIX}{self.tag}n{n}"
        _ip("netns", "add", h.netns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", h.netns)
        _ip("link", "set", outside, "master", self.underlay_bridge)
        _ip("link", "set", outside, "up")
        ns = ["-n", h.netns]
        _ip(*ns, "link", "set", "lo", "up")
        _ip(*ns, "addr", "add", f"{h.address}/24", "dev", inside)
        _ip(*ns, "link", "set", inside, "up")
        _ip(*ns, "route", "add", "default", "via", self.gateway)
        # Once the host is gone and its route with it, its subnet is unreachable here rather
        # than sent along this machine's default route (to whatever answers out there).
        _ip("route", "add", "unreachable", h.subnet, "metric", UNREACHABLE_METRIC)
        h.start_daemon()
        return h

    def start_routes(self, interval_s: float = 0.5) -> None:
        """This (the controller's) namespace's routes to every host's containers."""
        env = dict(os.environ, REDIS_URL=self.redis_url)
        log = (self.work / "hostroutes.log").open("ab")
        self.routes_proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.hostroutes", "--state", str(self.routes_state),
             "--interval", str(interval_s)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.own(self.routes_proc, "runtime.hostroutes")

    def logs(self) -> str:
        return "\n".join(h.log_tail() for h in self.hosts)

    def teardown(self) -> None:
        if self.routes_proc is not None and self.routes_proc.poll() is None:
            os.killpg(self.routes_proc.pid, signal.SIGKILL)
            self.routes_proc.wait()
        for h in self.hosts:
            with contextlib.suppress(Exception):
                h.teardown()
        if self.relay is not None:
            self.relay.close()
        _teardown_root_side(self.tag, self.routes_state, [h.subnet for h in self.hosts])
        shutil.rmtree(self.work, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()


def _teardown_root_side(tag: str, routes_state: Path, subnets: list[str]) -> None:
    from runtime.hostroutes import PlainRoutes

    with contextlib.suppress(Exception):
        PlainRoutes(routes_state).clear()
    for subnet in subnets:  # the fallbacks, and routes a killed routes process did not record
        for _ in range(5):
            if _ip("route", "del", subnet, check=False).returncode != 0:
                break
    for i in range(1, 10):
        _ip("link", "del", f"{PREFIX}{tag}v{i}", check=False)
    _ip("link", "del", f"{PREFIX}{tag}u", check=False)


def sweep_leftovers() -> list[str]:
    """Remove what clusters of dead test processes left behind; return their tags."""
    swept: list[str] = []
    if not STATE_DIR.is_dir():
        return swept
    for f in sorted(STATE_DIR.glob("*.json")):
        try:
            data: dict[str, Any] = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(int(data.get("pid", 0))):
            continue
        tag = str(data["tag"])
        for pid, word in data.get("procs", []):
            _kill_if(int(pid), str(word))
        from runtime import cgroups

        for h in data.get("hosts", []):
            root = Path(h["root"])
            containers = root / "containers"
            for cdir in (sorted(containers.iterdir()) if containers.is_dir() else []):
                cg = cgroups.for_container(cdir.name)
                with contextlib.suppress(Exception):
                    cgroups.kill_all(cg)
                    time.sleep(0.1)
                    cg.remove()
            _kill_processes_in_netns(str(h["netns"]))
            _unmount_under(root)
            _ip("netns", "del", str(h["netns"]), check=False)
        _teardown_root_side(tag, Path(data["routes_state"]), list(data.get("subnets", [])))
        shutil.rmtree(str(data["work"]), ignore_errors=True)
        f.unlink()
        swept.append(tag)
    return swept


def _kill_if(pid: int, word: str) -> None:
    """SIGKILL `pid` if it still runs a command mentioning `word` (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return
    if word in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _kill_processes_in_netns(netns: str) -> None:
    proc = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    for pid in proc.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def leftovers(tag: str) -> list[str]:
    """What of the cluster `tag` still exists: namespaces, links, routes (for teardown checks)."""
    found = [n for n in _ip("netns", "list").stdout.split() if n.startswith(f"{PREFIX}{tag}")]
    found += [line for line in _ip("-o", "link").stdout.splitlines() if f"{PREFIX}{tag}" in line]
    return found


def routes_to(subnets: list[str]) -> list[str]:
    """The root namespace's routes to any of `subnets` (for teardown checks)."""
    found = []
    for line in _ip("route", "show", "table", "all").stdout.splitlines():
        words = line.split()
        dst = words[1] if words and words[0] in ("unreachable", "blackhole", "prohibit") else words[0]
        if dst in subnets:
            found.append(line)
    return found
