"""A host whose agent is killed (-9): marked down, its containers come up on another host.

Two hosts on this machine, each a real runtime daemon with a bridge and subnet of its own and a
real agent process. (They share the machine's network namespace; separate namespaces per host
are not simulated here.)
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from core import actions
from core.models import Container, Host, HostState
from runtime.images import ImageStore
from runtime.tinyimage import build_tiny_image
from tests.runtime.daemon_fixtures import REPO, Daemon
from tests.scheduler.realhost import converge, new_app, route

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.django_db]


class SimHost:
    def __init__(self, daemon: Daemon, name: str) -> None:
        self.daemon = daemon
        self.name = name
        self.agent: subprocess.Popen[bytes] | None = None

    def start_agent(self) -> None:
        env = dict(os.environ, PAAS_RUNTIME_DIR=str(self.daemon.root), PAAS_AGENT_HEARTBEAT_S="0.5")
        self.agent = subprocess.Popen([sys.executable, "-m", "runtime.agent", "--host", self.name],
                                      cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)

    def kill_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGKILL)
            self.agent.wait()

    def running(self) -> set[str]:
        return {c["id"] for c in self.daemon.client.list() if c.get("state") == "running"}


@pytest.fixture
def sim_hosts(tmp_path_factory: pytest.TempPathFactory, r: redis.Redis) -> Iterator[Callable[[], SimHost]]:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (it runs real containers)")
    made: list[SimHost] = []

    def make() -> SimHost:
        subnet = f"10.{random.randint(160, 250)}.{random.randint(0, 255)}.0/24"
        d = Daemon(tmp_path_factory.mktemp("sched-host"), network=(f"pf{secrets.token_hex(3)}", subnet))
        h = SimHost(d, f"fo-{secrets.token_hex(4)}")
        made.append(h)
        d.start()
        h.start_agent()
        return h

    try:
        yield make
    finally:
        for h in made:
            if h.agent is not None and h.agent.poll() is None:
                h.agent.terminate()
                try:
                    h.agent.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    h.agent.kill()
                    h.agent.wait()
            with contextlib.suppress(Exception):
                h.daemon.made += [c["id"] for c in h.daemon.client.list()]
            h.daemon.cleanup()
            h.daemon.stop()
            h.daemon.teardown_network()
            r.delete(f"host.{h.name}")


def test_it_brings_a_dead_hosts_containers_up_on_another_host(
        sim_hosts: Callable[[], SimHost], member: Any, staff: Any, r: redis.Redis,
        django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAAS_HOST_DOWN_AFTER_S", "3")
    a, b = sim_hosts(), sim_hosts()
    image = ""
    for h in (a, b):
        store = ImageStore(h.daemon.root / "images")
        image = store.resolve(build_tiny_image(store)).digest
        actions.host_register(actor=staff, name=h.name, address="127.0.0.1", memory_mb=4096, cpus=4)
    app = new_app(member, image)
    with django_capture_on_commit_callbacks(execute=True):
        actions.formation_scale(actor=member, app=app, updates=[{"type": "web", "quantity": 2}])

    def two_ready_on(hosts: set[str]) -> bool:
        rows = list(Container.objects.filter(app=app).select_related("host"))
        return (len(rows) == 2 and all(c.state == "ready" for c in rows)
                and {c.host.name for c in rows if c.host} == hosts and len(route(r, app)) == 2)

    converge(app, django_capture_on_commit_callbacks, r, lambda: two_ready_on({a.name, b.name}))
    on_a = set(Container.objects.filter(app=app, host__name=a.name).values_list("id", flat=True))

    a.kill_agent()  # its heartbeats stop; its daemon and containers keep running

    converge(app, django_capture_on_commit_callbacks, r, lambda: two_ready_on({b.name}), timeout=90)
    assert Host.objects.get(name=a.name).state == HostState.DOWN
    assert len(b.running() & set(Container.objects.filter(app=app).values_list("id", flat=True))) == 2
    assert sorted(route(r, app)) == sorted(Container.objects.filter(app=app).values_list("address", flat=True))

    # The host comes back: it is ready again, and the containers it still runs are removed.
    a.start_agent()
    converge(app, django_capture_on_commit_callbacks, r,
             lambda: Host.objects.get(name=a.name).state == HostState.READY and not (a.running() & on_a),
             timeout=90)
    assert two_ready_on({b.name})
