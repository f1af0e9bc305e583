"""Scheduler figures: placement by the pure planner, and scaling on a real host.

`placement_s`: places 10,000 containers (500 apps of 20 web replicas, of three sizes, a tenth of
them with a label constraint) on 1,000 simulated hosts with some reservations already on them,
several rounds; the best and the median run.

`scale_s` (as root, needs redis-server): on this host, with a throw-away redis-server, SQLite
database, runtime daemon (with its own bridge and subnet) and a real agent process, an app
running the tiny busybox image's `httpd` as `web=1` is scaled to `web=10` with the
`formation_scale` action; the clock stops when all ten containers are ready and the route table
lists ten endpoints. The control plane's side runs in this process as the scheduler's follower
does (reconcile, then wait on the agents' report streams).

`failover_s` (as root): three simulated hosts, each in a network namespace of its own with its
own runtime daemon, bridge, container subnet and agent, joined by an underlay (the test suite's
tests/scheduler/netns_hosts.py); the agents pull the image by digest from the controller's web
process (gunicorn on the underlay) and route to each other's subnets. An app at `web=6` spreads
2/2/2; one host dies (agent, daemon and containers killed with SIGKILL, its namespace deleted);
the clock stops when six containers are ready and routed on the other two. The platform's
default liveness settings apply: heartbeats every `PAAS_AGENT_HEARTBEAT_S` (3 s), a host down
after `PAAS_HOST_DOWN_AFTER_S` (10 s), unless those are set.

    python bench/scheduler.py [--hosts N] [--containers N] [--rounds N] [--no-scale]
                              [--no-failover] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

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
    parser.add_argument("--no-failover", action="store_true", help="skip the failover run (needs root)")
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
    if not (args.no_scale and args.no_failover):
        if os.geteuid() != 0 or shutil.which("redis-server") is None:
            print("scale, failover: skipped (need root and redis-server)")
        else:
            real = measure_real(not args.no_scale, not args.no_failover)
            if "scale_s" in real:
                print(f"scale web={SCALE_FROM} -> web={SCALE_TO} on one host, all ready and routed: "
                      f"{real['scale_s']:.2f} s")
            if "failover_s" in real:
                print(f"failover: web=6 on 3 hosts (network namespaces), one killed, all 6 ready "
                      f"and routed on the others: {real['failover_s']:.2f} s (heartbeat "
                      f"{os.environ.get('PAAS_AGENT_HEARTBEAT_S', '3')} s, down after "
                      f"{os.environ.get('PAAS_HOST_DOWN_AFTER_S', '10')} s)")
            figures.update({k: round(v, 3) for k, v in real.items()})
    if args.json:
        print(json.dumps(figures))
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BenchHost:
    """A simulated host on this machine: a runtime daemon with its own bridge and subnet, an agent."""

    def __init__(self, work: Path, image_ref: list[str]) -> None:
        from runtime.client import DaemonClient
        from runtime.images import ImageStore
        from runtime.tinyimage import build_tiny_image

        self.name = f"bench-{secrets.token_hex(3)}"
        self.root = work / self.name
        self.root.mkdir()
        self.bridge = f"pb{secrets.token_hex(3)}"
        self.subnet = f"10.{random.randint(160, 250)}.{random.randint(0, 255)}.0/24"
        self.procs: list[subprocess.Popen[bytes]] = []
        env = dict(os.environ, PAAS_BRIDGE=self.bridge, PAAS_HOST_SUBNET=self.subnet)
        daemon = subprocess.Popen([sys.executable, "-m", "runtime", "--root", str(self.root), "daemon"],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE)
        self.procs.append(daemon)
        assert daemon.stdout is not None
        if b"ready" not in daemon.stdout.readline():
            raise SystemExit("the runtime daemon did not start")
        self.client = DaemonClient(self.root / "daemon.sock", timeout=60)
        store = ImageStore(self.root / "images")
        image_ref[:] = [store.resolve(build_tiny_image(store)).digest]
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "runtime.agent", "--host", self.name], cwd=REPO,
            env=dict(os.environ, PAAS_RUNTIME_DIR=str(self.root), PAAS_AGENT_HEARTBEAT_S="1"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.dead = False

    def kill(self) -> None:
        """The host dies: agent and daemon killed with SIGKILL, and every container's processes."""
        from runtime import cgroups

        ids = [c["id"] for c in self.client.list()]
        for p in self.procs:
            p.kill()
            p.wait()
        for cid in ids:
            with contextlib.suppress(Exception):
                cgroups.kill_all(cgroups.for_container(cid))
        self.dead = True

    def close(self) -> None:
        from runtime import cgroups
        from runtime.network import HostNetwork

        ids: list[str] = []
        if not self.dead:
            with contextlib.suppress(Exception):
                ids = [c["id"] for c in self.client.list()]
                for cid in ids:
                    with contextlib.suppress(Exception):
                        self.client.remove(cid, force=True)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        containers = self.root / "containers"
        ids += [d.name for d in containers.iterdir()] if containers.is_dir() else []
        for cid in set(ids):
            cg = cgroups.for_container(cid)
            with contextlib.suppress(Exception):
                cgroups.kill_all(cg)
                cg.remove()
        with contextlib.suppress(Exception):
            HostNetwork(self.bridge, self.subnet, self.root / "network").teardown()


