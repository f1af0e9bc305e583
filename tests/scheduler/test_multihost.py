"""Three hosts for real, each in a network namespace of its own (see netns_hosts.py).

Each host has its own runtime daemon, bridge, container subnet and agent; the agents reach Redis
and the controller over the underlay, pull the app's image by digest from the controller's
registry endpoints (their image stores start empty), and route to each other's container
subnets. The controller's side runs in the test process as in test_end_to_end.py (reconcile and
report ingestion in turn), its registry endpoints are served from a live server on the
underlay, and a real router in the root namespace answers for the app.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from core import actions
from core.models import App, Container, Host, HostState
from router.table import route_app_delete
from runtime.client import DaemonClient
from runtime.hostroutes import NET_KEY
from runtime.images import ImageStore
from runtime.tinyimage import build_tiny_image
from tests.liveprocs import stop_groups
from tests.scheduler.netns_hosts import (
    REPO,
    Cluster,
    NetnsHost,
    leftovers,
    routes_to,
    sweep_leftovers,
)
from tests.scheduler.realhost import WEB, converge, new_app, route

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

DOMAIN = "mh.test"
HEARTBEAT_S = 0.5


@pytest.fixture
def cluster(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """The underlay, the registry (a live server on it), and the controller's routes."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, containers)")
    from pytest_django.live_server_helper import LiveServer

    sweep_leftovers()
    work = Path(tempfile.mkdtemp(prefix="pmh-"))  # short: daemon sockets live below it
    c = Cluster(redis_url=os.environ["REDIS_URL"], work=work)
    monkeypatch.setenv("PAAS_RUNTIME_DIR", str(work / "controller"))  # the registry's store
    server: LiveServer | None = None
    try:
        c.start()
        server = LiveServer(f"{c.gateway}:0")
        c.controller_url = server.url
        yield c
    finally:
        names, subnets = [h.name for h in c.hosts], [h.subnet for h in c.hosts]
        c.teardown()  # the agents first: the live server's connections to them close first
        if server is not None:
            server.stop()
        for name in names:
            r.delete(f"host.{name}", NET_KEY.format(host=name), f"paas:agent:host:{name}")
        assert leftovers(c.tag) == [] and routes_to(subnets) == []


