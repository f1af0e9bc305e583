"""The scheduler with a real agent process and a real runtime daemon (with networking) on this host.

The control plane's side runs in the test process (the test database is not visible to another
process): scaling goes through the `formation_scale` action, then the scheduler's reconcile and
report ingestion run in turn, exactly as the worker's tasks would, until the containers are
ready. Specs travel through the real broker to the real agent, which runs them with the real
daemon and reports through the real Redis streams.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from core import actions
from core.models import Container
from router.table import route_app_delete
from runtime.images import ImageStore
from runtime.tinyimage import build_tiny_image
from tests.runtime.daemon_fixtures import REPO, Daemon
from tests.scheduler.conftest import COMMIT
from tests.scheduler.realhost import converge, deploy, new_app, route

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.django_db]


@pytest.fixture
def host_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (it runs real containers)")
    subnet = f"10.{random.randint(160, 250)}.{random.randint(0, 255)}.0/24"
    d = Daemon(tmp_path_factory.mktemp("sched-runtime"), network=(f"ps{secrets.token_hex(3)}", subnet))
    try:
        d.start()
        yield d
    finally:
        d.cleanup()
        d.stop()
        d.teardown_network()


@pytest.fixture
def agent_process(host_daemon: Daemon, r: redis.Redis) -> Iterator[str]:
    """`python -m runtime.agent` for a host of its own; yields the host name."""
    name = f"e2e-{secrets.token_hex(4)}"
    env = dict(os.environ, PAAS_RUNTIME_DIR=str(host_daemon.root), PAAS_AGENT_HEARTBEAT_S="0.5")
    log = (host_daemon.root / "agent.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "runtime.agent", "--host", name],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield name
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        r.delete(f"host.{name}")


def test_it_scales_an_app_to_two_ready_routed_containers_on_a_real_host(
        host_daemon: Daemon, agent_process: str, member: Any, staff: Any, r: redis.Redis,
        django_capture_on_commit_callbacks: Any) -> None:
    store = ImageStore(host_daemon.root / "images")
    image = store.resolve(build_tiny_image(store)).digest  # the agent finds it by digest
    actions.host_register(actor=staff, name=agent_process, address="127.0.0.1", memory_mb=4096, cpus=4)
    app = new_app(member, image)
    made: list[str] = []
    try:
        with django_capture_on_commit_callbacks(execute=True):
            actions.formation_scale(actor=member, app=app, updates=[{"type": "web", "quantity": 2}])

        def two_ready_and_routed() -> bool:
            made[:] = sorted(set(made) | set(Container.objects.filter(app=app).values_list("id", flat=True)))
            ready = Container.objects.filter(app=app, state="ready")
            return ready.count() == 2 and len(route(r, app)) == 2

        converge(app, django_capture_on_commit_callbacks, r, two_ready_and_routed)
        endpoints = route(r, app)
        assert sorted(endpoints) == sorted(Container.objects.filter(app=app).values_list("address", flat=True))
        for endpoint in endpoints:
            ip, port = endpoint.rsplit(":", 1)
            with socket.create_connection((ip, int(port)), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                assert s.recv(12).startswith(b"HTTP/1.")
        running = {c["id"] for c in host_daemon.client.list()}
        assert set(made) <= running

        # Scaled to zero, the containers go away: out of the route table, then off the host.
        with django_capture_on_commit_callbacks(execute=True):
            actions.formation_scale(actor=member, app=app, updates=[{"type": "web", "quantity": 0}])

        def gone() -> bool:
            return not ({c["id"] for c in host_daemon.client.list()} & set(made))

        converge(app, django_capture_on_commit_callbacks, r, gone, timeout=60)
        assert route(r, app) == [] and not Container.objects.filter(app=app).exists()
    finally:
        host_daemon.made += made  # removed by the daemon fixture whatever happened
        with contextlib.suppress(redis.RedisError):
            route_app_delete(r, app.name)


def test_it_redeploys_with_a_ready_web_container_routed_at_every_moment(
        host_daemon: Daemon, agent_process: str, member: Any, staff: Any, r: redis.Redis,
        django_capture_on_commit_callbacks: Any) -> None:
    store = ImageStore(host_daemon.root / "images")
    image = store.resolve(build_tiny_image(store)).digest
    actions.host_register(actor=staff, name=agent_process, address="127.0.0.1", memory_mb=4096, cpus=4)
    app = new_app(member, image)
    made: set[str] = set()

    def remember() -> None:
        made.update(Container.objects.filter(app=app).values_list("id", flat=True))

    try:
        with django_capture_on_commit_callbacks(execute=True):
            actions.formation_scale(actor=member, app=app, updates=[{"type": "web", "quantity": 2}])

        def ready(version: int) -> bool:
            remember()
            rows = Container.objects.filter(app=app)
            return (len(route(r, app)) == 2 and rows.count() == 2
                    and all(c.state == "ready" and c.release.version == version for c in rows))

        first = app.current_release().version
        converge(app, django_capture_on_commit_callbacks, r, lambda: ready(first))
        old = set(Container.objects.filter(app=app).values_list("id", flat=True))
        deploy(member, app, image)
        second = app.current_release().version
        seen: list[int] = []

        def check() -> None:
            remember()
            seen.append(len(route(r, app)))

        converge(app, django_capture_on_commit_callbacks, r, lambda: ready(second), each=check)
        assert min(seen) >= 2, f"a moment with fewer than two routed web containers: {seen}"
        assert not old & set(Container.objects.filter(app=app).values_list("id", flat=True))

        def old_gone() -> bool:
            return not ({c["id"] for c in host_daemon.client.list()} & old)

        converge(app, django_capture_on_commit_callbacks, r, old_gone, timeout=60)
    finally:
        host_daemon.made += sorted(made)
        with contextlib.suppress(redis.RedisError):
            route_app_delete(r, app.name)


def test_it_fails_a_release_that_never_gets_ready_and_keeps_the_previous_one_serving(
        host_daemon: Daemon, agent_process: str, member: Any, staff: Any, r: redis.Redis,
        django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.models import ReleaseStatus

    monkeypatch.setenv("PAAS_BOOT_TIMEOUT_S", "2")
    store = ImageStore(host_daemon.root / "images")
    image = store.resolve(build_tiny_image(store)).digest
    actions.host_register(actor=staff, name=agent_process, address="127.0.0.1", memory_mb=4096, cpus=4)
    app = new_app(member, image)
    made: set[str] = set()

    def remember() -> None:
        made.update(Container.objects.filter(app=app).values_list("id", flat=True))

    try:
        def serving() -> bool:
            remember()
            return len(route(r, app)) == 1 and Container.objects.filter(app=app).count() == 1

        converge(app, django_capture_on_commit_callbacks, r, serving)
        good = app.current_release()
        (serving_id,) = Container.objects.filter(app=app).values_list("id", flat=True)
        before = route(r, app)
        build = actions.build_create(actor=member, app=app, commit=COMMIT)
        bad = actions.build_finish(actor=member, build=build, succeeded=True, image_digest=image,
                                   process_types={"web": "exec sleep 1000"})  # never listens
        seen: list[list[str]] = []

        def failed_and_cleaned() -> bool:
            remember()
            bad.refresh_from_db()
            ids = set(Container.objects.filter(app=app).values_list("id", flat=True))
            return bad.status == ReleaseStatus.FAILED and ids == {serving_id} and (
                set(made) - ids).isdisjoint({c["id"] for c in host_daemon.client.list()})

        converge(app, django_capture_on_commit_callbacks, r, failed_and_cleaned, timeout=90,
                 each=lambda: seen.append(route(r, app)))
        assert all(s == before for s in seen), "the previous release served all along"
        good.refresh_from_db()
        assert good.status == ReleaseStatus.DEPLOYED
    finally:
        host_daemon.made += sorted(made)
        with contextlib.suppress(redis.RedisError):
            route_app_delete(r, app.name)
