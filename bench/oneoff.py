"""One-off figures: how long `paas run -- true` takes end to end on one host.

As root (needs redis-server): a throw-away redis-server, SQLite database, gunicorn (gthread)
web process, runtime daemon (with its own bridge and subnet) and agent process on this host, an
app whose release is the tiny busybox image. `run_api_s`: from `POST /apps/<app>/runs` to the
exit entry on the output endpoint (the container created, started, run, reported and followed);
`run_cli_s`: the installed `paas run -- true` command from start to exit (adds the CLI's own
start-up; `cli_info_s`, `paas apps:info` with one GET, is printed next to it for scale); `release_phase_s` is not measured here (it is a one-off plus a reconcile step).
Best and median of `--rounds` each.

    python bench/oneoff.py [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "platform")]

import httpx  # noqa: E402

from runtime.images import ImageStore  # noqa: E402
from runtime.tinyimage import build_tiny_image  # noqa: E402
from tests.controlplane.test_cli_e2e import BIN, PAAS, Server, free_port  # noqa: E402
from tests.controlplane.test_cli_run import SETUP  # noqa: E402
from tests.liveprocs import stop_groups, wait_until_answers  # noqa: E402
from tests.runtime.daemon_fixtures import Daemon  # noqa: E402


def measure(rounds: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="paas-bench-oneoff-"))
    port, redis_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PAAS_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"PAAS_DATA_DIR": str(work / "data"), "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "PAAS_SECRET_KEY": "bench-" + uuid.uuid4().hex})
    subnet = f"10.{random.randint(160, 250)}.{random.randint(0, 255)}.0/24"
    daemon = Daemon(work / "runtime", network=(f"pb{secrets.token_hex(3)}", subnet))
    daemon.root.mkdir(parents=True)
    host, app = f"bench-{secrets.token_hex(3)}", f"b{secrets.token_hex(4)}"
    procs: list[subprocess.Popen[bytes] | None] = []
    logs = [open(work / n, "wb") for n in ("redis.log", "gunicorn.log", "agent.log")]  # noqa: SIM115
    try:
        procs.append(subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--dir", str(work),
             "--save", "", "--appendonly", "no"], stdout=logs[0], start_new_session=True))
        daemon.start()
        store = ImageStore(daemon.root / "images")
        image = store.resolve(build_tiny_image(store)).digest
        server = Server(url=f"http://127.0.0.1:{port}", env=env)
        server.manage("migrate", "--verbosity", "0")
        out = server.manage("shell", "--verbosity", "0", "-c", SETUP.format(
            user=f"bench-{secrets.token_hex(3)}", host=host, app=app, image=image)).stdout
        token = json.loads(out.strip().splitlines()[-1])["token"]
        web = subprocess.Popen(
            [str(BIN / "gunicorn"), "controlplane.wsgi", "--bind", f"127.0.0.1:{port}",
             "--workers", "1", "--worker-class", "gthread", "--threads", "4"],
            cwd=ROOT, env=env, stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(web)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "runtime.agent", "--host", host], cwd=ROOT,
            env=dict(env, PAAS_RUNTIME_DIR=str(daemon.root)), stdout=logs[2],
            stderr=subprocess.STDOUT, start_new_session=True))
        wait_until_answers(web, server.url + "/api/v1/account", work / "gunicorn.log")
        headers = {"Authorization": f"Bearer {token}"}
        api_times, cli_times = [], []
        with httpx.Client(base_url=server.url + "/api/v1", headers=headers, timeout=60) as http:
            for _ in range(rounds + 1):  # the first round warms up (agent connection, imports)
                t0 = time.perf_counter()
                run = http.post(f"/apps/{app}/runs", json={"command": ["true"]}).json()
                with http.stream("GET", f"/apps/{app}/runs/{run['id']}/output") as r:
                    last = [json.loads(line) for line in r.iter_lines() if line.strip()][-1]
                api_times.append(time.perf_counter() - t0)
                assert last.get("exit") == 0, last
        home = work / "home"
        home.mkdir()
        cli_env = dict({k: v for k, v in os.environ.items() if not k.startswith("PAAS_")},
                       HOME=str(home), XDG_CONFIG_HOME=str(home / "config"))
        subprocess.run([PAAS, "login", "--server", server.url, "--token", token], env=cli_env,
                       check=True, capture_output=True)
        base_times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            subprocess.run([PAAS, "apps:info", "-a", app], env=cli_env, capture_output=True, check=True)
            base_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            done = subprocess.run([PAAS, "run", "-a", app, "--", "true"], env=cli_env,
                                  capture_output=True, text=True)
            cli_times.append(time.perf_counter() - t0)
            assert done.returncode == 0, done.stderr
        return {"run_api_s": statistics.median(api_times[1:]), "run_api_best_s": min(api_times[1:]),
                "run_cli_s": statistics.median(cli_times), "run_cli_best_s": min(cli_times),
                "cli_info_s": statistics.median(base_times)}
    finally:
        stop_groups(*procs[1:])
        for c in daemon.client.list() if daemon.proc is not None else []:
            daemon.made.append(c["id"])
        daemon.cleanup()
        daemon.stop()
        daemon.teardown_network()
        stop_groups(*procs[:1])
        for f in logs:
            f.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    if os.geteuid() != 0 or shutil.which("redis-server") is None:
        print("one-offs: skipped (need root and redis-server)")
        figures: dict[str, float] = {}
    else:
        figures = measure(args.rounds)
        print(f"paas run -- true on one host, {args.rounds} rounds (median, best):")
        print(f"  API: POST to exit entry   {figures['run_api_s']:.3f} s  {figures['run_api_best_s']:.3f} s")
        print(f"  CLI: paas run -- true     {figures['run_cli_s']:.3f} s  {figures['run_cli_best_s']:.3f} s")
        print(f"  (for scale: paas apps:info, one GET, {figures['cli_info_s']:.3f} s median)")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
