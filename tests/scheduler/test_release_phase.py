"""The release phase with a real database and redis-server; the agents are a recorder.

The agent's side is played by writing the one-off's stream as the agent would
(`runtime.agent.oneoff`): output lines, then the exit entry.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from core import actions
from core.errors import Invalid
from core.models import App, Formation, Release, ReleaseStatus
from runtime.agent.oneoff import run_stream
from scheduler import oneoff
from tests.scheduler.conftest import COMMIT, DIGEST, containers, mark
from tests.scheduler.fakes import RecordingDispatcher

pytestmark = pytest.mark.django_db

NEW_DIGEST = "sha256:" + "ef" * 32


def serve(app: App, run: Any) -> list[str]:
    """Reconcile until the current release's web container is ready; return the ready ids."""
    run(app)
    for c in containers(app):
        mark(c, "ready", address=f"10.0.0.{c.number}:5000")
    run(app)
    return sorted(c.id for c in containers(app))


def deploy_with_release_phase(member: Any, app: App, command: str = "python manage.py migrate") -> Release:
    build = actions.build_create(actor=member, app=app, commit=COMMIT)
    release = actions.build_finish(actor=member, build=build, succeeded=True, image_digest=NEW_DIGEST,
                                   process_types={"web": "httpd -f -p $PORT", "release": command})
    assert release is not None
    return release


def agent_writes(r: redis.Redis, run_id: str, lines: list[str], code: int | None, message: str = "") -> None:
    key = run_stream(run_id)
    r.xadd(key, {"state": "running"})
    for line in lines:
        r.xadd(key, {"stream": "stdout", "line": line, "time": ""})
    r.xadd(key, {"exit": "" if code is None else str(code), "message": message, "time": ""})
    r.expire(key, 600)


def test_it_runs_the_release_command_once_before_anything_of_the_release_starts(
        app, hosts, member, agents: RecordingDispatcher, run, r) -> None:
    old = serve(app, run)
    agents.runs.clear()
    release = deploy_with_release_phase(member, app)
    run(app)
    assert len(agents.oneoffs) == 1
    host, spec, timeout = agents.oneoffs[0]
    assert spec["process_type"] == "release" and spec["release"] == release.version
    assert spec["command"] == ["/bin/sh", "-c", "python manage.py migrate"]
    assert spec["image"] == NEW_DIGEST and spec["env"]["DYNO"] == "release.1"
    assert spec["id"].startswith(f"{app.name}.release.1.") and spec.get("readiness") is None
    assert timeout == oneoff.release_timeout_s()
    assert host in {h.name for h in hosts}
    release.refresh_from_db()
    assert release.status == ReleaseStatus.RELEASING
    # Nothing of the new release runs, and the old web container goes on serving.
    assert agents.runs == [] and agents.stops == []
    assert sorted(c.id for c in containers(app)) == old


def test_a_worker_restarted_mid_phase_does_not_run_it_twice(
        app, hosts, member, agents: RecordingDispatcher, run) -> None:
    serve(app, run)
    agents.runs.clear()
    deploy_with_release_phase(member, app)
    run(app)
    # Another worker (or this one after a restart) reconciles again, from the rows and Redis.
    run(app)
    run(app)
    assert len(agents.oneoffs) == 1
    assert agents.runs == []


def test_it_rolls_the_release_out_after_the_release_command_exits_0(
        app, hosts, member, agents: RecordingDispatcher, run, r) -> None:
    old = serve(app, run)
    release = deploy_with_release_phase(member, app)
    out = run(app)
    assert out.plan.retry_at is not None  # the phase is looked at again soon, also with no event
    run_id = agents.oneoffs[0][1]["id"]
    agent_writes(r, run_id, ["Applying migrations... OK"], 0)
    run(app)
    new = [c for c in containers(app) if c.release_id == release.pk]
    assert [c.name for c in new] == ["web.1"]
    assert [spec["image"] for _, spec in agents.runs][-1] == NEW_DIGEST
    release.refresh_from_db()
    assert release.status == ReleaseStatus.PENDING
    for c in new:
        mark(c, "ready", address="10.0.1.1:5000")
    run(app)  # the old container stops
    run(app)  # nothing else runs: rolled out
    release.refresh_from_db()
    assert release.status == ReleaseStatus.DEPLOYED
    assert not set(old) & {c.id for c in containers(app)}
    # Reconciling the deployed release again (a scale, a tick) never runs the phase again.
    actions.formation_scale(actor=member, app=app, updates=[{"type": "web", "quantity": 2}])
    run(app)
    assert len(agents.oneoffs) == 1


