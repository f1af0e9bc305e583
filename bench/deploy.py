#!/usr/bin/env python3
"""Benchmark: `git push` of the sample Flask app until the release is made, cold and warm.

Starts a control plane of its own (gunicorn on a free loopback port, SQLite and a redis-server in
a throw-away data dir, the busybox image as the build stack unless --stack names one present in
--runtime-dir), then with the real `git`:

- cold: a new app each run (empty build cache), push the app: time from `git push` to its exit
  (the build, the image and the release are done then);
- warm: push a new commit without a dependency change to the same app;
- overhead: the part of a cold push outside pip (timed from the streamed lines `Installing
  dependencies` to `Discovering process types`), as a percentage of the cold push; `-v` prints
  every streamed line with its time, to see where the rest goes.

The time until a container of the release answers is not included: that is the scheduler's and
the runtime's part, measured by bench/runtime_start.py.

    python bench/deploy.py [--runs 3] [--stack REF --runtime-dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SAMPLE = ROOT / "tests" / "builder" / "apps" / "flask"


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


VERBOSE = False


def timed_push(work: Path, env: dict[str, str], url: str) -> tuple[float, float]:
    """Push; return (seconds to the end of the push, seconds pip ran)."""
    started = time.monotonic()
    proc = subprocess.Popen(["git", "push", "--force", url, "main"], cwd=work, env=env,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    detected = compiled = None
    out = []
    for line in proc.stderr:
        out.append(line)
        if VERBOSE:
            print(f"  {time.monotonic() - started:7.2f}  {line.rstrip()}", flush=True)
        if detected is None and "Installing dependencies" in line:
            detected = time.monotonic()
        elif compiled is None and "Discovering process types" in line:
            compiled = time.monotonic()
    if proc.wait() != 0 or "Released v" not in "".join(out):
        raise SystemExit("push failed:\n" + "".join(out))
    total = time.monotonic() - started
    pip_s = (compiled - detected) if detected and compiled else 0.0
    return total, pip_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stack", help="stack image reference (default: the busybox image)")
    parser.add_argument("--runtime-dir", type=Path, help="runtime dir whose image store has --stack")
    parser.add_argument("--json", action="store_true", help="print a JSON object last")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print each streamed line with its time since the push began")
    args = parser.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    if args.stack and not args.runtime_dir:
        parser.error("--stack needs --runtime-dir (the store that holds it)")

    work = Path(tempfile.mkdtemp(prefix="paas-bench-deploy-"))
    port, redis_port = free_port(), free_port()
    runtime_dir = args.runtime_dir or work / "data" / "runtime"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PAAS_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"PAAS_DATA_DIR": str(work / "data"), "PAAS_RUNTIME_DIR": str(runtime_dir),
                "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "PAAS_SECRET_KEY": uuid.uuid4().hex, "PAAS_BUILD_STACK": args.stack or "tiny"})
    genv = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "PAAS_"))}
    genv.update({"HOME": str(work), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
                 "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com",
                 "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com"})
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
             "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL,
            start_new_session=True))
        subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--verbosity", "0"],
                       cwd=ROOT, env=env, check=True, timeout=120)
        if not args.stack:
            subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                            "from runtime.images import ImageStore; "
                            "from runtime.tinyimage import build_tiny_image; "
                            "build_tiny_image(ImageStore(Path(sys.argv[1])))",
                            str(runtime_dir / "images")], env=env, check=True, timeout=120)
        procs.append(subprocess.Popen(
            [str(BIN / "gunicorn"), "controlplane.wsgi", "--bind", f"127.0.0.1:{port}",
             "--worker-class", "gthread", "--threads", "4"], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
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

        cold, warm, overhead = [], [], []
        for run in range(args.runs):
            app = f"bench-{run}-{uuid.uuid4().hex[:6]}"
            manage(env, ("from core.actions import app_create\nfrom core.models import Team\n"
                         "from django.contrib.auth.models import User\n"
                         f"app_create(actor=User.objects.get(username='bench'), name={app!r},"
                         " team=Team.objects.get(name='bench-team'))\nprint('ok')\n"))
            push_url = url.replace("http://", f"http://bench:{token}@") + f"/git/{app}.git"
            total, pip_s = timed_push(src, genv, push_url)
            cold.append(total)
            overhead.append(100 * (total - pip_s) / total)
            (src / "app.py").write_text((src / "app.py").read_text() + f"# change {run}\n")
            git(src, genv, "commit", "-q", "-am", f"change {run}")
            warm.append(timed_push(src, genv, push_url)[0])
            print(f"run {run + 1}: cold {total:.2f} s (pip {pip_s:.2f} s), "
                  f"warm {warm[-1]:.2f} s", flush=True)
        result = {"cold_s": round(statistics.median(cold), 2),
                  "warm_s": round(statistics.median(warm), 2),
                  "overhead_pct": round(statistics.median(overhead), 1), "runs": args.runs,
                  "stack": args.stack or "tiny"}
        print(f"push to release, median of {args.runs}: cold {result['cold_s']} s, warm "
              f"{result['warm_s']} s; outside pip: {result['overhead_pct']} % of cold")
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
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
