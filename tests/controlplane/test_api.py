"""The REST API: flows through the endpoints, bad input, and the one JSON error shape."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from core import actions
from core.models import ApiToken, App, AuditEvent, ConfigVar, Domain, Formation, Release, Team

pytestmark = pytest.mark.django_db


def client_for(user: Any) -> APIClient:
    _row, token = actions.token_create(actor=user, description="test")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def call(client: APIClient, method: str, path: str, body: Any = None, raw: str | None = None) -> Any:
    data = raw if raw is not None else (None if body is None else json.dumps(body))
    return client.generic(method, f"/api/v1/{path}", data=data, content_type="application/json")


def assert_error(response: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    if field is not None:
        assert field in error["fields"], error
    return error


def _counts() -> dict[str, int]:
    return {m.__name__: m.objects.count()
            for m in (App, Release, ConfigVar, Formation, Domain, Team, AuditEvent)}


# --- authentication ----------------------------------------------------------------------


def test_it_logs_in_with_a_password_and_returns_a_working_token(acme) -> None:
    response = APIClient().post("/api/v1/auth/login",
                                {"username": "olive", "password": "correct horse battery"},
                                format="json")
    assert response.status_code == 201
    token = response.json()["token"]
    assert token.startswith("paas_") and response.json()["user"]["username"] == "olive"
    assert ApiToken.objects.get(prefix=token[:12]).description == "cli"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/api/v1/account").json()["username"] == "olive"


@pytest.mark.parametrize(
    "body", [{"username": "olive", "password": "wrong"}, {"username": "nobody", "password": "x"}]
)
def test_it_refuses_a_wrong_password(acme, body) -> None:
    assert_error(APIClient().post("/api/v1/auth/login", body, format="json"), 401, "unauthenticated")
    assert not ApiToken.objects.exists()


def test_it_requires_both_login_fields(acme) -> None:
    assert_error(APIClient().post("/api/v1/auth/login", {"username": "olive"}, format="json"),
                 400, "invalid", "password")


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer paas_wrongwrongwrong", "Token abc", "Bearer not-a-paas-token",
     "Basic b2xpdmU6eA=="],
)
def test_it_answers_401_without_a_valid_token(acme, header) -> None:
    client = APIClient()
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/apps")
    assert_error(response, 401, "unauthenticated")
    assert response["WWW-Authenticate"] == "Bearer"


def test_it_stops_accepting_a_revoked_token_at_once(acme) -> None:
    row, token = actions.token_create(actor=acme.owner, description="soon gone")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/api/v1/account").status_code == 200
    assert client.delete(f"/api/v1/tokens/{row.pk}").status_code == 204
    assert_error(client.get("/api/v1/account"), 401, "unauthenticated")


def test_it_refuses_a_deactivated_users_token(acme) -> None:
    client = client_for(acme.member)
    acme.member.is_active = False
    acme.member.save()
    assert_error(client.get("/api/v1/account"), 401, "unauthenticated")


def test_it_records_when_a_token_was_last_used(acme) -> None:
    row, token = actions.token_create(actor=acme.owner)
    assert row.last_used_at is None
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    client.get("/api/v1/account")
    row.refresh_from_db()
    assert row.last_used_at is not None


def test_it_lists_tokens_without_their_secret(acme) -> None:
    client = client_for(acme.owner)
    created = call(client, "POST", "tokens", {"description": "deploy bot"}).json()
    listed = call(client, "GET", "tokens").json()
    assert created["token"].startswith(created["prefix"])
    assert {t["description"] for t in listed} == {"test", "deploy bot"}
    assert all("token" not in t and set(t) == {"id", "prefix", "description", "created_at",
                                                "last_used_at"} for t in listed)


# --- apps flow ---------------------------------------------------------------------------


def test_it_runs_an_app_through_config_scale_domains_and_rollback(acme, deployed) -> None:
    client = client_for(acme.member)
    app = call(client, "GET", "apps/web1").json()
    assert app["current_release"]["name"] == "v2" and app["team"] == "acme"
    assert app["git_url"] == "http://testserver/git/web1.git"
    assert [f["type"] for f in app["formation"]] == ["web", "worker"]

    changed = call(client, "PATCH", "apps/web1/config", {"DATABASE_URL": "postgres://x", "DEBUG": "1"})
    assert changed.status_code == 200
    assert changed.json()["release"]["name"] == "v3"
    assert changed.json()["config"] == {"DATABASE_URL": "postgres://x", "DEBUG": "1"}
    unset = call(client, "PATCH", "apps/web1/config", {"DEBUG": None}).json()
    assert unset["config"] == {"DATABASE_URL": "postgres://x"} and unset["release"]["version"] == 4
    assert call(client, "GET", "apps/web1/config").json() == {"DATABASE_URL": "postgres://x"}

    scaled = call(client, "PATCH", "apps/web1/formation",
                  {"updates": [{"type": "web", "quantity": 3, "size": "256M"}]})
    assert scaled.status_code == 200
    assert scaled.json()[0] == {"type": "web", "quantity": 3, "size": "256M", "memory_mb": 256, "cpu": 1.0,
                                "constraints": {}, "readiness_path": "", "boot_timeout_s": None}

    assert call(client, "POST", "apps/web1/domains", {"hostname": "www.example.com"}).status_code == 201
    assert [d["hostname"] for d in call(client, "GET", "apps/web1/domains").json()] == ["www.example.com"]

    rolled = call(client, "POST", "apps/web1/releases/rollback", {"version": "v2"})
    assert rolled.status_code == 201 and rolled.json()["name"] == "v5"
    assert rolled.json()["description"] == "Rollback to v2"
    releases = call(client, "GET", "apps/web1/releases").json()
    assert [r["version"] for r in releases] == [5, 4, 3, 2, 1]
    assert releases[3]["commit"] == deployed.builds.get().commit
    assert call(client, "GET", "apps/web1/releases/3").json()["config_keys"] == ["DATABASE_URL", "DEBUG"]

    events = call(client, "GET", "apps/web1/events?limit=3").json()
    assert [e["action"] for e in events] == ["release.rollback", "release.create", "domain.add"]
    assert events[0]["actor"] == "mia" and events[0]["app"] == "web1"


def test_it_creates_an_app_in_the_personal_team_by_default(acme) -> None:
    response = call(client_for(acme.stranger), "POST", "apps", {"name": "sams-app"})
    assert response.status_code == 201
    assert response.json()["team"] == "sam" and response.json()["current_release"]["version"] == 1


def test_it_lists_only_the_apps_of_your_teams(acme, web1) -> None:
    actions.app_create(actor=acme.stranger, name="secret-app")
    names = [a["name"] for a in call(client_for(acme.viewer), "GET", "apps").json()]
    assert names == ["web1"]


def test_it_shows_builds_and_containers(acme, deployed) -> None:
    client = client_for(acme.viewer)
    builds = call(client, "GET", "apps/web1/builds").json()
    assert builds[0]["status"] == "succeeded" and builds[0]["slug_size"] == 1234
    assert call(client, "GET", "apps/web1/containers").json() == []


def test_it_manages_a_teams_members(acme) -> None:
    actions.user_create(actor=None, username="newbie", email="newbie@example.com")
    client = client_for(acme.admin)
    added = call(client, "POST", "teams/acme/members", {"email": "NEWBIE@example.com", "role": "viewer"})
    assert added.status_code == 201 and added.json() == {
        "username": "newbie", "email": "newbie@example.com", "role": "viewer"}
    assert call(client, "PATCH", "teams/acme/members/newbie", {"role": "member"}).json()["role"] == "member"
    assert call(client, "DELETE", "teams/acme/members/newbie").status_code == 204
    team = call(client, "GET", "teams/acme").json()
    assert team["role"] == "admin" and "newbie" not in [m["username"] for m in team["members"]]
    actions_seen = [e["action"] for e in call(client, "GET", "teams/acme/events").json()][:3]
    assert actions_seen == ["member.remove", "member.role_set", "member.add"]


def test_it_registers_and_drains_a_host_for_staff(acme) -> None:
    client = client_for(acme.staff)
    created = call(client, "POST", "hosts", {"name": "h1", "address": "10.1.0.5", "memory_mb": 8192,
                                             "cpus": 4, "labels": {"zone": "a"}})
    assert created.status_code == 201 and created.json()["token"].startswith("paashost_")
    drained = call(client, "POST", "hosts/h1/drain")
    assert drained.json()["state"] == "draining"
    listed = call(client_for(acme.viewer), "GET", "hosts").json()
    assert listed == [{"name": "h1", "address": "10.1.0.5", "state": "draining",
                       "capacity": {"memory_mb": 8192, "cpus": 4},
                       "usage": {"memory_mb": 0, "cpus": 0.0},
                       "last_heartbeat_at": None, "labels": {"zone": "a"}}]
    assert_error(call(client, "POST", "hosts/nope/drain"), 404, "not_found")


# --- bad input: a clear 4xx, nothing written ---------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"name": "Bad_Name"}, 400, "invalid"),
        ({"name": "x"}, 400, "invalid"),
        ({"name": "ends-"}, 400, "invalid"),
        ({"name": "a--b"}, 400, "invalid"),
        ({"name": 42}, 400, "invalid"),
        ({}, 400, "invalid"),
        ({"name": "web1"}, 409, "conflict"),
        ({"name": "fresh", "team": "no-such-team"}, 404, "not_found"),
        ({"name": "fresh", "colour": "blue"}, 400, "invalid"),
    ],
)
def test_it_refuses_bad_app_creation(acme, web1, body, status, code) -> None:
    client = client_for(acme.owner)
    before = _counts()
    error = assert_error(call(client, "POST", "apps", body), status, code)
    if code == "invalid":
        assert error["fields"]
    assert _counts() == before


def test_it_explains_the_app_name_rule(acme) -> None:
    error = assert_error(call(client_for(acme.owner), "POST", "apps", {"name": "No"}), 400, "invalid", "name")
    assert "3 to 30 lowercase letters" in error["message"]


@pytest.mark.parametrize(
    ("updates", "field"),
    [
        ([{"type": "clock", "quantity": 1}], "type"),
        ([{"type": "web", "quantity": 1000}], "quantity"),
        ([{"type": "web", "size": "tiny"}], "size"),
        ("web=2", "updates"),
    ],
)
def test_it_refuses_bad_scaling(acme, deployed, updates, field) -> None:
    before = list(Formation.objects.values_list("type", "quantity", "size"))
    error = assert_error(call(client_for(acme.member), "PATCH", "apps/web1/formation",
                              {"updates": updates}), 400, "invalid", field)
    assert error["message"]
    assert list(Formation.objects.values_list("type", "quantity", "size")) == before


def test_it_names_the_unknown_process_type(acme, deployed) -> None:
    error = assert_error(call(client_for(acme.member), "PATCH", "apps/web1/formation",
                              {"updates": [{"type": "clock", "quantity": 1}]}), 400, "invalid")
    assert "clock" in error["message"] and "web, worker" in error["message"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"9LIVES": "x"}, 400, "invalid"),
        ({"MY-KEY": "x"}, 400, "invalid"),
        ({"OK": "fine", "BAD KEY": "x"}, 400, "invalid"),
        ({"NUM": 3}, 400, "invalid"),
        ({"NESTED": {"a": 1}}, 400, "invalid"),
        ({"BIG": "x" * (32 * 1024 + 1)}, 413, "too_large"),
        ({}, 400, "invalid"),
        (["A=1"], 400, "invalid"),
    ],
)
def test_it_refuses_bad_config(acme, web1, body, status, code) -> None:
    client = client_for(acme.member)
    before = _counts()
    assert_error(call(client, "PATCH", "apps/web1/config", body), status, code)
    assert _counts() == before and web1.config() == {}


def test_it_refuses_a_viewer_scaling_and_changes_nothing(acme, deployed) -> None:
    client = client_for(acme.viewer)
    before = _counts()
    error = assert_error(call(client, "PATCH", "apps/web1/formation",
                              {"updates": [{"type": "web", "quantity": 9}]}), 403, "forbidden")
    assert "role" in error["message"]
    assert _counts() == before and Formation.objects.get(type="web").quantity == 1


def test_it_hides_another_teams_app_as_if_it_did_not_exist(acme, web1) -> None:
    client = client_for(acme.stranger)
    hidden = assert_error(call(client, "GET", "apps/web1"), 404, "not_found")
    missing = assert_error(call(client, "GET", "apps/nope1"), 404, "not_found")
    assert hidden["message"] == "App 'web1' not found." and missing["message"] == "App 'nope1' not found."
    before = _counts()
    assert_error(call(client, "PATCH", "apps/web1/config", {"A": "1"}), 404, "not_found")
    assert_error(call(client, "DELETE", "apps/web1"), 404, "not_found")
    assert _counts() == before


@pytest.mark.parametrize("hostname", ["not a host", "web1.localhost", "", "a" * 300 + ".com"])
def test_it_refuses_bad_domains(acme, web1, hostname) -> None:
    assert_error(call(client_for(acme.member), "POST", "apps/web1/domains", {"hostname": hostname}),
                 400, "invalid", "hostname")
    assert not Domain.objects.exists()


def test_it_adds_and_removes_a_wildcard_domain(acme, web1) -> None:
    client = client_for(acme.member)
    added = call(client, "POST", "apps/web1/domains", {"hostname": "*.example.com"})
    assert added.status_code == 201 and added.json()["hostname"] == "*.example.com"
    assert call(client, "DELETE", "apps/web1/domains/*.example.com").status_code == 204
    assert not Domain.objects.exists()


def test_it_refuses_a_taken_domain_with_409(acme, web1) -> None:
    other = actions.app_create(actor=acme.stranger, name="other")
    actions.domain_add(actor=acme.stranger, app=other, hostname="shop.example.com")
    assert_error(call(client_for(acme.member), "POST", "apps/web1/domains",
                      {"hostname": "shop.example.com"}), 409, "conflict")


@pytest.mark.parametrize(("name", "status", "code"),
                         [("acme", 409, "conflict"), ("olive", 409, "conflict"), ("Nope!", 400, "invalid")])
def test_it_refuses_taken_or_bad_team_names(acme, name, status, code) -> None:
    client = client_for(acme.member)
    before = _counts()
    assert_error(call(client, "POST", "teams", {"name": name}), status, code)
    assert _counts() == before


def test_it_refuses_to_remove_the_last_owner(acme) -> None:
    assert_error(call(client_for(acme.owner), "DELETE", "teams/acme/members/olive"), 409, "conflict")


def test_it_refuses_to_delete_a_team_with_apps(acme, web1) -> None:
    assert_error(call(client_for(acme.owner), "DELETE", "teams/acme"), 409, "conflict")
    assert Team.objects.filter(name="acme").exists()


@pytest.mark.parametrize("version", ["v99", "99"])
def test_it_answers_404_for_a_missing_release(acme, web1, version) -> None:
    assert_error(call(client_for(acme.member), "GET", f"apps/web1/releases/{version}"), 404, "not_found")


def test_it_refuses_a_malformed_release_version(acme, web1) -> None:
    assert_error(call(client_for(acme.member), "GET", "apps/web1/releases/latest"), 400, "invalid")


def test_it_refuses_adding_an_unknown_user(acme) -> None:
    assert_error(call(client_for(acme.owner), "POST", "teams/acme/members",
                      {"username": "ghost", "role": "member"}), 400, "invalid", "username")


def test_it_refuses_a_bad_events_limit(acme, web1) -> None:
    assert_error(call(client_for(acme.owner), "GET", "apps/web1/events?limit=0"), 400, "invalid", "limit")


# --- the error shape everywhere ----------------------------------------------------------


def test_it_answers_unknown_api_urls_with_json_404(acme) -> None:
    client = client_for(acme.owner)
    for path in ("/api/v1/nothing", "/api/v2/apps", "/api/", "/api/v1/apps/web1/nothing/here"):
        assert_error(client.get(path), 404, "not_found")
    assert_error(APIClient().post("/api/v9/x"), 404, "not_found")


def test_it_answers_a_wrong_method_with_json_405(acme) -> None:
    assert_error(call(client_for(acme.owner), "PUT", "apps", {"name": "x"}), 405, "method_not_allowed")


def test_it_answers_malformed_json_with_400(acme) -> None:
    error = assert_error(call(client_for(acme.owner), "POST", "apps", raw="{not json"), 400, "invalid")
    assert "JSON" in error["message"]


def test_it_answers_a_form_body_with_415(acme) -> None:
    response = client_for(acme.owner).post("/api/v1/apps", "name=web9",
                                           content_type="application/x-www-form-urlencoded")
    assert_error(response, 415, "unsupported_media_type")


def test_it_answers_an_oversized_body_with_413(acme, web1, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = call(client_for(acme.owner), "PATCH", "apps/web1/config", {"A": "x" * 2000})
    assert_error(response, 413, "too_large")
    assert web1.config() == {}


def test_it_answers_an_unexpected_failure_with_json_500(acme, monkeypatch) -> None:
    from restapi import views

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug, with internal details")

    monkeypatch.setattr(views.s.AccountSerializer, "to_representation", explode)
    error = assert_error(client_for(acme.owner).get("/api/v1/account"), 500, "server_error")
    assert "internal details" not in error["message"]


def test_it_answers_json_500_for_failures_outside_the_views(acme, monkeypatch) -> None:
    from restapi import auth

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(auth.BearerTokenAuthentication, "authenticate", explode)
    error = assert_error(client_for(acme.owner).get("/api/v1/apps"), 500, "server_error")
    assert "fire" not in error["message"]


def test_it_serves_the_openapi_schema_with_every_endpoint() -> None:
    response = APIClient().get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/api/v1/apps/{app}/formation/", "/api/v1/auth/login/", "/api/v1/hosts/{name}/drain/"):
        assert path in paths
    assert response.json()["components"]["securitySchemes"]["bearerToken"]["scheme"] == "bearer"


def test_it_serves_the_interactive_api_docs_page() -> None:
    response = APIClient().get("/api/v1/docs/")
    assert response.status_code == 200 and b"/api/v1/schema" in response.content
    # Every asset comes from the platform itself: hosts without internet access must work.
    page = response.content.decode()
    assert "cdn." not in page and "https://" not in page
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page


def test_it_slows_down_password_guessing(acme, settings) -> None:
    from django.core.cache import cache

    settings.PAAS_LOGIN_RATE = "3/minute"
    cache.clear()
    client = APIClient()
    answers = [client.post("/api/v1/auth/login", {"username": "olive", "password": f"guess{i}"},
                           format="json") for i in range(4)]
    assert [a.status_code for a in answers] == [401, 401, 401, 429]
    assert_error(answers[-1], 429, "throttled")
    assert int(answers[-1]["Retry-After"]) > 0
    cache.clear()


def test_it_generates_a_valid_schema_without_warnings(tmp_path) -> None:
    from django.core.management import call_command

    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert "/api/v1/apps/{app}/releases/rollback/" in out.read_text()


def test_it_lists_apps_in_a_number_of_queries_that_does_not_grow_with_the_apps(acme) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_for(acme.owner)
    call(client, "GET", "account")  # the token's first use writes last_used_at
    counts = []
    for total in (1, 8):
        while App.objects.count() < total:
            actions.app_create(actor=acme.owner, name=f"app{App.objects.count()}x", team=acme.team)
        with CaptureQueriesContext(connection) as queries:
            answer = call(client, "GET", "apps")
        assert len(answer.json()) == total
        assert all(a["current_release"]["name"] == "v1" for a in answer.json())
        counts.append(len(queries.captured_queries))
    assert counts[0] == counts[1]


def test_it_answers_a_refused_host_header_under_api_with_json(acme, settings) -> None:
    settings.ALLOWED_HOSTS = ["paas.example.com"]
    settings.DEBUG = False
    response = APIClient(raise_request_exception=False).get("/api/v1/apps", HTTP_HOST="evil.example")
    assert_error(response, 400, "invalid")
