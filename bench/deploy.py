#!/usr/bin/env python3
"""Benchmark: `git push` of the sample Flask app until the release answers on its port.

Starts a platform of its own in a throw-away data dir: the control plane (gunicorn on a free
loopback port, SQLite, a redis-server), a runtime daemon with networking on a bridge of its own,
and the build stack in its image store (imported from the per-host stack cache,
`$PAAS_STACK_CACHE_DIR` or `--stack-cache`, or bootstrapped once when it is not there). Then,
with the real `git`, `--runs` times each:

- cold: a new app (empty build cache), push the sample app (tests/builder/apps/flask: Flask under
  gunicorn); once the push has ended (image built, release made), start the release's web
  process from its image with the runtime, the way the platform launches it, and poll its port
  until it answers HTTP 200. `cold_s` is push start to that answer.
- warm: push a new commit without a dependency change to the same app; `warm_s` the same way.

The streamed build lines split the time into phases: receive (push start to the build's first
line), detect (checkout and buildpack detection), compile, of which `pip` is the time pip itself
ran (from `Installing dependencies` to the buildpack's next step), slug (packing the app layers),
image (storing and unpacking the layers, the image config), release (recording the build and the
release, and the push's end), boot (container start to the first HTTP 200).

Overhead is what the build costs beyond the package installer it drives:

    overhead_pct = 100 * (cold build time - time inside pip) / cold build time

where the cold build time is push start to the end of the push (the release made), median of the
runs. Booting the release is outside it (it is the runtime's part), but inside `cold_s`/`warm_s`.

Booting needs root (the runtime daemon: namespaces, cgroups, a bridge); without root, or with
`--no-boot`, it measures to the end of the push only (the JSON's `to` says which).

    python bench/deploy.py [--runs 3] [--stack stack:debian-12] [--no-boot] [-v] [--json]
"""

from __future__ import annotations

import argparse
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
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
SAMPLE = ROOT / "tests" / "builder" / "apps" / "flask"
APP_PORT = 5000

# (phase, the streamed line that ends it); each phase starts where the one before ended.
MARKS = (
    ("receive", "-----> Building "),
    ("detect", " app detected"),
    ("compile", "-----> Discovering process types"),
    ("process types", "-----> Compressing"),
    ("slug", "       Done: "),
    ("image", "       Image sha256:"),
    ("release", "-----> Released v"),
)
PIP_START = "-----> Installing dependencies"
VERBOSE = False


@dataclass
class Push:
    total: float
    pip: float
    build_id: str
    phases: dict[str, float] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def manage(env: dict[str, str], code: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "manage.py"), "shell", "--verbosity", "0",
                          "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    return out.stdout.strip().splitlines()[-1]


def git(work: Path, env: dict[str, str], *args: str) -> None:
    subprocess.run(["git", *args], cwd=work, env=env, check=True, capture_output=True, timeout=60)


