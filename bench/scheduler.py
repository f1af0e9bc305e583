"""Scheduler figures: placement by the pure planner, and scaling on a real host.

`placement_s`: places 10,000 containers (500 apps of 20 web replicas, of three sizes, a tenth of
them with a label constraint) on 1,000 simulated hosts with some reservations already on them,
several rounds; the best and the median run.

`scale_s` (as root, needs redis-server): on this host, with a throw-away redis-server, SQLite
database, runtime daemon (with its own bridge and subnet) and a real agent process, an app
running the tiny busybox image's `httpd` as `web=1` is scaled to `web=10` with the
`formation_scale` action; the clock stops when all ten containers are ready and the route table
lists ten endpoints. The control plane's side runs in this process as the scheduler's follower
does (reconcile, then wait on the agents' report streams). Host failover is not measured yet.

    python bench/scheduler.py [--hosts N] [--containers N] [--rounds N] [--no-scale] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# This file is named like the package it measures: take bench/ off the path so that
# `import scheduler` finds the package, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "platform"))

from scheduler.placement import HostCapacity, Request, place  # noqa: E402

SCALE_FROM, SCALE_TO = 1, 10


def scenario(n_hosts: int, n_containers: int, seed: int = 1) -> tuple[list[Request], list[HostCapacity]]:
    rnd = random.Random(seed)
    hosts = [
        HostCapacity(
            name=f"host-{i:04d}",
            state="ready" if i % 50 else "draining",
            memory_mb=rnd.choice([32768, 65536]),
            cpus=rnd.choice([16, 32]),
            memory_reserved_mb=rnd.randrange(0, 8192),
            cpu_reserved=rnd.randrange(0, 4),
            labels={"zone": f"z{i % 3}"},
        )
        for i in range(n_hosts)
    ]
    replicas = 20
    requests: list[Request] = []
    for a in range(max(1, n_containers // replicas)):
        mem, cpu = rnd.choice([(256, 0.25), (512, 0.5), (1024, 1.0)])
        constraints = {"zone": f"z{a % 3}"} if a % 10 == 0 else {}
        requests += [Request(f"app{a}", "web", mem, cpu, constraints)] * replicas
    return requests[:n_containers], hosts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--containers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-scale", action="store_true", help="skip the scaling run (needs root)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    requests, hosts = scenario(args.hosts, args.containers)
    times = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        got = place(requests, hosts)
        times.append(time.perf_counter() - t0)
    placed = sum(1 for a in got if a.host is not None)
    spread = max(Counter((a.request.app, a.host) for a in got if a.host).values())
    print(f"placement of {len(requests)} containers on {len(hosts)} hosts ({args.rounds} rounds)")
    print(f"  best     {min(times):.3f} s")
    print(f"  median   {statistics.median(times):.3f} s")
    print(f"  placed   {placed}/{len(requests)}; most replicas of one app on one host: {spread}")
    figures: dict[str, object] = {"placement_s": round(min(times), 4),
                                  "placement_median_s": round(statistics.median(times), 4),
                                  "placed": placed, "containers": len(requests), "hosts": len(hosts)}
    if not args.no_scale:
        if os.geteuid() != 0 or shutil.which("redis-server") is None:
            print("scale: skipped (needs root and redis-server)")
        else:
            scale_s = measure_scale()
            print(f"scale web={SCALE_FROM} -> web={SCALE_TO}, all ready and routed: {scale_s:.2f} s")
            figures["scale_s"] = round(scale_s, 3)
    if args.json:
        print(json.dumps(figures))
    return 0


def _remove_containers(runtime_dir: Path) -> None:
    """Remove whatever containers the run left (an interrupted run), and their cgroups."""
    from runtime import cgroups
    from runtime.client import DaemonClient

    with contextlib.suppress(Exception):
        client = DaemonClient(runtime_dir / "daemon.sock", timeout=30)
        for c in client.list():
            with contextlib.suppress(Exception):
                client.remove(c["id"], force=True)
            cg = cgroups.for_container(c["id"])
            with contextlib.suppress(Exception):
                cgroups.kill_all(cg)
                cg.remove()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure_scale() -> float:
    """Scale web=1 -> web=10 on a real host; seconds until all are ready and routed."""
    work = Path(tempfile.mkdtemp(prefix="paas-bench-sched-"))
    procs: list[subprocess.Popen[bytes]] = []
    bridge = f"pb{secrets.token_hex(3)}"
    subnet = f"10.{random.randint(160, 250)}.{random.randint(0, 255)}.0/24"
    runtime_dir = work / "runtime"
    try:
        port = free_port()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL))
        os.environ.update({
            "REDIS_URL": f"redis://127.0.0.1:{port}/0", "PAAS_DATA_DIR": str(work),
            "DATABASE_URL": f"sqlite:///{work}/db.sqlite3",
            "PAAS_SECRET_KEY": "bench-only-" + secrets.token_hex(24),
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
        })
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from core import actions
        from core.models import Container
        from router.table import APPS_KEY, decode_app
        from runtime.client import DaemonClient
        from runtime.images import ImageStore
        from runtime.tinyimage import build_tiny_image
        from scheduler.follow import follow_once
        from scheduler.reconcile import reconcile_app, redis_client

        runtime_dir.mkdir()
        env = dict(os.environ, PAAS_BRIDGE=bridge, PAAS_HOST_SUBNET=subnet)
        daemon = subprocess.Popen([sys.executable, "-m", "runtime", "--root", str(runtime_dir), "daemon"],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE)
        procs.append(daemon)
        assert daemon.stdout is not None
        if b"ready" not in daemon.stdout.readline():
            raise SystemExit("the runtime daemon did not start")
        client = DaemonClient(runtime_dir / "daemon.sock", timeout=60)
        store = ImageStore(runtime_dir / "images")
        image = store.resolve(build_tiny_image(store)).digest
        host = f"bench-{secrets.token_hex(3)}"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "runtime.agent", "--host", host], cwd=REPO,
            env=dict(os.environ, PAAS_RUNTIME_DIR=str(runtime_dir), PAAS_AGENT_HEARTBEAT_S="1"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        admin = actions.user_create(actor=None, username="bench", is_staff=True)
        team = actions.team_create(actor=admin, name="bench-apps")
        actions.host_register(actor=admin, name=host, address="127.0.0.1", memory_mb=8192, cpus=2)
        app = actions.app_create(actor=admin, name="bench", team=team)
        build = actions.build_create(actor=admin, app=app, commit="0" * 40)
        actions.build_finish(actor=admin, build=build, succeeded=True, image_digest=image,
                             process_types={"web": "exec httpd -f -p $PORT -h /"})
        r = redis_client()

        def routed() -> int:
            raw = r.hget(APPS_KEY, app.name)
            return 0 if raw is None else len(decode_app(app.name, raw).endpoints)

        def converge(n: int, timeout: float = 120) -> None:
            deadline = time.monotonic() + timeout
            while not (Container.objects.filter(app=app, state="ready").count() == n == routed()
                       and Container.objects.filter(app=app).count() == n
                       and (n > 0 or not client.list())):
                if time.monotonic() > deadline:
                    raise SystemExit(f"web={n} did not converge within {timeout:.0f} s")
                reconcile_app(app.pk)
                follow_once(r, "bench", block_ms=20)

        def scale(n: int) -> None:
            actions.formation_scale(actor=admin, app=app, updates=[{"type": "web", "quantity": n}])

        scale(SCALE_FROM)
        converge(SCALE_FROM)
        t0 = time.perf_counter()
        scale(SCALE_TO)
        converge(SCALE_TO)
        elapsed = time.perf_counter() - t0
        scale(0)
        converge(0)
        return elapsed
    finally:
        _remove_containers(runtime_dir)
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        from runtime.network import HostNetwork

        with contextlib.suppress(Exception):
            HostNetwork(bridge, subnet, runtime_dir / "network").teardown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
