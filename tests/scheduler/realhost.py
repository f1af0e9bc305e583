"""Helpers for the tests with real agents and runtime daemons: drive the control plane's side."""

from __future__ import annotations

import secrets
import time
from typing import Any

import redis

from core import actions
from core.models import App, Container
from router.table import APPS_KEY, decode_app
from scheduler.ingest import ingest
from scheduler.reconcile import reconcile_app
from tests.scheduler.conftest import COMMIT


def converge(app: App, capture: Any, r: redis.Redis, until: Any, timeout: float = 120,
             each: Any = None) -> None:
    """Run reconcile and ingestion in turn, as the worker and the beat would, until `until()`;
    call `each()` after every step."""
    consumer = f"e2e-{secrets.token_hex(4)}"
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"not converged: {list(Container.objects.filter(app=app).values('id', 'state', 'address'))}"
        with capture(execute=True):
            reconcile_app(app.pk)
        if each is not None:
            each()
        with capture(execute=True):
            ingest(r, consumer)
        if each is not None:
            each()
        time.sleep(0.2)


def route(r: redis.Redis, app: App) -> list[str]:
    raw = r.hget(APPS_KEY, app.name)
    return [] if raw is None else [e.key for e in decode_app(app.name, raw).endpoints]


WEB = "exec httpd -f -p $PORT -h /"


def new_app(member: Any, image: str, web: str = WEB) -> App:
    app = actions.app_create(actor=member, name=f"e{secrets.token_hex(4)}", team=member.team)
    deploy(member, app, image, web)
    return app


def deploy(member: Any, app: App, image: str, web: str = WEB) -> None:
    build = actions.build_create(actor=member, app=app, commit=COMMIT)
    actions.build_finish(actor=member, build=build, succeeded=True, image_digest=image,
                         process_types={"web": web})
