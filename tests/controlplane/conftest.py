"""Personas for the control-plane tests: one team `acme` with a member of every role, and a
stranger who is only in their own personal team."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from core import actions
from core.models import App, Role, Team


@dataclass
class Acme:
    team: Team
    owner: Any
    admin: Any
    member: Any
    viewer: Any
    stranger: Any
    staff: Any

    def user(self, persona: str) -> Any:
        return getattr(self, persona)


@pytest.fixture
def acme(db: None) -> Acme:
    owner = actions.user_create(actor=None, username="olive", email="olive@example.com",
                                password="correct horse battery")
    users = {
        name: actions.user_create(actor=None, username=name, email=f"{name}@example.com")
        for name in ("adam", "mia", "vic", "sam")
    }
    staff = actions.user_create(actor=None, username="root-ops", is_staff=True)
    team = actions.team_create(actor=owner, name="acme")
    actions.member_add(actor=owner, team=team, user=users["adam"], role=Role.ADMIN)
    actions.member_add(actor=owner, team=team, user=users["mia"], role=Role.MEMBER)
    actions.member_add(actor=owner, team=team, user=users["vic"], role=Role.VIEWER)
    return Acme(team=team, owner=owner, admin=users["adam"], member=users["mia"],
                viewer=users["vic"], stranger=users["sam"], staff=staff)


@pytest.fixture
def web1(acme: Acme) -> App:
    return actions.app_create(actor=acme.owner, name="web1", team=acme.team)


DIGEST = "sha256:" + "ab" * 32
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def deployed(acme: Acme, web1: App) -> App:
    """web1 after one good build with a web and a worker process type."""
    build = actions.build_create(actor=acme.member, app=web1, commit=COMMIT)
    actions.build_finish(actor=acme.member, build=build, succeeded=True, image_digest=DIGEST,
                         process_types={"web": "gunicorn app:app", "worker": "celery worker"},
                         slug_size=1234)
    return web1


@pytest.fixture(autouse=True)
def _fresh_login_counters() -> Any:
    # Login throttling counts in the cache, which outlives a test.
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # The default PBKDF2 hasher costs a few hundred milliseconds per password on purpose.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave `postgres`-marked tests out of the SQLite pass (`make test` runs them in the second)."""
    import os

    if os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        return
    kept = [item for item in items if item.get_closest_marker("postgres") is None]
    deselected = [item for item in items if item.get_closest_marker("postgres") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