def measure_real(want_scale: bool, want_failover: bool) -> dict[str, float]:
    """Start redis-server and a throw-away SQLite control plane; measure on simulated hosts."""
    work = Path(tempfile.mkdtemp(prefix="paas-bench-sched-"))
    hosts: list[BenchHost] = []
    port = free_port()
    redis_proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL)
    figures: dict[str, float] = {}
    cluster: Any = None
    web: subprocess.Popen[bytes] | None = None
    try:
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
        from core.models import App, Container
        from router.table import APPS_KEY, decode_app
        from scheduler.follow import follow_once
        from scheduler.reconcile import reconcile_app, redis_client

        admin = actions.user_create(actor=None, username="bench", is_staff=True)
        team = actions.team_create(actor=admin, name="bench-apps")
        r = redis_client()
        image: list[str] = []

        def add_host() -> BenchHost:
            h = BenchHost(work, image)
            hosts.append(h)
            actions.host_register(actor=admin, name=h.name, address="127.0.0.1", memory_mb=8192, cpus=2)
            return h

        def new_app(name: str) -> App:
            app = actions.app_create(actor=admin, name=name, team=team)
            build = actions.build_create(actor=admin, app=app, commit="0" * 40)
            actions.build_finish(actor=admin, build=build, succeeded=True, image_digest=image[0],
                                 process_types={"web": "exec httpd -f -p $PORT -h /"})
            return app

        def routed(app: App) -> int:
            raw = r.hget(APPS_KEY, app.name)
            return 0 if raw is None else len(decode_app(app.name, raw).endpoints)

        def converge(app: App, n: int, on: set[str] | None = None, timeout: float = 120) -> None:
            deadline = time.monotonic() + timeout
            while True:
                rows = list(Container.objects.filter(app=app).select_related("host"))
                if (len(rows) == n == routed(app) and all(c.state == "ready" for c in rows)
                        and (on is None or {c.host.name for c in rows if c.host} <= on)):
                    return
                if time.monotonic() > deadline:
                    raise SystemExit(f"{app.name}: web={n} did not converge within {timeout:.0f} s")
                reconcile_app(app.pk)
                follow_once(r, "bench", block_ms=20)

        def scale(app: App, n: int) -> None:
            actions.formation_scale(actor=admin, app=app, updates=[{"type": "web", "quantity": n}])

        if want_scale:
            one = add_host()
            app = new_app("bench-scale")
            scale(app, SCALE_FROM)
            converge(app, SCALE_FROM)
            t0 = time.perf_counter()
            scale(app, SCALE_TO)
            converge(app, SCALE_TO)
            figures["scale_s"] = time.perf_counter() - t0
            scale(app, 0)
            converge(app, 0)
            deadline = time.monotonic() + 60
            while one.client.list() and time.monotonic() < deadline:
                follow_once(r, "bench", block_ms=100)
        if want_failover:
            from runtime.images import ImageStore
            from runtime.tinyimage import build_tiny_image
            from tests.scheduler.netns_hosts import Cluster, sweep_leftovers

            sweep_leftovers()
            cluster = Cluster(redis_url=os.environ["REDIS_URL"], work=work / "mh")
            cluster.start()
            controller = ImageStore(work / "runtime" / "images")  # the web process's store
            image[:] = [controller.resolve(build_tiny_image(controller)).digest]
            web_port = free_port()
            web = subprocess.Popen(
                [str(Path(sys.executable).parent / "gunicorn"), "controlplane.wsgi", "--bind",
                 f"{cluster.gateway}:{web_port}", "--workers", "1", "--worker-class", "gthread",
                 "--threads", "4"], cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
            cluster.controller_url = f"http://{cluster.gateway}:{web_port}"
            heartbeat_s = float(os.environ.get("PAAS_AGENT_HEARTBEAT_S", "3"))
            three: set[str] = set()
            for _ in range(3):
                h = cluster.add_host()
                _host, token = actions.host_register(actor=admin, name=h.name, address=h.address,
                                                     memory_mb=8192, cpus=2)
                h.start_agent(token, heartbeat_s)
                three.add(h.name)
            cluster.start_routes()
            app = new_app("bench-failover")
            scale(app, 6)
            converge(app, 6, on=three)
            spread = Counter(Container.objects.filter(app=app).values_list("host__name", flat=True))
            print("failover: web=6 placed " + "/".join(str(n) for n in sorted(spread.values())))
            victim = cluster.hosts[-1]
            t0 = time.perf_counter()
            victim.kill()
            converge(app, 6, on=three - {victim.name})
            figures["failover_s"] = time.perf_counter() - t0
    finally:
        for h in hosts:
            h.close()
        if web is not None and web.poll() is None:
            os.killpg(web.pid, signal.SIGTERM)
            web.wait()
        if cluster is not None:
            cluster.teardown()
        redis_proc.terminate()
        redis_proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
