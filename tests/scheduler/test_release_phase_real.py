"""The release phase with a real agent process and a real runtime daemon on this host (see
test_end_to_end for the set-up): the release command runs in a real one-off container."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import redis

from core import actions
from core.models import Container, ReleaseStatus
from router.table import route_app_delete
from runtime.images import ImageStore
from runtime.tinyimage import build_tiny_image
from tests.runtime.daemon_fixtures import Daemon
from tests.scheduler.conftest import COMMIT
from tests.scheduler.realhost import converge, new_app, route
from tests.scheduler.test_end_to_end import agent_process, host_daemon  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.django_db]

WEB = "exec httpd -f -p $PORT -h /"


def test_a_failing_release_command_leaves_the_old_release_serving_and_a_passing_one_rolls_out(
        host_daemon: Daemon, agent_process: str, member: Any, staff: Any, r: redis.Redis,  # noqa: F811
        django_capture_on_commit_callbacks: Any) -> None:
    store = ImageStore(host_daemon.root / "images")
    image = store.resolve(build_tiny_image(store)).digest
    actions.host_register(actor=staff, name=agent_process, address="127.0.0.1", memory_mb=4096, cpus=4)
    app = new_app(member, image)
    made: set[str] = set()

    def remember() -> None:
        made.update(Container.objects.filter(app=app).values_list("id", flat=True))
        made.update(c["id"] for c in host_daemon.client.list() if c["id"].startswith(f"{app.name}."))

    def one_offs() -> set[str]:
        return {c["id"] for c in host_daemon.client.list() if c["id"].startswith(f"{app.name}.release.")}

    def release_with(command: str) -> Any:
        build = actions.build_create(actor=member, app=app, commit=COMMIT)
        return actions.build_finish(actor=member, build=build, succeeded=True, image_digest=image,
                                    process_types={"web": WEB, "release": command})

    try:
        def serving() -> bool:
            remember()
            return len(route(r, app)) == 1 and Container.objects.filter(app=app).count() == 1

        converge(app, django_capture_on_commit_callbacks, r, serving)
        (serving_id,) = Container.objects.filter(app=app).values_list("id", flat=True)
        before = route(r, app)

        bad = release_with("echo migrating; echo 'no such table' >&2; exit 1")
        seen: list[list[str]] = []

        def failed() -> bool:
            remember()
            bad.refresh_from_db()
            return bad.status == ReleaseStatus.FAILED and not one_offs()

        converge(app, django_capture_on_commit_callbacks, r, failed, timeout=90,
                 each=lambda: seen.append(route(r, app)))
        assert bad.status_reason == "its release command exited with status 1"
        assert bad.status_log.splitlines() == ["migrating", "no such table"]
        assert all(s == before for s in seen), "the previous release served all along"
        assert list(Container.objects.filter(app=app).values_list("id", flat=True)) == [serving_id]

        good = release_with("echo migrated")

        def rolled_out() -> bool:
            remember()
            good.refresh_from_db()
            rows = list(Container.objects.filter(app=app))
            return (good.status == ReleaseStatus.DEPLOYED and len(rows) == 1
                    and rows[0].release_id == good.pk and len(route(r, app)) == 1)

        converge(app, django_capture_on_commit_callbacks, r, rolled_out, timeout=90)
        assert route(r, app) != before
        converge(app, django_capture_on_commit_callbacks, r, lambda: not one_offs(), timeout=30)
    finally:
        host_daemon.made += sorted(made)
        with contextlib.suppress(redis.RedisError):
            route_app_delete(r, app.name)
