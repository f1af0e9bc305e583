"""Reconcile with a real database and redis-server (agents recorded): crash loops, why a release
failed (with its container's last output), superseded releases, readiness checks and constraints
in the spec, and a formation no host satisfies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from core import actions
from core.models import App, Container, Release, ReleaseStatus
from scheduler.planner import backoff_s, status
from tests.scheduler.conftest import containers, mark, scale

pytestmark = pytest.mark.django_db


@pytest.fixture
def logs(r: redis.Redis, app: App) -> Any:
    key = f"paas:logs:{app.name}"
    yield key
    r.delete(key)


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=UTC)


def end(c: Container, state: str, t: float, code: int | None = None, message: str = "") -> None:
    """Record how a container ended, as the ingestion of the agent's event would."""
    Container.objects.filter(pk=c.pk).update(state=state, finished_at=at(t), exit_code=code,
                                             message=message)


def deployed_once(app: App, run: Any) -> tuple[Release, Container]:
    """Roll the app's release out: its one web container is ready."""
    run(app)
    (c,) = containers(app)
    Container.objects.filter(pk=c.pk).update(state="ready", address="10.9.0.7:5000",
                                             ready_at=c.created_at)
    run(app)
    release = app.current_release()
    assert release.status == ReleaseStatus.DEPLOYED
    c.refresh_from_db()
    return release, c


def crash_loop(app: App, run: Any, c: Container, times: int, code: int, state: str = "exited"
               ) -> tuple[Container, float]:
    """End `c` and let the back-off pass, `times` times; return the last replacement and when."""
    t = c.created_at.timestamp() + 1
    for _ in range(times):
        end(c, state, t, code)
        t += backoff_s(c.restarts) + 0.5
        run(app, now=t)
        current = [x for x in containers(app) if x.release_id == c.release_id]
        if not current:
            break
        (c,) = current
    return c, t


def test_it_counts_restarts_in_a_row_and_shows_a_crash_looping_container_as_crashing(
        app, hosts, agents, run) -> None:
    _release, c = deployed_once(app, run)
    c, t = crash_loop(app, run, c, 3, code=3)
    assert c.restarts == 3 and (c.last_exit_state, c.last_exit_code) == ("exited", 3)
    assert status(c.state, c.restarts, None, t) == "crashing"
    assert app.current_release().status == ReleaseStatus.DEPLOYED, "a deployed release stays so"
    # It gets ready and stays so: up again, and its next crash starts a new streak.
    Container.objects.filter(pk=c.pk).update(state="ready", ready_at=at(t))
    assert status("ready", 3, t, t + 61) == "up"
    c.refresh_from_db()
    end(c, "oom", t + 120, 137)
    out = run(app, now=t + 121.5)
    (again,) = containers(app)
    assert out.started == [again.id] and again.restarts == 1
    assert (again.last_exit_state, again.last_exit_code) == ("oom", 137)


def test_it_fails_a_release_whose_container_crashes_three_times_in_a_row_with_its_last_output(
        app, hosts, agents, run, r, logs, deploy) -> None:
    v2, old = deployed_once(app, run)
    v3 = deploy(app)
    run(app)
    new = next(c for c in containers(app) if c.release_id == v3.pk)
    since = new.created_at.timestamp()
    r.xadd(logs, {"time": str(since - 30), "tag": "app[web.1]", "line": "from before: not shown"})
    for i in range(25):
        r.xadd(logs, {"time": str(since + 1), "tag": "app[web.1]", "line": f"line {i}"})
    r.xadd(logs, {"time": str(since + 1), "tag": "app[worker.1]", "line": "another process"})
    r.xadd(logs, {"time": str(since + 2), "tag": "app[web.1]", "line": "KeyError: 'DATABASE_URL'"})
    crash_loop(app, run, new, 3, code=1)
    v3.refresh_from_db()
    assert v3.status == ReleaseStatus.FAILED
    assert v3.status_reason == "web.1 exited with code 1 (3 times in a row)"
    log_lines = v3.status_log.splitlines()
    assert len(log_lines) == 20 and log_lines[-1] == "KeyError: 'DATABASE_URL'"
    assert log_lines[0] == "line 6" and "another process" not in v3.status_log
    run(app)
    assert [c.id for c in containers(app)] == [old.id], "v2 goes on serving alone"
    v2.refresh_from_db()
    assert v2.status == ReleaseStatus.DEPLOYED


