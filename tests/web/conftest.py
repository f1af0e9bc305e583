"""Personas for the dashboard tests: team `acme` with one member of every role, a stranger with
an app of their own, and a staff user; plus an app with a build, containers on a host, and the
helpers that log a persona in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from core import actions
from core.models import App, Container, ContainerState, Host, Role, Team

PASSWORD = "correct horse battery staple"
DIGEST = "sha256:" + "cd" * 32
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
PERSONAS = ("owner", "admin", "member", "viewer", "stranger")


@dataclass
class Acme:
    team: Team
    owner: Any
    admin: Any
    member: Any
    viewer: Any
    stranger: Any
    staff: Any
    app: App
    stranger_app: App

    def user(self, persona: str) -> Any:
        return getattr(self, persona)


class _FailOnUndefined(str):
    """A template `string_if_invalid` that fails the test instead of rendering nothing, so a
    renamed or removed model attribute cannot quietly blank part of a page."""

    def __contains__(self, key: object) -> bool:
        return key == "%s"

    def __mod__(self, variable: object) -> str:
        raise AssertionError(f"undefined template variable: {variable}")


@pytest.fixture(autouse=True)
def _strict_templates(settings: Any) -> None:
    templates = [dict(engine) for engine in settings.TEMPLATES]
    for engine in templates:
        engine["OPTIONS"] = {**engine.get("OPTIONS", {}),
                             "string_if_invalid": _FailOnUndefined("%s")}
    settings.TEMPLATES = templates


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # The default PBKDF2 hasher costs a few hundred milliseconds per password on purpose.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_acme() -> Acme:
    users = {
        name: actions.user_create(actor=None, username=name, email=f"{name}@example.com",
                                  password=PASSWORD)
        for name in ("olive", "adam", "mia", "vic", "sam")
    }
    staff = actions.user_create(actor=None, username="ops", password=PASSWORD, is_staff=True)
    owner = users["olive"]
    team = actions.team_create(actor=owner, name="acme")
    actions.member_add(actor=owner, team=team, user=users["adam"], role=Role.ADMIN)
    actions.member_add(actor=owner, team=team, user=users["mia"], role=Role.MEMBER)
    actions.member_add(actor=owner, team=team, user=users["vic"], role=Role.VIEWER)
    app = actions.app_create(actor=owner, name="shop", team=team)
    stranger_app = actions.app_create(actor=users["sam"], name="sams-blog")
    return Acme(team=team, owner=owner, admin=users["adam"], member=users["mia"],
                viewer=users["vic"], stranger=users["sam"], staff=staff, app=app,
                stranger_app=stranger_app)


@pytest.fixture
def acme(db: None) -> Acme:
    return make_acme()


def deploy(app: App, actor: Any, commit: str = COMMIT, log: str = "-----> Python app detected\n") -> Any:
    """Record a good build of `app` (web and worker process types); return its release."""
    build = actions.build_create(actor=actor, app=app, commit=commit)
    return actions.build_finish(actor=actor, build=build, succeeded=True, image_digest=DIGEST,
                                process_types={"web": "gunicorn shop:app", "worker": "celery"},
                                slug_size=12_345_678, log=log)


def place_containers(app: App, host: Host, states: list[str]) -> list[Container]:
    """Containers as an agent would have reported them (the agents' report path writes these)."""
    release = app.current_release()
    now = timezone.now()
    return [
        Container.objects.create(
            id=f"{app.name}-web-{i}-{host.name}", app=app, release=release, type="web",
            number=i, host=host, state=state, address=f"10.1.0.{i + 10}:5000", restarts=i - 1,
            started_at=now - timedelta(minutes=5 * i),
        )
        for i, state in enumerate(states, start=1)
    ]


def make_host(name: str = "node-1", **kwargs: Any) -> Host:
    defaults: dict[str, Any] = {
        "address": "192.0.2.10", "memory_mb": 8192, "cpus": 4, "memory_mb_used": 3072,
        "cpus_used": 1.5, "token_digest": f"digest-{name}", "last_heartbeat_at": timezone.now(),
        "labels": {"zone": "a"},
    }
    defaults.update(kwargs)
    return Host.objects.create(name=name, **defaults)


@pytest.fixture
def deployed(acme: Acme) -> Acme:
    """acme's app after one good build, with two web containers on a host."""
    deploy(acme.app, acme.member)
    host = make_host()
    place_containers(acme.app, host, [ContainerState.READY, ContainerState.READY])
    return acme


def login(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


@pytest.fixture
def as_persona(client: Client, acme: Acme) -> Any:
    def log_in(persona: str) -> Client:
        return login(client, acme.user(persona))

    return log_in


def write_router_commands(r: Any, commands: list[tuple[Any, ...]]) -> None:
    """Write what the router's `Recorder.take` hands over the way the router does
    (router.follow.send): counters in one pipeline, log batches as raw RESP with replies off."""
    from router.metrics import LOG_BATCH, REPLY_OFF, REPLY_ON

    pipe = r.pipeline(transaction=False)
    for command in commands:
        if command[0] != LOG_BATCH:
            pipe.execute_command(*command)
    pipe.execute()
    batches = [command[3] for command in commands if command[0] == LOG_BATCH]
    if batches:
        conn = r.connection_pool.get_connection()
        try:
            conn.send_packed_command([REPLY_OFF, *batches, REPLY_ON])
            assert conn.read_response() in (b"OK", "OK")
        finally:
            r.connection_pool.release(conn)


def seed_live_data(app: str, now: float, minutes: int = 60) -> list[str]:
    """Write an hour of request metrics and some log lines for `app` to the real Redis, the way
    the router writes them (its own Recorder makes the commands), plus per-minute container usage.
    Return the keys written, for clean-up."""
    import random

    import redis
    from django.conf import settings

    from router.metrics import Recorder
    from web.live import runtime_metrics_key

    r = redis.Redis.from_url(settings.REDIS_URL)
    rng = random.Random(7)
    keys: set[str] = set()
    for back in range(minutes, 0, -1):
        minute_start = now - back * 60
        recorder = Recorder(clock=lambda t=minute_start: t)
        for i in range(20 + (minutes - back) % 17 + rng.randrange(10)):
            status = 500 if i % 41 == 0 else 404 if i % 13 == 0 else 302 if i % 7 == 0 else 200
            ms = rng.choice([3, 8, 12, 20, 40, 90, 300])
            recorder.record(app, status, ms, 300, 2000,
                            f'GET /items/{i} {status} {ms}ms')
        commands = recorder.take()
        write_router_commands(r, commands)
        keys.update(str(command[1]) for command in commands)
        usage_key = f"{runtime_metrics_key(app)}:{int(minute_start // 60)}"
        r.hset(usage_key, mapping={"memory_bytes": (180 + back % 9 * 6) * 2**20,
                                   "cpu_millis": 9000 + rng.randrange(6000)})
        keys.add(usage_key)
    return sorted(keys)


def delete_keys(keys: list[str]) -> None:
    import redis
    from django.conf import settings

    if keys:
        redis.Redis.from_url(settings.REDIS_URL).delete(*keys)