@pytest.fixture
def router(cluster: Cluster) -> Iterator[str]:
    """`python -m router` in the root namespace; yields its base URL."""
    from tests.gitserver.conftest import free_port

    port = free_port()
    env = dict(os.environ, REDIS_URL=cluster.redis_url, PAAS_DOMAIN=DOMAIN,
               PAAS_ROUTER_BIND=f"127.0.0.1:{port}", PAAS_ROUTER_WORKERS="1",
               PAAS_DATA_DIR=str(cluster.work / "router"))
    log = (cluster.work / "router.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "router"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    cluster.own(proc, "router")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_groups(proc)


class Poller:
    """Hit the router for the app over and over in a thread; keep every answer's status."""

    def __init__(self, base: str, app: str) -> None:
        self.base, self.host = base, f"{app}.{DOMAIN}"
        self.statuses: list[int | str] = []
        self.bodies: list[str] = []  # of the answers other than 200
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def get(self) -> int | str:
        try:
            resp = self.fetch()
        except httpx.HTTPError as e:
            self.bodies.append(f"{time.strftime('%H:%M:%S')} {e!r}")
            return type(e).__name__
        if resp.status_code != 200:
            self.bodies.append(f"{dict(resp.headers)} {resp.text[:200]}")
        return resp.status_code

    def fetch(self) -> httpx.Response:
        # busybox httpd serving / : the container's own /etc/hostname names the container.
        # The router's own deadlines (connect 5 s per endpoint, first byte 30 s) come first.
        return httpx.get(self.base + "/etc/hostname", headers={"Host": self.host}, timeout=40)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.statuses.append(self.get())
            self.stop.wait(0.05)

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def failures(self) -> Counter[int | str]:
        return Counter(s for s in self.statuses if s != 200)


def connects(netns: str | None, address: str) -> bool:
    """Whether a TCP connection to `address` succeeds from `netns` (None: the root namespace)."""
    ip, port = address.rsplit(":", 1)
    code = f"import socket; socket.create_connection(({ip!r}, {port}), timeout=3).close()"
    argv = [sys.executable, "-c", code]
    if netns is not None:
        argv = ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


def running_on(hosts: list[NetnsHost]) -> set[str]:
    return {c["id"] for h in hosts for c in DaemonClient(h.root / "daemon.sock").list()
            if c.get("state") == "running"}


def placement(app: App) -> Counter[str]:
    return Counter(Container.objects.filter(app=app).values_list("host__name", flat=True))


def test_it_spreads_six_web_containers_over_three_hosts_fails_over_and_redeploys_without_a_gap(
        cluster: Cluster, router: str, member: Any, staff: Any, r: redis.Redis,
        django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAAS_HOST_DOWN_AFTER_S", "5")  # ten missed beats: room for a busy machine
    hosts = [cluster.add_host() for _ in range(3)]
    for h in hosts:
        _host, token = actions.host_register(actor=staff, name=h.name, address=h.address,
                                             memory_mb=4096, cpus=4)
        h.start_agent(token, HEARTBEAT_S)
    cluster.start_routes()
    controller = ImageStore(cluster.work / "controller" / "images")
    image = controller.resolve(build_tiny_image(controller)).digest
    # Each container says where it serves, so the app's log shows output from every host.
    app = new_app(member, image, web='echo "serving as $(cat /etc/hostname)"; ' + WEB)
    made: set[str] = set()  # every container seen ready

    def ready(n: int, on: set[str], version: int | None = None) -> bool:
        rows = list(Container.objects.filter(app=app).select_related("host", "release"))
        made.update(c.id for c in rows if c.state == "ready")
        return (len(rows) == n == len(route(r, app)) and all(c.state == "ready" for c in rows)
                and {c.host.name for c in rows if c.host} <= on
                and (version is None or all(c.release.version == version for c in rows)))

    try:
        # web=6 spreads 2/2/2, each host having pulled the image from the controller.
        with django_capture_on_commit_callbacks(execute=True):
            actions.formation_scale(actor=member, app=app, updates=[{"type": "web", "quantity": 6}])
        everyone = {h.name for h in hosts}
        converge(app, django_capture_on_commit_callbacks, r, lambda: ready(6, everyone), timeout=120)
        assert sorted(placement(app).values()) == [2, 2, 2], cluster.logs()
        for h in hosts:
            assert ImageStore(h.root / "images").exists(image)

        # Every container answers from the router's namespace, and from the other hosts'.
        by_host = {h.name: list(Container.objects.filter(app=app, host__name=h.name)
                                .values_list("address", flat=True)) for h in hosts}
        for addresses in by_host.values():
            for address in addresses:
                assert connects(None, address), address
        assert connects(hosts[0].netns, by_host[hosts[1].name][0])
        assert connects(hosts[2].netns, by_host[hosts[0].name][0])
        probe = Poller(router, app.name)
        answers = [probe.fetch() for _ in range(30)]
        assert [a.status_code for a in answers] == [200] * 30, [
            (a.status_code, a.headers.get("x-paas-error"), a.text[:100]) for a in answers
            if a.status_code != 200]
        host_of = dict(Container.objects.filter(app=app).values_list("id", "host__name"))
        assert {host_of[a.text.strip()] for a in answers} == everyone

        # One host dies: its two containers come back on the other two.
        victim, survivors = hosts[2], {h.name for h in hosts[:2]}
        with Poller(router, app.name) as during:
            victim.kill()
            converge(app, django_capture_on_commit_callbacks, r, lambda: ready(6, survivors),
                     timeout=90)
        assert Host.objects.get(name=victim.name).state == HostState.DOWN
        assert set(placement(app)) <= survivors
        assert during.statuses and during.failures() == Counter(), during.bodies
        assert [probe.get() for _ in range(12)] == [200] * 12

        # A redeploy (config:set) replaces every container with never a moment without one.
        old = set(Container.objects.filter(app=app).values_list("id", flat=True))
        with Poller(router, app.name) as redeploy:
            with django_capture_on_commit_callbacks(execute=True):
                release = actions.config_set(actor=member, app=app, values={"GREETING": "hi"})
            converge(app, django_capture_on_commit_callbacks, r,
                     lambda: ready(6, survivors, release.version), timeout=120)
            # ... and on until the old containers are stopped on their hosts, not only unrouted.
            converge(app, django_capture_on_commit_callbacks, r,
                     lambda: not old & running_on(hosts[:2]), timeout=60)
        assert not old & set(Container.objects.filter(app=app).values_list("id", flat=True))
        assert len(redeploy.statuses) >= 2
        assert redeploy.failures() == Counter(), (redeploy.statuses, redeploy.bodies)

        # The app's log (what `paas logs` reads) has every container's output, from every host,
        # the dead one's included, tagged with its process.
        assert len(made) >= 12

        def shipped() -> set[str]:
            return {f[b"line"].decode().removeprefix("serving as ")
                    for _id, f in r.xrange(f"paas:logs:{app.name}")
                    if f[b"tag"].startswith(b"app[web.") and f[b"line"].startswith(b"serving as ")}

        deadline = time.monotonic() + 30
        while not made <= shipped() and time.monotonic() < deadline:
            time.sleep(0.25)
        assert made <= shipped(), (made - shipped(), cluster.logs())
    finally:
        with contextlib.suppress(redis.RedisError):
            route_app_delete(r, app.name)


def test_it_sweeps_away_what_a_crashed_run_left() -> None:
    """A cluster whose test process died leaves namespaces and links; the next run removes them."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces)")
    work = Path(tempfile.mkdtemp(prefix="pmh-"))
    c = Cluster(redis_url=os.environ["REDIS_URL"], work=work)
    try:
        c.start()
        h = c.add_host()
        c.start_routes()
        assert leftovers(c.tag)
        # Pretend the process that made it is gone: a pid that cannot be alive.
        data = c.state_file.read_text().replace(f'"pid": {os.getpid()}', '"pid": 999999999')
        c.state_file.write_text(data)
        if c.relay is not None:
            c.relay.close()
        assert h.daemon is not None and c.routes_proc is not None
        assert c.tag in sweep_leftovers()
        h.daemon.wait(30)
        c.routes_proc.wait(30)
        assert leftovers(c.tag) == [] and not c.state_file.exists() and not work.exists()
    finally:
        c.teardown()