def timed_push(work: Path, env: dict[str, str], url: str) -> Push:
    """Push; return the push's time, pip's time and each phase's time."""
    started = time.monotonic()
    proc = subprocess.Popen(["git", "push", "--force", url, "main"], cwd=work, env=env,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen: dict[str, float] = {}
    pip_from = pip_to = None
    out = []
    for raw in proc.stderr:
        now = time.monotonic() - started
        line = raw.rstrip("\n").removeprefix("remote: ")
        out.append(raw)
        if VERBOSE:
            print(f"  {now:7.2f}  {line}", flush=True)
        for phase, mark in MARKS:
            if phase not in seen and mark in line:
                seen[phase] = now
        if pip_from is None and line.startswith(PIP_START):
            pip_from = now
        elif pip_from is not None and pip_to is None and line.startswith("-----> ") \
                and not line.startswith(PIP_START):
            pip_to = now
    if proc.wait() != 0 or "release" not in seen:
        raise SystemExit("push failed:\n" + "".join(out))
    total = time.monotonic() - started
    phases: dict[str, float] = {}
    last = 0.0
    for phase, _mark in MARKS:
        if phase in seen:
            phases[phase] = seen[phase] - last
            last = seen[phase]
    phases["release"] += total - last  # the push's own end after the last line
    build_id = next(ln.split("(build ")[1].split(")")[0] for ln in out if "(build " in ln)
    pip_s = (pip_to - pip_from) if pip_from is not None and pip_to is not None else 0.0
    phases["pip"] = pip_s
    return Push(total, pip_s, build_id, phases)


class Booter:
    """Start a release's web process with the runtime daemon and wait for its HTTP answer."""

    def __init__(self, runtime_dir: Path, env: dict[str, str]) -> None:
        from runtime.client import DaemonClient

        self.root = runtime_dir
        self.bridge = f"pd{secrets.token_hex(3)}"
        self.subnet = f"10.{random.randint(160, 250)}.{random.randint(0, 255)}.0/24"
        denv = {**env, "PAAS_BRIDGE": self.bridge, "PAAS_HOST_SUBNET": self.subnet}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime", "--root", str(runtime_dir), "daemon"],
            cwd=ROOT, env=denv, stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        if "ready" not in self.proc.stdout.readline():
            raise SystemExit("the runtime daemon did not start")
        self.client = DaemonClient(runtime_dir / "daemon.sock", timeout=60)

    def boot(self, reference: str) -> float:
        """Seconds from the container's creation to the app's first HTTP 200."""
        from runtime.images import ImageStore

        image = ImageStore(self.root / "images").resolve(reference)
        spec: dict[str, Any] = {
            "id": f"bench-{secrets.token_hex(4)}", "app": "bench", "release": 1,
            "process_type": "web", "image": image.digest, "command": [], "env": {},
            "port": APP_PORT, "memory_mb": 512, "pids_limit": 256,
            "network": {"mode": "bridge", "nat": True},
        }
        started = time.monotonic()
        try:
            c = self.client.run(spec, image.layers, image.config)
            url = f"http://{c['ip']}:{APP_PORT}/"
            deadline = started + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        return time.monotonic() - started
                except httpx.TransportError:
                    pass
                state = self.client.inspect(spec["id"])
                if state["state"] != "running":
                    logs = "\n".join(i["line"] for i in self.client.logs(spec["id"], tail=30))
                    raise SystemExit(f"the release's web process ended ({state['state']}):\n{logs}")
                time.sleep(0.02)
            raise SystemExit(f"the release did not answer on {url} within 60 s")
        finally:
            self.client.remove(spec["id"], force=True)

    def close(self) -> None:
        if self.proc.poll() is None:
            for c in self.client.list():
                self.client.remove(c["id"], force=True)
            self.proc.terminate()
            self.proc.wait(timeout=30)
        # In a process of its own: pyroute2's event loop complains on its way out.
        done = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; "
             "from runtime.network import HostNetwork; "
             "HostNetwork(sys.argv[1], sys.argv[2], Path(sys.argv[3])).teardown()",
             self.bridge, self.subnet, str(self.root / "network")],
            cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"could not remove the bridge {self.bridge}:\n{done.stderr}", file=sys.stderr)