def test_it_retries_a_single_crash_of_a_new_release_before_failing_it(
        app, hosts, agents, run, deploy) -> None:
    deployed_once(app, run)
    v3 = deploy(app)
    run(app)
    new = next(c for c in containers(app) if c.release_id == v3.pk)
    replacement, _ = crash_loop(app, run, new, 1, code=1)
    v3.refresh_from_db()
    assert v3.status == ReleaseStatus.PENDING and replacement.restarts == 1


@pytest.mark.parametrize(("state", "code", "message", "reason"), [
    ("failed", None, "not ready before its deadline",
     "web.1 did not accept connections on $PORT within 60 s"),
    ("oom", 137, "", "web.1 ran out of memory (512 MB): oom (3 times in a row)"),
    ("failed", None, "image sha256:ab is not in the store",
     "web.1 failed: image sha256:ab is not in the store"),
])
def test_it_says_why_a_release_failed(app, hosts, agents, run, logs, state, code, message,
                                      reason) -> None:
    run(app)
    (c,) = containers(app)
    if state == "oom":
        Container.objects.filter(pk=c.pk).update(restarts=2)
    end(c, state, c.created_at.timestamp() + 1, code, message)
    run(app)
    release = app.current_release()
    assert release.status == ReleaseStatus.FAILED and release.status_reason == reason
    assert release.status_log == ""


def test_it_names_the_http_check_and_its_timeout_when_a_container_never_answered_it(
        app, hosts, agents, member, run, logs) -> None:
    actions.formation_scale(actor=member, app=app, updates=[
        {"type": "web", "readiness_path": "/healthz", "boot_timeout_s": 90}])
    run(app)
    (_host, spec), = agents.runs
    assert spec["readiness"] == {"type": "http", "path": "/healthz", "timeout_s": 90.0}
    (c,) = containers(app)
    end(c, "failed", c.created_at.timestamp() + 91, message="not ready before its deadline")
    run(app)
    assert app.current_release().status_reason == (
        "web.1 did not answer GET /healthz with 2xx or 3xx within 90 s")


def test_it_supersedes_a_release_replaced_before_its_roll_out_converged(
        app, hosts, agents, run, deploy) -> None:
    _v2, old = deployed_once(app, run)
    v3 = deploy(app)
    run(app)
    v4 = deploy(app)
    run(app)
    v3.refresh_from_db()
    assert v3.status == ReleaseStatus.SUPERSEDED
    assert v3.status_reason == "v4 replaced it before its roll-out converged"
    kept = sorted(c.release.version for c in containers(app))
    assert kept == [2, 4], "v3's container stops; v2's serves until v4's is ready"
    # v4 fails: the last release that was rolled out (v2) serves, not the superseded v3.
    new = next(c for c in containers(app) if c.release_id == v4.pk)
    end(new, "failed", new.created_at.timestamp() + 61, message="not ready before its deadline")
    run(app)
    run(app)
    v4.refresh_from_db()
    assert v4.status == ReleaseStatus.FAILED
    assert [c.id for c in containers(app)] == [old.id]


def test_it_leaves_a_release_pending_with_the_reason_when_no_host_has_the_labels(
        app, hosts, agents, member, staff, run) -> None:
    actions.formation_scale(actor=member, app=app, updates=[
        {"type": "web", "quantity": 2, "constraints": {"region": "eu"}}])
    out = run(app)
    assert out.started == [] and agents.runs == []
    release = app.current_release()
    release.refresh_from_db()
    assert release.status == ReleaseStatus.PENDING
    assert release.status_reason.startswith("no ready host has label region=eu")
    actions.host_label(actor=staff, host=hosts[1], changes={"region": "eu"})
    run(app)
    assert [(h, s["process_type"]) for h, s in agents.runs] == [(hosts[1].name, "web")] * 2
    release.refresh_from_db()
    assert release.status_reason == ""
    for c in containers(app):
        mark(c, "ready", "10.9.1.5:5000")
    run(app)
    release.refresh_from_db()
    assert release.status == ReleaseStatus.DEPLOYED


def test_it_says_why_a_scaled_up_deployed_release_is_short_of_containers(
        app, hosts, agents, member, run) -> None:
    release, _ = deployed_once(app, run)
    scale(member, app, web=2)
    actions.formation_scale(actor=member, app=app, updates=[
        {"type": "web", "constraints": {"disk": "ssd"}}])
    run(app)
    release.refresh_from_db()
    assert release.status == ReleaseStatus.DEPLOYED
    assert release.status_reason.startswith("no ready host has label disk=ssd")
