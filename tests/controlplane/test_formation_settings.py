"""Per-process-type readiness checks, boot timeouts and host constraints; host labels; what
`paas ps` shows of crash-looping containers and releases that cannot roll out."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from core import actions
from core.models import AuditEvent, Container, Formation, Host
from tests.controlplane.inprocess_cli import InProcessCli
from tests.controlplane.test_api import assert_error, call, client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def paas(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
         ) -> Iterator[InProcessCli]:
    with InProcessCli(monkeypatch, capsys) as cli:
        yield cli


@pytest.fixture
def host(acme) -> Host:
    return actions.host_register(actor=acme.staff, name="h1", address="10.0.0.1",
                                 memory_mb=1024, cpus=1, labels={"disk": "ssd"})[0]


def web(app) -> Formation:
    return Formation.objects.get(app=app, type="web")


def test_it_stores_readiness_boot_timeout_and_constraints_on_the_formation(acme, deployed) -> None:
    answer = call(client_for(acme.member), "PATCH", "apps/web1/formation", {"updates": [
        {"type": "web", "readiness_path": "/healthz", "boot_timeout_s": 120,
         "constraints": {"region": "eu", "disk": "ssd"}},
        {"type": "worker", "constraints": {"region": "eu"}},
    ]})
    assert answer.status_code == 200, answer.content
    row = answer.json()[0]
    assert (row["readiness_path"], row["boot_timeout_s"]) == ("/healthz", 120)
    assert row["constraints"] == {"region": "eu", "disk": "ssd"} and row["quantity"] == 1
    assert answer.json()[1]["constraints"] == {"region": "eu"}
    event = AuditEvent.objects.filter(action="formation.scale").latest("id")
    assert event.data["changes"][0]["readiness_path"] == "/healthz"
    # Back to the defaults.
    call(client_for(acme.member), "PATCH", "apps/web1/formation", {"updates": [
        {"type": "web", "readiness_path": "", "boot_timeout_s": None, "constraints": {}}]})
    f = web(deployed)
    assert (f.readiness_path, f.boot_timeout_s, f.constraints) == ("", None, {})


@pytest.mark.parametrize(("update", "field"), [
    ({"type": "web", "readiness_path": "healthz"}, "readiness_path"),
    ({"type": "web", "readiness_path": "/a b"}, "readiness_path"),
    ({"type": "web", "readiness_path": "/" + "x" * 200}, "readiness_path"),
    ({"type": "web", "boot_timeout_s": 0}, "boot_timeout_s"),
    ({"type": "web", "boot_timeout_s": 3601}, "boot_timeout_s"),
    ({"type": "web", "boot_timeout_s": "60"}, "boot_timeout_s"),
    ({"type": "worker", "readiness_path": "/healthz"}, "readiness_path"),
    ({"type": "worker", "boot_timeout_s": 30}, "boot_timeout_s"),
    ({"type": "web", "constraints": ["region=eu"]}, "constraints"),
    ({"type": "web", "constraints": {"Region!": "eu"}}, "constraints"),
    ({"type": "web", "constraints": {"region": ""}}, "constraints"),
    ({"type": "web", "constraints": {"region": 3}}, "constraints"),
    ({"type": "web", "colour": "blue"}, "updates"),
    ({"type": "web"}, "updates"),
])
def test_it_refuses_bad_readiness_timeouts_and_constraints_with_a_clear_message(
        acme, deployed, update, field) -> None:
    answer = call(client_for(acme.member), "PATCH", "apps/web1/formation", {"updates": [update]})
    error = assert_error(answer, 400, "invalid", field)
    assert "Traceback" not in error["message"]
    f = web(deployed)
    assert (f.readiness_path, f.boot_timeout_s, f.constraints) == ("", None, {})


def test_it_sets_and_removes_host_labels_for_staff_only(acme, host) -> None:
    staff = client_for(acme.staff)
    answer = call(staff, "PATCH", "hosts/h1", {"labels": {"region": "eu", "disk": None}})
    assert answer.status_code == 200 and answer.json()["labels"] == {"region": "eu"}
    host.refresh_from_db()
    assert host.labels == {"region": "eu"}
    assert AuditEvent.objects.filter(action="host.label").count() == 1
    assert_error(call(client_for(acme.owner), "PATCH", "hosts/h1", {"labels": {"a": "b"}}),
                 403, "forbidden")
    assert_error(call(staff, "PATCH", "hosts/h1", {"labels": {"a b": "c"}}), 400, "invalid", "labels")
    assert_error(call(staff, "PATCH", "hosts/h1", {"labels": {}}), 400, "invalid")
    assert_error(call(staff, "PATCH", "hosts/nope", {"labels": {"a": "b"}}), 404, "not_found")
    host.refresh_from_db()
    assert host.labels == {"region": "eu"}


def test_it_shows_crashing_containers_with_restarts_and_last_exit_in_the_api_and_ps(
        acme, deployed, host, paas) -> None:
    release = deployed.current_release()
    now = timezone.now()
    Container.objects.create(id="web1.web.1.aaaaaa", app=deployed, release=release, type="web",
                             number=1, host=host, state="starting", restarts=4,
                             last_exit_state="exited", last_exit_code=1)
    Container.objects.create(id="web1.web.2.bbbbbb", app=deployed, release=release, type="web",
                             number=2, host=host, state="ready", restarts=5, ready_at=now - timedelta(minutes=5),
                             last_exit_state="oom", last_exit_code=137)
    Container.objects.create(id="web1.worker.1.cccccc", app=deployed, release=release,
                             type="worker", number=1, host=host, state="oom", exit_code=137)
    listed = call(client_for(acme.viewer), "GET", "apps/web1/containers").json()
    assert [(c["name"], c["status"], c["restarts"]) for c in listed] == [
        ("web.1", "crashing", 4), ("web.2", "up", 5), ("worker.1", "oom", 0)]
    assert (listed[0]["last_exit_state"], listed[0]["last_exit_code"]) == ("exited", 1)
    result = paas.as_user(acme.viewer)("ps", "--app", "web1")
    assert result.code == 0, result.err
    rows = {line.split()[0]: line.split() for line in result.out.splitlines() if line.strip()}
    assert rows["web.1"][1] == "crashing" and rows["web.1"][-3:] == ["4", "code", "1"]
    assert rows["web.2"][1] == "up" and rows["web.2"][-1] == "oom"
    assert rows["worker.1"][1] == "oom"


def test_it_shows_in_ps_why_the_newest_release_does_not_roll_out(acme, deployed, paas) -> None:
    release = deployed.current_release()
    release.status_reason = "no ready host has label region=eu (needed by web1 web (512 MB, 1 CPU))"
    release.save(update_fields=["status_reason"])
    result = paas.as_user(acme.member)("ps", "--app", "web1")
    assert result.out.splitlines()[-1] == (
        "v2 is pending: no ready host has label region=eu (needed by web1 web (512 MB, 1 CPU))")


def test_it_sets_constraints_and_readiness_from_the_cli(acme, deployed, paas) -> None:
    paas.as_user(acme.member)
    result = paas("scale", "web=3", "--constraint", "region=eu", "--app", "web1")
    assert result.code == 0, result.err
    f = web(deployed)
    assert (f.quantity, f.constraints) == (3, {"region": "eu"})
    result = paas("ps:constraints", "worker", "disk=ssd", "zone=b", "--app", "web1")
    assert result.out.strip() == "web1 worker now runs on hosts labelled disk=ssd zone=b."
    assert Formation.objects.get(app=deployed, type="worker").constraints == {"disk": "ssd", "zone": "b"}
    assert paas("ps:constraints", "worker", "--clear", "--app", "web1").code == 0
    assert Formation.objects.get(app=deployed, type="worker").constraints == {}
    result = paas("ps:readiness", "web", "/healthz", "--timeout", "90", "--app", "web1")
    assert result.out.strip() == "web1 web is ready on: http GET /healthz, 90 s (from its next container on)."
    result = paas("ps", "--app", "web1")
    web_line = next(line for line in result.out.splitlines() if line.startswith("web "))
    assert "region=eu" in web_line and "http GET /healthz, 90 s" in web_line
    assert paas("ps:readiness", "web", "--tcp", "--app", "web1").code == 0
    f = web(deployed)
    assert (f.readiness_path, f.boot_timeout_s) == ("", 90)


@pytest.mark.parametrize(("args", "fragment"), [
    (("scale", "web=2", "--constraint", "region"), "is not NAME=VALUE"),
    (("ps:constraints", "web"), "--clear"),
    (("ps:readiness", "web"), "Give a PATH"),
    (("ps:readiness", "web", "/x", "--tcp"), "not both"),
    (("ps:readiness", "worker", "/x"), "Only 'web' containers get $PORT"),
    (("ps:readiness", "web", "health"), "absolute URL path"),
])
def test_it_refuses_bad_constraint_and_readiness_commands_in_one_line(
        acme, deployed, paas, args, fragment) -> None:
    result = paas.as_user(acme.member)(*args, "--app", "web1")
    assert result.code != 0 and fragment in result.err and "Traceback" not in result.err


def test_it_labels_hosts_from_the_cli(acme, host, paas) -> None:
    result = paas.as_user(acme.staff)("hosts:label", "h1", "region=eu", "disk-")
    assert result.code == 0, result.err
    assert result.out.strip() == "h1 labels: region=eu."
    host.refresh_from_db()
    assert host.labels == {"region": "eu"}
    refused = paas.as_user(acme.owner)("hosts:label", "h1", "region=us")
    assert refused.code == 1 and refused.err.startswith("paas: ")
    host.refresh_from_db()
    assert host.labels == {"region": "eu"}