def median_phases(pushes: list[Push]) -> dict[str, float]:
    keys = [k for k in pushes[0].phases]
    return {k: round(statistics.median(p.phases.get(k, 0.0) for p in pushes), 2) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stack", default="stack:debian-12",
                        help="the build and run stack (default stack:debian-12)")
    parser.add_argument("--stack-cache", type=Path,
                        default=Path(os.environ["PAAS_STACK_CACHE_DIR"])
                        if os.environ.get("PAAS_STACK_CACHE_DIR") else None,
                        help="per-host stack cache to import the stack from "
                             "(default $PAAS_STACK_CACHE_DIR)")
    parser.add_argument("--executor", choices=("host", "runtime"),
                        help="PAAS_BUILD_EXECUTOR for the builds (default: the platform's choice)")
    parser.add_argument("--no-boot", action="store_true",
                        help="stop at the end of the push (no runtime daemon, no root needed)")
    parser.add_argument("--json", action="store_true", help="print a JSON object last")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print each streamed line with its time since the push began")
    args = parser.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not args.no_boot and os.geteuid() != 0:
        print("not root: measuring to the end of the push only (booting the release needs the "
              "runtime daemon, which needs root)", flush=True)
        args.no_boot = True

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)  # so that the clean-up below runs
    work = Path(tempfile.mkdtemp(prefix="paas-bench-deploy-"))
    port, redis_port = free_port(), free_port()
    runtime_dir = work / "data" / "runtime"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PAAS_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"PAAS_DATA_DIR": str(work / "data"), "PAAS_RUNTIME_DIR": str(runtime_dir),
                "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "PAAS_SECRET_KEY": uuid.uuid4().hex, "PAAS_BUILD_STACK": args.stack})
    if args.executor:
        env["PAAS_BUILD_EXECUTOR"] = args.executor
    genv = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "PAAS_"))}
    genv.update({"HOME": str(work), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
                 "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com",
                 "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com"})
    procs: list[subprocess.Popen[bytes]] = []
    booter: Booter | None = None
    try:
        procs.append(subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
             "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL,
            start_new_session=True))
        subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--verbosity", "0"],
                       cwd=ROOT, env=env, check=True, timeout=120)
        stack_cmd = [sys.executable, "-m", "runtime.stacks", "--root", str(runtime_dir), "build",
                     args.stack.removeprefix("stack:")]
        if args.stack_cache:
            stack_cmd += ["--cache-dir", str(args.stack_cache)]
        stacked = subprocess.run(stack_cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                 check=False)
        if stacked.returncode != 0:
            raise SystemExit(f"cannot put {args.stack} in the image store: "
                             f"{(stacked.stderr or stacked.stdout).strip()}")
        if not args.no_boot:
            booter = Booter(runtime_dir, env)
        web_log = work / "web.log"
        with web_log.open("wb") as log:
            procs.append(subprocess.Popen(
                [str(BIN / "gunicorn"), "controlplane.wsgi", "--bind", f"127.0.0.1:{port}",
                 "--worker-class", "gthread", "--threads", "4"], cwd=ROOT, env=env,
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True))
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            if procs[-1].poll() is not None:
                raise SystemExit("the control plane did not start:\n" + web_log.read_text()[-3000:])
            try:
                httpx.get(url + "/api/v1/account", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        token = manage(env, (
            "from core.actions import token_create, user_create, team_create\n"
            "u = user_create(actor=None, username='bench', email='b@example.com')\n"
            "team_create(actor=u, name='bench-team')\n"
            "print(token_create(actor=u, description='bench')[1])\n"))
        src = work / "src"
        shutil.copytree(SAMPLE, src)
        git(src, genv, "init", "-q", "-b", "main")
        git(src, genv, "add", "-A")
        git(src, genv, "commit", "-q", "-m", "sample")

        cold: list[Push] = []
        warm: list[Push] = []
        cold_s: list[float] = []
        warm_s: list[float] = []
        for run in range(args.runs):
            app = f"bench-{run}-{uuid.uuid4().hex[:6]}"
            manage(env, ("from core.actions import app_create\nfrom core.models import Team\n"
                         "from django.contrib.auth.models import User\n"
                         f"app_create(actor=User.objects.get(username='bench'), name={app!r},"
                         " team=Team.objects.get(name='bench-team'))\nprint('ok')\n"))
            push_url = url.replace("http://", f"http://bench:{token}@") + f"/git/{app}.git"
            for kind, pushes, totals in (("cold", cold, cold_s), ("warm", warm, warm_s)):
                if kind == "warm":
                    (src / "app.py").write_text((src / "app.py").read_text() + f"# change {run}\n")
                    git(src, genv, "commit", "-q", "-am", f"change {run}")
                push = timed_push(src, genv, push_url)
                if booter is not None:
                    push.phases["boot"] = booter.boot(f"app/{app}:build-{push.build_id}")
                pushes.append(push)
                totals.append(push.total + push.phases.get("boot", 0.0))
            print(f"run {run + 1}: cold {cold_s[-1]:.2f} s (push {cold[-1].total:.2f} s, pip "
                  f"{cold[-1].pip:.2f} s), warm {warm_s[-1]:.2f} s (push {warm[-1].total:.2f} s)",
                  flush=True)
        cold_build = statistics.median(p.total for p in cold)
        cold_pip = statistics.median(p.pip for p in cold)
        result: dict[str, Any] = {
            "cold_s": round(statistics.median(cold_s), 2),
            "warm_s": round(statistics.median(warm_s), 2),
            "overhead_pct": round(100 * (cold_build - cold_pip) / cold_build, 1),
            "cold_build_s": round(cold_build, 2), "cold_pip_s": round(cold_pip, 2),
            "runs": args.runs, "stack": args.stack, "to": "push" if args.no_boot else "answering",
            "executor": args.executor or "default",
            "phases_cold": median_phases(cold), "phases_warm": median_phases(warm),
        }
        end = "the end of the push" if args.no_boot else "the first HTTP 200"
        print(f"\npush to {end}, median of {args.runs} runs on {args.stack}")
        print(f"{'phase':<16} {'cold s':>8} {'warm s':>8}")
        for key in result["phases_cold"]:
            if key != "pip":
                print(f"{key:<16} {result['phases_cold'][key]:>8.2f} "
                      f"{result['phases_warm'].get(key, 0.0):>8.2f}")
        print(f"{'  of it pip':<16} {result['phases_cold']['pip']:>8.2f} "
              f"{result['phases_warm']['pip']:>8.2f}   (inside compile)")
        print(f"{'total':<16} {result['cold_s']:>8.2f} {result['warm_s']:>8.2f}")
        print(f"overhead: cold build {result['cold_build_s']} s, of it pip {result['cold_pip_s']}"
              f" s: {result['overhead_pct']} % is ours")
        if args.json:
            print(json.dumps(result))
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if booter is not None:
            booter.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as e:
        out = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
        sys.exit(f"{' '.join(map(str, e.cmd))[:200]} failed with status {e.returncode}\n{out}")
