"""The authorization matrix: every endpoint and every persona, against the Roles table of docs/api.md.

Personas: the owner, an admin, a member and a viewer of team `acme` (which owns the deployed app
`web1`), a stranger who is only in their own team, and a staff user outside the team.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from rest_framework.test import APIClient

from core import actions
from core.models import Host
from tests.controlplane import certgen

PERSONAS = ("owner", "admin", "member", "viewer", "stranger", "staff")


@dataclass
class Case:
    method: str
    path: str
    expect: dict[str, int]
    body: Any = None
    setup: Callable[[Any, Any], None] | None = None
    id: str = field(default="")


def by_role(owner: int, admin: int, member: int, viewer: int, stranger: int, staff: int) -> dict[str, int]:
    return dict(zip(PERSONAS, (owner, admin, member, viewer, stranger, staff), strict=True))


ALL = lambda code: by_role(code, code, code, code, code, code)  # noqa: E731
READ = by_role(200, 200, 200, 200, 404, 404)  # team readers; strangers (and staff) see nothing
DEPLOY = lambda ok: by_role(ok, ok, ok, 403, 404, 404)  # noqa: E731
MANAGE = lambda ok: by_role(ok, ok, 403, 403, 404, 404)  # noqa: E731
OWNERS = lambda ok: by_role(ok, 403, 403, 403, 404, 404)  # noqa: E731
STAFF = lambda ok: by_role(403, 403, 403, 403, 403, ok)  # noqa: E731


def _destroy_apps(acme: Any, app: Any) -> None:
    actions.app_destroy(actor=acme.owner, app=app)


def _add_domain(acme: Any, app: Any) -> None:
    actions.domain_add(actor=acme.owner, app=app, hostname="shop.example.com")


SHOP_CERT = certgen.leaf(["shop.example.com"])


def _add_certificate(acme: Any, app: Any) -> None:
    _add_domain(acme, app)
    actions.cert_set(actor=acme.owner, app=app, hostname="shop.example.com",
                     chain=SHOP_CERT.pem, key=SHOP_CERT.key_pem)


def _newbie(acme: Any, app: Any) -> None:
    actions.user_create(actor=None, username="newbie")


def _host(acme: Any, app: Any) -> None:
    actions.host_register(actor=acme.staff, name="h1", address="10.0.0.1", memory_mb=1024, cpus=1)


RUN_ID = "web1.run.1.abcdef"


@pytest.fixture(autouse=True)
def _agents_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    # One-offs go to a recorder, never to a broker queue of a host that does not exist.
    from scheduler import dispatch
    from tests.scheduler.fakes import RecordingDispatcher

    monkeypatch.setattr(dispatch, "current", RecordingDispatcher())


def _run(acme: Any, app: Any) -> None:
    """A one-off of web1 on h1 that has ended (so its output endpoint answers at once)."""
    import time

    from runtime.agent.oneoff import run_stream
    from scheduler import oneoff

    _host(acme, app)
    run = oneoff.OneOff(id=RUN_ID, app="web1", type="run", number=1, host="h1", release=2,
                        command=["true"], created_at=time.time(), deadline=time.time() + 60)
    r = oneoff._redis()
    r.set(oneoff.META_KEY.format(id=RUN_ID), json.dumps(run.to_dict()), ex=60)
    r.delete(run_stream(RUN_ID))
    r.xadd(run_stream(RUN_ID), {"exit": "0", "message": ""})
    r.expire(run_stream(RUN_ID), 60)


def _owner_token(acme: Any, app: Any) -> None:
    actions.token_create(actor=acme.owner, description="owner's")


CASES = [
    Case("GET", "account", ALL(200)),
    Case("GET", "teams", ALL(200)),
    Case("POST", "teams", ALL(201), {"name": "newteam"}),
    Case("GET", "teams/acme", READ),
    Case("DELETE", "teams/acme", OWNERS(204), setup=_destroy_apps),
    Case("GET", "teams/acme/members", READ),
    Case("POST", "teams/acme/members", MANAGE(201), {"username": "newbie", "role": "member"},
         setup=_newbie, id="add-member"),
    Case("POST", "teams/acme/members", OWNERS(201), {"username": "newbie", "role": "owner"},
         setup=_newbie, id="add-owner"),
    Case("PATCH", "teams/acme/members/vic", MANAGE(200), {"role": "member"}, id="set-role"),
    Case("PATCH", "teams/acme/members/adam", OWNERS(200), {"role": "owner"}, id="make-owner"),
    Case("DELETE", "teams/acme/members/vic", MANAGE(204), id="remove-member"),
    Case("GET", "teams/acme/events", READ),
    Case("GET", "tokens", ALL(200)),
    Case("POST", "tokens", ALL(201), {"description": "ci"}),
    Case("DELETE", "tokens/{owner_token}", by_role(204, 404, 404, 404, 404, 404),
         setup=_owner_token, id="revoke-owners-token"),
    Case("GET", "apps", ALL(200)),
    Case("POST", "apps", MANAGE(201), {"name": "web2", "team": "acme"}),
    Case("GET", "apps/web1", READ),
    Case("DELETE", "apps/web1", MANAGE(204)),
    Case("GET", "apps/web1/config", by_role(200, 200, 200, 403, 404, 404)),
    Case("PATCH", "apps/web1/config", DEPLOY(200), {"A": "1"}),
    Case("GET", "apps/web1/formation", READ),
    Case("PATCH", "apps/web1/formation", DEPLOY(200), {"updates": [{"type": "web", "quantity": 2}]}),
    Case("GET", "apps/web1/containers", READ),
    Case("GET", "apps/web1/releases", READ),
    Case("GET", "apps/web1/releases/v2", READ),
    Case("POST", "apps/web1/releases/rollback", DEPLOY(201), {}),
    Case("GET", "apps/web1/builds", READ),
    Case("GET", "apps/web1/domains", READ),
    Case("POST", "apps/web1/domains", DEPLOY(201), {"hostname": "www.example.com"}),
    Case("DELETE", "apps/web1/domains/shop.example.com", DEPLOY(204), setup=_add_domain),
    Case("GET", "apps/web1/domains/shop.example.com/certificate", READ, setup=_add_certificate),
    Case("PUT", "apps/web1/domains/shop.example.com/certificate", DEPLOY(201),
         {"chain": SHOP_CERT.pem, "key": SHOP_CERT.key_pem}, setup=_add_domain),
    Case("DELETE", "apps/web1/domains/shop.example.com/certificate", DEPLOY(204),
         setup=_add_certificate),
    Case("GET", "apps/web1/events", READ),
    Case("GET", "apps/web1/logs", READ),
    Case("GET", "apps/web1/runs", READ),
    Case("POST", "apps/web1/runs", DEPLOY(201), {"command": ["true"]}, setup=_host),
    Case("GET", f"apps/web1/runs/{RUN_ID}", DEPLOY(200), setup=_run),
    Case("DELETE", f"apps/web1/runs/{RUN_ID}", DEPLOY(204), setup=_run),
    Case("GET", f"apps/web1/runs/{RUN_ID}/output", DEPLOY(200), setup=_run),
    Case("GET", "hosts", ALL(200), setup=_host),
    Case("POST", "hosts", STAFF(201),
         {"name": "h2", "address": "10.0.0.2", "memory_mb": 2048, "cpus": 2}),
    Case("POST", "hosts/h1/drain", STAFF(200), setup=_host),
    Case("PATCH", "hosts/h1", STAFF(200), {"labels": {"region": "eu"}}, setup=_host),
    Case("PATCH", "apps/web1/formation", DEPLOY(200),
         {"updates": [{"type": "web", "constraints": {"region": "eu"}, "readiness_path": "/up",
                       "boot_timeout_s": 90}]}, id="constraints-readiness"),
]


def _params() -> list[Any]:
    params = []
    for case in CASES:
        for persona in PERSONAS:
            label = f"{case.method} {case.id or case.path} as {persona}"
            params.append(pytest.param(case, persona, id=label))
    return params


def test_it_covers_every_endpoint_of_the_api_document() -> None:
    from django.urls import get_resolver

    from restapi import urls

    documented = {pattern.name for pattern in urls.urlpatterns} - {"api-schema", "api-docs", "api-login"}
    covered = set()
    resolver = get_resolver()
    for case in CASES:
        path = "/api/v1/" + case.path.replace("{owner_token}", "1")
        covered.add(resolver.resolve(path).url_name)
    assert documented == covered


@pytest.mark.parametrize(("case", "persona"), _params())
def test_it_answers_each_persona_as_the_roles_table_says(case: Case, persona: str, acme, deployed) -> None:
    if case.setup is not None:
        case.setup(acme, deployed)
    actor = acme.user(persona)
    _row, token = actions.token_create(actor=actor, description="matrix")
    path = case.path
    if "{owner_token}" in path:
        owner_token = acme.owner.api_tokens.get(description="owner's")
        path = path.replace("{owner_token}", str(owner_token.pk))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.generic(case.method, f"/api/v1/{path}",
                              data=None if case.body is None else json.dumps(case.body),
                              content_type="application/json")
    expected = case.expect[persona]
    assert response.status_code == expected, response.content
    if expected >= 400:
        assert response["Content-Type"] == "application/json"
        assert response.json()["error"]["code"] in {"forbidden", "not_found"}
    if case.path == "hosts/h1/drain" and expected == 403:
        assert Host.objects.get(name="h1").state == "ready"
