"""One-off runs through the REST API with a real database and redis-server; the agents are a
recorder, and the agent's side of the output stream is written as the agent writes it."""

from __future__ import annotations

import json
import secrets
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.test import Client

from core import actions
from core.models import AuditEvent, Host, HostState, Role
from runtime.agent.oneoff import run_stream
from scheduler import ingest as ingest_mod
from scheduler import oneoff
from tests.scheduler.conftest import scale
from tests.scheduler.fakes import RecordingDispatcher

pytestmark = pytest.mark.django_db


def api(user: Any) -> Client:
    _row, token = actions.token_create(actor=user, description="test")
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def start(client: Client, app: Any, command: Any, **extra: Any) -> Any:
    return client.post(f"/api/v1/apps/{app.name}/runs", json.dumps({"command": command, **extra}),
                       content_type="application/json")


def test_it_sends_a_one_off_of_the_current_release_to_a_ready_host(
        app, hosts, member, agents: RecordingDispatcher, r, django_capture_on_commit_callbacks) -> None:
    actions.config_set(actor=member, app=app, values={"DATABASE_URL": "postgres://db/x"})
    with django_capture_on_commit_callbacks(execute=True):
        answer = start(api(member), app, ["python", "manage.py", "migrate"], size="1G")
    assert answer.status_code == 201, answer.content
    run = answer.json()
    assert run["name"] == "run.1" and run["release"] == app.current_release().version
    (host, spec, timeout) = agents.oneoffs[0]
    assert host == run["host"] and host in {h.name for h in hosts}
    assert spec["id"] == run["id"] and spec["process_type"] == "run"
    assert spec["command"] == ["python", "manage.py", "migrate"] and spec["memory_mb"] == 1024
    assert spec["env"]["DATABASE_URL"] == "postgres://db/x"
    assert spec["env"]["PORT"] == "5000" and spec["env"]["DYNO"] == "run.1"
    assert spec.get("readiness") is None and spec.get("port") is None
    assert timeout == oneoff.run_timeout_s()
    assert agents.runs == []  # nothing for the reconciler: no Container row, no formation
    from router.metrics import logs_key

    logged = [(f[b"tag"], f[b"line"]) for _i, f in r.xrange(logs_key(app.name))]
    assert (b"paas[run.1]", f"Starting process with command `python manage.py migrate` "
            f"(v{run['release']}) on {host}".encode()) in logged
    event = AuditEvent.objects.get(action="run.create", app=app)
    assert event.data["command"] == "python manage.py migrate" and event.data["name"] == "run.1"
    # The next one is run.2; a string is run by /bin/sh -c.
    second = start(api(member), app, "echo $PORT").json()
    assert second["name"] == "run.2" and agents.oneoffs[1][1]["command"] == ["/bin/sh", "-c", "echo $PORT"]


def test_it_lists_running_one_offs_until_they_exit(app, hosts, member, agents, r) -> None:
    client = api(member)
    run = start(client, app, ["sleep", "100"]).json()
    listed = client.get(f"/api/v1/apps/{app.name}/runs").json()
    assert [o["name"] for o in listed] == ["run.1"]
    r.xadd(run_stream(run["id"]), {"exit": "0", "message": "", "time": ""})
    assert client.get(f"/api/v1/apps/{app.name}/runs").json() == []
    shown = client.get(f"/api/v1/apps/{app.name}/runs/{run['id']}").json()
    assert shown["exit"] == 0


def test_it_streams_the_output_in_order_and_ends_with_the_exit_status(
        app, hosts, member, agents, r: redis.Redis) -> None:
    client = api(member)
    run = start(client, app, ["sh", "-c", "exit 3"]).json()
    key = run_stream(run["id"])

    def agent() -> None:
        r.xadd(key, {"state": "starting"})
        for i in range(5):
            time.sleep(0.05)
            r.xadd(key, {"stream": "stdout" if i % 2 == 0 else "stderr", "line": f"line {i}", "time": ""})
        r.xadd(key, {"exit": "3", "message": "", "time": ""})

    writer = threading.Thread(target=agent)
    writer.start()
    try:
        response = client.get(f"/api/v1/apps/{app.name}/runs/{run['id']}/output")
        assert response.status_code == 200 and response["Content-Type"] == "application/x-ndjson"
        entries = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    finally:
        writer.join()
    assert [e["line"] for e in entries if "line" in e] == [f"line {i}" for i in range(5)]
    assert entries[2]["stream"] == "stderr"
    assert entries[-1] == {"exit": 3, "message": "", "time": ""}


def test_it_says_so_when_no_agent_picks_the_run_up(app, hosts, member, agents) -> None:
    run = oneoff.start(app, ["true"])
    entries = list(oneoff.follow(run, start_timeout_s=0.3, block_ms=100))
    assert entries == [{"exit": None, "message": f"it did not start within 0.3 s: is the agent of host {run.host} running?"}]


def test_it_stops_a_run_on_delete_and_audits_it(app, hosts, member, agents) -> None:
    client = api(member)
    run = start(client, app, ["sleep", "100"]).json()
    answer = client.delete(f"/api/v1/apps/{app.name}/runs/{run['id']}")
    assert answer.status_code == 204
    assert agents.stops == [(run["host"], run["id"])]
    assert AuditEvent.objects.filter(action="run.stop", app=app).count() == 1


