"""A release's outcome — status, the reason, the last output of a container that failed it — in
the model, the API and the CLI."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.models import Release
from core.models.release import ImmutableReleaseError
from tests.controlplane.inprocess_cli import InProcessCli

pytestmark = pytest.mark.django_db


@pytest.fixture
def paas(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
         ) -> Iterator[InProcessCli]:
    with InProcessCli(monkeypatch, capsys) as cli:
        yield cli


def _fail(release: Release, reason: str, log: str) -> None:
    release.status, release.status_reason, release.status_log = "failed", reason, log
    release.save(update_fields=["status", "status_reason", "status_log"])


def test_it_lets_the_status_and_its_reason_change_but_nothing_else(deployed) -> None:
    release = deployed.current_release()
    _fail(release, "web.1 exited with code 1", "boom")
    stored = Release.objects.get(pk=release.pk)
    assert (stored.status, stored.status_reason, stored.status_log) == (
        "failed", "web.1 exited with code 1", "boom")
    stored.description = "rewritten"
    with pytest.raises(ImmutableReleaseError):
        stored.save(update_fields=["status", "description"])
    with pytest.raises(ImmutableReleaseError):
        stored.save(update_fields=[])


def test_it_stores_the_longest_status_names(deployed) -> None:
    release = deployed.current_release()
    for status in ("superseded", "releasing"):
        release.status = status
        release.save(update_fields=["status"])
        assert Release.objects.get(pk=release.pk).status == status


def test_it_shows_the_reason_and_last_output_in_the_api_read_only(acme, deployed) -> None:
    from tests.controlplane.test_api import call, client_for

    _fail(deployed.current_release(), "web.1 exited with code 1", "Traceback\nValueError: no")
    client = client_for(acme.viewer)
    listed = call(client, "GET", "apps/web1/releases").json()[0]
    assert listed["status"] == "failed"
    assert listed["status_reason"] == "web.1 exited with code 1"
    assert listed["status_log"] == "Traceback\nValueError: no"
    one = call(client, "GET", "apps/web1/releases/2").json()
    assert one["status_reason"] == "web.1 exited with code 1"
    # Nothing in the API writes a release's outcome.
    owner = client_for(acme.owner)
    for method in ("PATCH", "PUT"):
        answer = call(owner, method, "apps/web1/releases/2", {"status": "deployed"})
        assert answer.status_code == 405
    assert Release.objects.get(app=deployed, version=2).status == "failed"


def test_it_hides_a_release_outcome_from_strangers(acme, deployed) -> None:
    from tests.controlplane.test_api import call, client_for

    _fail(deployed.current_release(), "web.1 exited with code 1", "secret output")
    answer = call(client_for(acme.stranger), "GET", "apps/web1/releases/2")
    assert answer.status_code == 404 and b"secret output" not in answer.content


def test_it_shows_the_reason_in_paas_releases(acme, deployed, paas) -> None:
    _fail(deployed.current_release(), "web.2 exited with code 1", "")
    result = paas.as_user(acme.viewer)("releases", "--app", "web1")
    assert result.code == 0, result.err
    line = next(line for line in result.out.splitlines() if line.startswith("v2"))
    assert "failed" in line and "web.2 exited with code 1" in line
    assert "REASON" in result.out.splitlines()[0]


def test_it_shows_the_reason_and_last_output_in_paas_releases_info(acme, deployed, paas) -> None:
    _fail(deployed.current_release(), "oom", "loading model\nKilled")
    result = paas.as_user(acme.member)("releases:info", "v2", "--app", "web1")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert "Status:" in result.out and any(x.startswith("Reason:") and "oom" in x for x in lines)
    assert lines[-3:] == ["Last output:", "  loading model", "  Killed"]
    plain = paas("releases:info", "v1", "--app", "web1")
    assert "Status:" in plain.out and "Reason" not in plain.out and "Last output" not in plain.out
    as_json = paas("releases:info", "v2", "--app", "web1", "--json")
    assert '"status_log": "loading model\\nKilled"' in as_json.out