def test_a_failed_release_command_fails_the_release_and_the_old_one_keeps_serving(
        app, hosts, member, agents: RecordingDispatcher, run, r) -> None:
    before = app.current_release()
    old = serve(app, run)
    agents.runs.clear()
    release = deploy_with_release_phase(member, app, command="exit 1")
    run(app)
    run_id = agents.oneoffs[0][1]["id"]
    agent_writes(r, run_id, [f"line {i}" for i in range(15)] + ["django.db.utils.OperationalError"], 1)
    run(app)
    release.refresh_from_db()
    assert release.status == ReleaseStatus.FAILED
    assert release.status_reason == "its release command exited with status 1"
    log_lines = release.status_log.splitlines()
    assert log_lines[-1] == "django.db.utils.OperationalError" and len(log_lines) == oneoff.REASON_LINES
    assert agents.runs == [] and agents.stops == []
    assert sorted(c.id for c in containers(app)) == old
    assert {c.release_id for c in containers(app)} == {before.pk}
    from router.metrics import logs_key

    logged = [f[b"line"].decode() for _i, f in r.xrange(logs_key(app.name))]
    assert f"Release {release.name} failed: its release command exited with status 1" in logged
    run(app)
    assert len(agents.oneoffs) == 1 and agents.runs == []


def test_a_release_phase_that_never_started_fails_its_release_after_its_time_limit(
        app, hosts, member, agents: RecordingDispatcher, run, monkeypatch) -> None:
    import time

    monkeypatch.setenv("PAAS_RELEASE_TIMEOUT_S", "5")
    serve(app, run)
    release = deploy_with_release_phase(member, app)
    run(app)
    later = time.time() + 5 + oneoff.LOST_AFTER_S + 60
    run(app, now=later)
    release.refresh_from_db()
    assert release.status == ReleaseStatus.FAILED
    assert release.status_reason == "its release phase never reported its end"


def test_a_release_without_a_release_command_rolls_out_at_once(
        app, hosts, member, agents: RecordingDispatcher, run) -> None:
    serve(app, run)
    build = actions.build_create(actor=member, app=app, commit=COMMIT)
    actions.build_finish(actor=member, build=build, succeeded=True, image_digest=DIGEST,
                         process_types={"web": "httpd -f -p $PORT"})
    agents.runs.clear()
    run(app)
    assert agents.oneoffs == [] and len(agents.runs) == 1


def test_the_release_process_type_is_never_run_as_a_long_running_process(
        app, hosts, member, agents: RecordingDispatcher, run, r) -> None:
    serve(app, run)
    deploy_with_release_phase(member, app)
    with pytest.raises(Invalid, match="release phase"):
        actions.formation_scale(actor=member, app=app, updates=[{"type": "release", "quantity": 1}])
    # A row left from before the release phase had none: still never run as a process.
    Formation.objects.create(app=app, type="release", quantity=1)
    run(app)
    agent_writes(r, agents.oneoffs[0][1]["id"], [], 0)
    run(app)
    assert {spec["process_type"] for _, spec in agents.runs} == {"web"}


def test_the_exit_event_of_a_release_phase_has_its_app_reconciled(
        app, hosts, member, agents: RecordingDispatcher, run, r) -> None:
    import secrets
    import time

    from runtime.agent.reports import EVENTS_STREAM
    from scheduler.ingest import ingest

    serve(app, run)
    deploy_with_release_phase(member, app)
    run(app)
    host, spec, _timeout = agents.oneoffs[0]
    r.xadd(EVENTS_STREAM, {"host": host, "id": spec["id"], "state": "exited", "exit_code": "0",
                           "time": str(time.time())})
    assert app.pk in ingest(r, consumer=f"t-{secrets.token_hex(3)}").apps
