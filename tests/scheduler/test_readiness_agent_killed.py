"""An agent killed (-9) in the middle of a roll-out, while its check of a new web container's
readiness is under way, and started again: the check is lost with it (its message waits in the
broker for an hour), so the control plane asks again at half the container's boot timeout. The
release ends deployed, or failed with the reason, never stuck `running`.

A real agent process and runtime daemon on this host (the control plane's side runs in the test
process, as in test_failover.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import redis

from core import actions
from core.models import App, Container, Release, ReleaseStatus
from router.table import route_app_delete
from runtime.images import ImageStore
from runtime.tinyimage import build_tiny_image
from tests.scheduler.conftest import COMMIT
from tests.scheduler.realhost import converge, route
from tests.scheduler.test_failover import SimHost, sim_hosts  # noqa: F401

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.django_db]


def release_with(member: Any, app: App, image: str, web: str) -> Release:
    build = actions.build_create(actor=member, app=app, commit=COMMIT)
    release = actions.build_finish(actor=member, build=build, succeeded=True, image_digest=image,
                                   process_types={"web": web})
    assert release is not None
    return release


def test_it_settles_a_roll_out_whose_agent_was_killed_during_the_readiness_check(
        sim_hosts: Callable[[], SimHost], member: Any, staff: Any, r: redis.Redis,  # noqa: F811
        django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAAS_HOST_DOWN_AFTER_S", "60")  # the host stays up while its agent restarts
    host = sim_hosts()
    store = ImageStore(host.daemon.root / "images")
    image = store.resolve(build_tiny_image(store)).digest
    actions.host_register(actor=staff, name=host.name, address="127.0.0.1", memory_mb=4096, cpus=4)
    app = actions.app_create(actor=member, name=f"k{host.name[3:]}", team=member.team)
    run = django_capture_on_commit_callbacks
    try:
        first = release_with(member, app, image, "exec httpd -f -p $PORT -h /")
        actions.formation_scale(actor=member, app=app, updates=[
            {"type": "web", "quantity": 1, "boot_timeout_s": 12}])

        def settled(release: Release) -> bool:
            release.refresh_from_db()
            return release.status in (ReleaseStatus.DEPLOYED, ReleaseStatus.FAILED)

        def running(release: Release) -> bool:
            return Container.objects.filter(app=app, release=release, state="running").exists()

        converge(app, run, r, lambda: settled(first))
        assert first.status == ReleaseStatus.DEPLOYED

        # It listens a few seconds after it starts: the agent dies while it polls.
        second = release_with(member, app, image, "sleep 4; exec httpd -f -p $PORT -h /")
        converge(app, run, r, lambda: running(second), timeout=60)
        host.kill_agent()
        host.start_agent()
        converge(app, run, r, lambda: settled(second), timeout=90)
        assert second.status == ReleaseStatus.DEPLOYED, second.status_reason
        (serving,) = Container.objects.filter(app=app)
        assert serving.release_id == second.pk and serving.state == "ready"
        assert route(r, app) == [serving.address]

        # It never listens: failed with the reason, whether the agent asked again or the
        # control plane gave up on it; the release before it goes on serving.
        third = release_with(member, app, image, "exec sleep 1000")
        converge(app, run, r, lambda: running(third), timeout=60)
        host.kill_agent()
        host.start_agent()
        converge(app, run, r, lambda: settled(third), timeout=90)
        assert third.status == ReleaseStatus.FAILED
        assert third.status_reason == "web.1 did not accept connections on $PORT within 12 s"
        converge(app, run, r, lambda: not Container.objects.filter(app=app, release=third).exists(),
                 timeout=60)
        assert [c.id for c in Container.objects.filter(app=app)] == [serving.id]
        assert route(r, app) == [serving.address]
    finally:
        with contextlib.suppress(redis.RedisError):
            route_app_delete(r, app.name)
            r.delete(f"paas:logs:{app.name}")