@pytest.mark.parametrize(("command", "message"), [
    ([], "command: give a list of arguments"),
    ("  ", "command: give the command to run."),
    ([1, 2], "command: give a list of arguments"),
])
def test_it_refuses_a_bad_command(app, hosts, member, agents, command, message) -> None:
    answer = start(api(member), app, command)
    assert answer.status_code == 400 and answer.json()["error"]["message"].startswith(message)
    assert agents.oneoffs == []


def test_it_refuses_a_bad_size_and_unknown_fields(app, hosts, member, agents) -> None:
    answer = start(api(member), app, ["true"], size="huge")
    assert answer.status_code == 400 and answer.json()["error"]["message"].startswith("Size must be")
    answer = start(api(member), app, ["true"], detach=True)
    assert answer.status_code == 400 and "detach" in answer.json()["error"]["message"]
    assert agents.oneoffs == []


def test_it_needs_deploy_permission(app, hosts, member, agents) -> None:
    viewer = actions.user_create(actor=None, username=f"v-{secrets.token_hex(3)}")
    actions.member_add(actor=member, team=member.team, user=viewer, role=Role.VIEWER)
    answer = start(api(viewer), app, ["true"])
    assert answer.status_code == 403 and agents.oneoffs == []
    stranger = actions.user_create(actor=None, username=f"x-{secrets.token_hex(3)}")
    assert start(api(stranger), app, ["true"]).status_code == 404


def test_it_says_there_is_nothing_to_run_before_the_first_deploy(member, hosts, agents) -> None:
    bare = actions.app_create(actor=member, name=f"b{secrets.token_hex(4)}", team=member.team)
    answer = start(api(member), bare, ["true"])
    assert answer.status_code == 409
    assert answer.json()["error"]["message"] == (
        f"'{bare.name}' has no release to run yet: deploy it first (git push paas main).")
    assert not AuditEvent.objects.filter(action="run.create", app=bare).exists()


def test_it_says_no_host_can_take_it_when_every_host_is_down(app, hosts, member, agents) -> None:
    Host.objects.filter(pk__in=[h.pk for h in hosts]).update(state=HostState.DOWN)
    Host.objects.exclude(pk__in=[h.pk for h in hosts]).update(state=HostState.DOWN)
    answer = start(api(member), app, ["true"])
    assert answer.status_code == 409
    assert answer.json()["error"]["message"].startswith("The one-off cannot start: no ready host")
    assert agents.oneoffs == []


def test_ingestion_leaves_a_running_one_off_alone_but_stops_unknown_containers(
        app, hosts, member, agents, r) -> None:
    run = oneoff.start(app, ["sleep", "100"])
    stranger = f"{app.name}.web.9.abcdef"
    beat = {"containers": [{"id": run.id, "state": "running"}, {"id": stranger, "state": "running"}],
            "memory_mb": 4096, "cpus": 4}
    r.xadd("paas:agent:heartbeats", {"host": run.host, "time": str(time.time()), "data": json.dumps(beat)})
    result = ingest_mod.ingest(r, consumer=f"t-{secrets.token_hex(3)}")
    assert stranger in result.stale_stopped and run.id not in result.stale_stopped


def test_a_quiet_run_gets_keepalives_until_its_exit(app, hosts, member, agents, r) -> None:
    run = oneoff.start(app, ["sleep", "1"])
    r.xadd(run_stream(run.id), {"state": "running"})
    timer = threading.Timer(0.6, lambda: r.xadd(run_stream(run.id), {"exit": "0", "message": ""}))
    timer.start()
    try:
        got = list(oneoff.follow(run, block_ms=100, keepalive_s=0.2))
    finally:
        timer.cancel()
    assert got[0] == {"state": "running"} and got[-1]["exit"] == 0
    assert {} in got[1:-1] and all(e == {} for e in got[1:-1])


def test_a_running_one_off_takes_room_from_its_host_until_it_exits(
        app, staff, member, agents: RecordingDispatcher, run, r: redis.Redis) -> None:
    actions.host_register(actor=staff, name=f"one-{app.name}", address="10.9.9.1", memory_mb=2048, cpus=4)
    client = api(member)
    one_off = start(client, app, ["sleep", "100"], size="1G").json()
    assert one_off["memory_mb"] == 1024
    second = start(client, app, ["sleep", "100"], size="2G")
    assert second.status_code == 409 and "no ready host has room" in second.json()["error"]["message"]
    scale(member, app, web=3)  # 3 x 512 MB: two fit beside the one-off's 1 GB on 2 GB
    out = run(app)
    assert len(out.started) == 2 and "no ready host has room" in out.plan.unplaced[0]
    r.xadd(run_stream(one_off["id"]), {"exit": "0", "message": "", "time": ""})
    out = run(app)
    assert len(out.started) == 1 and not out.plan.unplaced
    assert one_off["id"].encode() not in r.zrange(oneoff.PLACED_KEY, 0, -1)


def test_a_one_off_counts_only_on_the_host_registration_it_was_placed_on(
        app, staff, member, agents: RecordingDispatcher, run) -> None:
    """Redis outlived the database (or the host was registered again under its name): the old
    registration's one-offs hold nothing on the new one."""
    host, _token = actions.host_register(actor=staff, name=f"one-{app.name}", address="10.9.9.1",
                                         memory_mb=2048, cpus=4)
    assert start(api(member), app, ["sleep", "100"], size="2G").status_code == 201
    scale(member, app, web=1)
    assert "no ready host has room" in run(app).plan.unplaced[0]
    Host.objects.filter(pk=host.pk).update(created_at=host.created_at + timedelta(seconds=1))
    assert len(run(app).started) == 1
