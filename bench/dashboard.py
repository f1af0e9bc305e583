#!/usr/bin/env python3
"""Benchmark: how long each dashboard page takes to render, and how many queries it runs.

Builds a throw-away SQLite control plane (its own data directory) with a busy team: `--apps`
apps, each deployed with three containers on one of three hosts, 40 releases, 30 config vars,
10 domains, 20 members and a few hundred audit events. Then it renders every page through
Django's test client (in process: no network, no browser) `--rounds` times and prints the median
time and the number of SQL queries of each. Live sources (Redis) are whatever REDIS_URL points
at; with none running, the live parts render their "unavailable" state.

    python bench/dashboard.py [--apps 30] [--rounds 15] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _setup(data_dir: Path) -> None:
    os.environ["PAAS_DATA_DIR"] = str(data_dir)
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("PAAS_SECRET_KEY", "bench-only-secret-key-0123456789-0123456789-0123")
    os.environ["PAAS_CELERY_EAGER"] = "true"  # the actions' follow-up tasks run in-process
    os.environ["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
    # This script's own folder comes first on the path, and its neighbours (bench/scheduler.py)
    # would shadow the control plane's packages of the same name.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(ROOT))
    sys.path.append(str(ROOT / "platform"))
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.ALLOWED_HOSTS = ["*"]
    call_command("migrate", verbosity=0)


def _populate(apps: int) -> Any:
    from datetime import timedelta

    from django.utils import timezone

    from core import actions
    from core.models import Container, Host, Role

    owner = actions.user_create(actor=None, username="owner", email="owner@example.com",
                                password="bench password")
    team = actions.team_create(actor=owner, name="busy")
    hosts = [Host.objects.create(name=f"node-{i}", address=f"192.0.2.{i}", memory_mb=16384,
                                 cpus=8, memory_mb_used=4096, cpus_used=2.5,
                                 token_digest=f"bench-{i}", last_heartbeat_at=timezone.now())
             for i in range(1, 4)]
    first = None
    for i in range(apps):
        app = actions.app_create(actor=owner, name=f"app-{i:03d}", team=team)
        first = first or app
        build = actions.build_create(actor=owner, app=app, commit=f"{i:040x}")
        release = actions.build_finish(actor=owner, build=build, succeeded=True,
                                       image_digest="sha256:" + "ab" * 32,
                                       process_types={"web": "gunicorn", "worker": "celery"},
                                       log="-----> Python app detected\n" * 50)
        for n, state in enumerate(("ready", "running", "exited"), start=1):
            Container.objects.create(id=f"{app.name}-{n}", app=app, release=release, type="web",
                                     number=n, host=hosts[i % 3], state=state, restarts=n,
                                     started_at=timezone.now() - timedelta(minutes=n))
    assert first is not None
    actions.config_set(actor=owner, app=first, values={f"KEY_{k}": "v" * 40 for k in range(30)})
    for k in range(37):
        actions.config_set(actor=owner, app=first, values={"ROUND": str(k)})
    for k in range(10):
        actions.domain_add(actor=owner, app=first, hostname=f"d{k}.bench.example")
    for k in range(20):
        user = actions.user_create(actor=None, username=f"user{k}", email=f"u{k}@example.com")
        actions.member_add(actor=owner, team=team, user=user, role=Role.VIEWER)
    return owner, first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    if args.apps < 1 or args.rounds < 1:
        print("error: --apps and --rounds must be at least 1", file=sys.stderr)
        return 1
    data_dir = Path(tempfile.mkdtemp(prefix="paas-bench-dashboard-"))
    try:
        _setup(data_dir)
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        owner, app = _populate(args.apps)
        build = app.builds.first()
        pages = {
            "apps": "/", "apps (htmx)": ("/", True), "teams": "/teams/", "team": "/teams/busy/",
            "team activity": "/teams/busy/events/", "hosts": "/hosts/", "tokens": "/account/tokens/",
            "app overview": f"/apps/{app.name}/", "app processes (htmx)": (f"/apps/{app.name}/", True),
            "app metrics": f"/apps/{app.name}/metrics/", "releases": f"/apps/{app.name}/releases/",
            "builds": f"/apps/{app.name}/builds/", "build": f"/apps/{app.name}/builds/{build.pk}/",
            "config": f"/apps/{app.name}/config/", "domains": f"/apps/{app.name}/domains/",
            "logs": f"/apps/{app.name}/logs/", "app activity": f"/apps/{app.name}/events/",
        }
        client = Client()
        client.force_login(owner)
        results: dict[str, dict[str, float]] = {}
        for name, target in pages.items():
            url, htmx = (target, False) if isinstance(target, str) else target
            headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
            assert client.get(url, **headers).status_code == 200, url
            times = []
            for _ in range(args.rounds):
                with CaptureQueriesContext(connection) as queries:
                    start = time.perf_counter()
                    client.get(url, **headers)
                    times.append((time.perf_counter() - start) * 1000)
            results[name] = {"median_ms": round(statistics.median(times), 2),
                             "queries": len(queries.captured_queries)}
        print(f"dashboard pages, {args.apps} apps, median of {args.rounds} renders (in process)")
        print(f"{'page':<24}{'median ms':>10}{'queries':>9}")
        for name, row in results.items():
            print(f"{name:<24}{row['median_ms']:>10.2f}{int(row['queries']):>9}")
        slowest = max(results.values(), key=lambda r: r["median_ms"])
        most = max(int(r["queries"]) for r in results.values())
        print(f"slowest page {slowest['median_ms']:.2f} ms; most queries on a page: {most}")
        if args.json:
            print(json.dumps({"apps": args.apps, "pages": results,
                              "max_median_ms": slowest["median_ms"], "max_queries": most}))
        return 0
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
