"""HTTP readiness and release failure reasons with a real agent process and a real runtime daemon
on this host (the control plane's side runs in the test process, as in test_end_to_end.py)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import redis

from core import actions
from core.models import App, Container, Formation, Release, ReleaseStatus
from router.table import route_app_delete
from runtime.images import ImageStore
from runtime.tinyimage import build_tiny_image
from tests.runtime.daemon_fixtures import Daemon
from tests.scheduler.conftest import COMMIT
from tests.scheduler.realhost import converge, new_app, route
from tests.scheduler.test_end_to_end import agent_process, host_daemon  # noqa: F401

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.django_db]


def release_with(member: Any, app: App, image: str, web: str) -> Release:
    build = actions.build_create(actor=member, app=app, commit=COMMIT)
    release = actions.build_finish(actor=member, build=build, succeeded=True, image_digest=image,
                                   process_types={"web": web})
    assert release is not None
    return release


def test_it_rolls_out_behind_an_http_check_and_fails_releases_with_the_reason_and_output(
        host_daemon: Daemon, agent_process: str, member: Any, staff: Any,  # noqa: F811
        r: redis.Redis, django_capture_on_commit_callbacks: Any) -> None:
    store = ImageStore(host_daemon.root / "images")
    image = store.resolve(build_tiny_image(store)).digest
    actions.host_register(actor=staff, name=agent_process, address="127.0.0.1", memory_mb=4096, cpus=4)
    app = new_app(member, image)  # web: busybox httpd serving the image's files
    made: set[str] = set()

    def remember() -> None:
        made.update(Container.objects.filter(app=app).values_list("id", flat=True))

    try:
        # A path the server answers 200: ready through the HTTP check, rolled out and routed.
        actions.formation_scale(actor=member, app=app, updates=[
            {"type": "web", "readiness_path": "/etc/hostname", "boot_timeout_s": 30}])
        first = app.current_release()

        def deployed(release: Release) -> bool:
            remember()
            release.refresh_from_db()
            return release.status == ReleaseStatus.DEPLOYED and len(route(r, app)) == 1

        converge(app, django_capture_on_commit_callbacks, r, lambda: deployed(first))
        (serving,) = Container.objects.filter(app=app)
        before = route(r, app)

        # A path it answers 404: the next release never gets ready and fails with the reason.
        actions.formation_scale(actor=member, app=app, updates=[
            {"type": "web", "readiness_path": "/healthz", "boot_timeout_s": 2}])
        unready = release_with(member, app, image, "exec httpd -f -p $PORT -h /")

        def failed(release: Release) -> bool:
            remember()
            release.refresh_from_db()
            return release.status == ReleaseStatus.FAILED

        converge(app, django_capture_on_commit_callbacks, r, lambda: failed(unready), timeout=90)
        assert unready.status_reason == "web.1 did not answer GET /healthz with 2xx or 3xx within 2 s"
        Formation.objects.filter(app=app, type="web").update(readiness_path="", boot_timeout_s=None)

        # A web process that prints and exits: three crashes in a row fail the release, with
        # its last output lines from the app's log stream.
        crashing = release_with(member, app, image,
                                "echo booting; echo 'fatal: DATABASE_URL is not set' >&2; exit 3")
        converge(app, django_capture_on_commit_callbacks, r, lambda: failed(crashing), timeout=120)
        assert crashing.status_reason == "web.1 exited with code 3 (3 times in a row)"
        assert "fatal: DATABASE_URL is not set" in crashing.status_log.splitlines()
        assert "booting" in crashing.status_log.splitlines()

        def only_the_first_serves() -> bool:
            remember()
            return set(Container.objects.filter(app=app).values_list("id", flat=True)) == {serving.id}

        converge(app, django_capture_on_commit_callbacks, r, only_the_first_serves, timeout=60)
        assert route(r, app) == before
    finally:
        host_daemon.made += sorted(made)
        with contextlib.suppress(redis.RedisError):
            route_app_delete(r, app.name)
            r.delete(f"paas:logs:{app.name}")
