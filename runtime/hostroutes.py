"""Routes between hosts' container subnets, kept in step with the hosts alive in Redis.

Each agent with an address (`PAAS_HOST_ADDRESS`) announces, every heartbeat, its container
subnet and the address other hosts reach it on, under `paas:net:host:<name>` (expiring with its
heartbeat: three missed intervals). Each agent then routes every other announced subnet via its
host's address, and removes the routes of hosts whose announcement expired. A host that runs no
containers (a controller or an edge router) keeps the same routes with
`python -m runtime.hostroutes`, so its router reaches every host's containers.

    NET_KEY  paas:net:host:<name>  {"address": "10.0.0.2", "subnet": "10.200.2.0/24"}

`plan` is pure; `sync` applies it to a route table: the runtime's `HostNetwork` on a host with
containers (its routes also stay out of masquerading), or `PlainRoutes` on one without.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import redis
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger("paas.hostroutes")

NET_KEY = "paas:net:host:{host}"
NET_KEY_PATTERN = "paas:net:host:*"


class RouteError(Exception):
    """A route could not be read or changed; the message says which and why."""


@dataclass(frozen=True)
class Peer:
    host: str
    address: str
    subnet: str


class RouteTable(Protocol):
    def routes(self) -> dict[str, str]: ...
    def route_add(self, subnet: str, via: str) -> None: ...
    def route_del(self, subnet: str) -> None: ...


def announce(r: redis.Redis[bytes], host: str, address: str, subnet: str, ttl_s: float) -> None:
    """Say that `host` is reached on `address` and runs containers in `subnet`."""
    data = json.dumps({"address": address, "subnet": subnet})
    r.set(NET_KEY.format(host=host), data, px=max(1000, int(ttl_s * 1000)))


def peers(r: redis.Redis[bytes]) -> list[Peer]:
    """Every host announced and not expired; malformed entries are skipped."""
    out = []
    keys = sorted(r.scan_iter(match=NET_KEY_PATTERN, count=500))
    values = r.mget(keys) if keys else []
    for key, raw in zip(keys, values, strict=True):
        if raw is None:
            continue
        host = key.decode().rsplit(":", 1)[1]
        try:
            data = json.loads(raw)
            address = str(ipaddress.IPv4Address(data["address"]))
            subnet = str(ipaddress.IPv4Network(data["subnet"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed announcement of host %s: %r", host, raw)
            continue
        out.append(Peer(host=host, address=address, subnet=subnet))
    return out


def plan(own_host: str, own_subnet: str | None, current: Mapping[str, str],
         announced: list[Peer]) -> tuple[dict[str, str], list[str]]:
    """Return (routes to add or change {subnet: via}, subnets to remove) to match `announced`.

    The host's own subnet, subnets overlapping it, and a second host claiming a subnet already
    claimed (by a host whose name sorts first) are left out.
    """
    own = ipaddress.IPv4Network(own_subnet) if own_subnet else None
    wanted: dict[str, str] = {}
    for p in sorted(announced, key=lambda p: p.host):
        net = ipaddress.IPv4Network(p.subnet)
        if p.host == own_host or (own is not None and net.overlaps(own)):
            continue
        if any(net.overlaps(ipaddress.IPv4Network(s)) for s in wanted):
            log.warning("host %s claims subnet %s, which another host has", p.host, p.subnet)
            continue
        wanted[str(net)] = p.address
    add = {s: via for s, via in wanted.items() if current.get(s) != via}
    remove = sorted(s for s in current if s not in wanted)
    return add, remove


def sync(r: redis.Redis[bytes], table: RouteTable, own_host: str,
         own_subnet: str | None) -> tuple[dict[str, str], list[str]]:
    """Bring `table` in line with the hosts announced in Redis; return what changed."""
    add, remove = plan(own_host, own_subnet, table.routes(), peers(r))
    for subnet in remove:
        table.route_del(subnet)
    for subnet, via in add.items():
        table.route_add(subnet, via)
    return add, remove


class PlainRoutes:
    """Routes to other hosts' subnets on a host with no bridge, recorded in `state_file`."""

    def __init__(self, state_file: Path, netns: str | None = None) -> None:
        self.state_file = Path(state_file)
        self.netns = netns

    @contextlib.contextmanager
    def _ipr(self) -> Iterator[IPRoute]:
        ipr = IPRoute() if self.netns is None else IPRoute(netns=self.netns, flags=0)
        try:
            yield ipr
        finally:
            ipr.close()

    def routes(self) -> dict[str, str]:
        if not self.state_file.exists():
            return {}
        data: dict[str, str] = json.loads(self.state_file.read_text())
        return data

    def _save(self, routes: dict[str, str]) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_file.parent, prefix=".routes-")
        with os.fdopen(fd, "w") as f:
            json.dump(routes, f, indent=1, sort_keys=True)
        os.replace(tmp, self.state_file)

    def route_add(self, subnet: str, via: str) -> None:
        net, gw = ipaddress.IPv4Network(subnet), ipaddress.IPv4Address(via)
        routes = self.routes()
        routes[str(net)] = str(gw)
        self._save(routes)  # first, so a crash between the two still finds it to remove
        try:
            with self._ipr() as ipr:
                ipr.route("replace", dst=str(net), gateway=str(gw))
        except NetlinkError as e:
            raise RouteError(f"cannot add route to {net} via {gw}: {e}") from None

    def route_del(self, subnet: str) -> None:
        routes = self.routes()
        via = routes.pop(str(ipaddress.IPv4Network(subnet)), None)
        if via is not None:
            with contextlib.suppress(NetlinkError), self._ipr() as ipr:
                ipr.route("del", dst=subnet, gateway=via)
        self._save(routes)

    def clear(self) -> None:
        """Remove every route this table added."""
        for subnet in list(self.routes()):
            self.route_del(subnet)


def follow(r: redis.Redis[bytes], table: RouteTable, host: str, interval_s: float,
           stop: threading.Event) -> None:
    """`sync` every `interval_s` until `stop` is set; errors are logged, never fatal."""
    while not stop.is_set():
        try:
            added, removed = sync(r, table, host, None)
            for s, via in added.items():
                log.info("route %s via %s", s, via)
            for s in removed:
                log.info("route %s removed", s)
        except (redis.RedisError, RouteError, OSError) as e:
            log.warning("syncing routes failed: %s", e)
        stop.wait(interval_s)


def main(argv: list[str] | None = None) -> int:
    """`python -m runtime.hostroutes`: keep routes to every host's containers, on a host with none."""
    import signal

    from runtime.client import runtime_root

    p = argparse.ArgumentParser(prog="python -m runtime.hostroutes", description=main.__doc__)
    p.add_argument("--state", type=Path, default=None,
                   help="where the routes made are recorded (default <runtime root>/hostroutes.json)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between syncs (default 1)")
    p.add_argument("--clear", action="store_true", help="remove the routes made, then exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    state: Path = args.state or runtime_root() / "hostroutes.json"
    table = PlainRoutes(state)
    if args.clear:
        table.clear()
        return 0
    url = os.environ.get("REDIS_URL", "")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        print("error: REDIS_URL must be set to the controller's Redis", file=sys.stderr)
        return 2
    if not 0.1 <= args.interval <= 3600:
        print("error: --interval must be between 0.1 and 3600 seconds", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    follow(redis.Redis.from_url(url), table, host="", interval_s=args.interval, stop=stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
