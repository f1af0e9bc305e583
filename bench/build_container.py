"""One build of a sample app: in a runtime build container vs on the host, side by side.

Each round builds a sample app from `tests/builder/apps` (by default `shell`, the Procfile
buildpack: detect, compile, release, slug) once with the host executor and once with the
runtime executor (one build container per build on the debian stack, with networking, limits and
the host's CA certificates), in a random order, each with a build cache of its own, warmed by
one untimed first build (its time is shown apart), and reports the median of each and their ratio: what isolation costs a build. The daemon runs on a throw-away
root with its own bridge; the stack comes from the per-host stack cache (`make stack` or the
test suite builds it once).

    python bench/build_container.py [--rounds N] [--app shell|static|flask|express] [--json]

Needs root.
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from builder.buildpack import BuildRequest, build  # noqa: E402
from builder.executor import Executor, HostExecutor, RuntimeExecutor  # noqa: E402
from runtime.client import DaemonClient  # noqa: E402
from runtime.images import Image, ImageStore  # noqa: E402
from runtime.stacks import build_stack  # noqa: E402

APPS = REPO / "tests" / "builder" / "apps"
STACK = "debian-13"


def stack_image() -> Image:
    """The stack from the per-host stack cache's store (built or imported there once per host)."""
    cache = Path(os.environ.get("PAAS_STACK_CACHE_DIR", "/var/cache/paas/stacks"))
    store = ImageStore(cache / "test-store")
    build_stack(store, STACK, cache)
    return store.resolve(f"stack:{STACK}")


def one_build(executor: Executor, app: str, scratch: Path, cache: str, n: int) -> float:
    req = BuildRequest(app="bench", source_dir=APPS / app, work_dir=scratch / f"work{n}",
                       cache_dir=scratch / cache, timeout=600)
    started = time.perf_counter()
    build(req, executor, lambda _line: None)
    took = time.perf_counter() - started
    shutil.rmtree(req.work_dir)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--app", default="shell", choices=sorted(p.name for p in APPS.iterdir()))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("error: needs root (the runtime daemon)", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="paas-bench-build-"))
    bridge = f"pk{secrets.token_hex(3)}"
    subnet = f"10.{random.randint(160, 250)}.{random.randint(0, 255)}.0/24"
    env = {**os.environ, "PAAS_BRIDGE": bridge, "PAAS_HOST_SUBNET": subnet}
    daemon = subprocess.Popen([sys.executable, "-m", "runtime", "--root", str(root / "runtime"), "daemon"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout is not None
        if "ready" not in daemon.stdout.readline():
            print("error: the runtime daemon did not start", file=sys.stderr)
            return 1
        image = stack_image()
        client = DaemonClient(root / "runtime" / "daemon.sock")
        scratch = root / "builds"
        scratch.mkdir()
        times: dict[str, list[float]] = {"host": [], "container": []}
        ca = Path("/etc/ssl/certs")

        def executor_for(kind: str) -> Executor:
            if kind == "host":
                return HostExecutor()
            return RuntimeExecutor(client, image.digest, image.layers, image.config, app="bench",
                                   ca_certs=ca if (ca / "ca-certificates.crt").is_file() else None)

        cold = {kind: one_build(executor_for(kind), args.app, scratch, f"cache-{kind}", i)
                for i, kind in enumerate(("host", "container"))}
        n = 2
        for _ in range(args.rounds):
            kinds = ["host", "container"]
            random.shuffle(kinds)
            for kind in kinds:
                n += 1
                times[kind].append(one_build(executor_for(kind), args.app, scratch, f"cache-{kind}", n))
        host, ctr = statistics.median(times["host"]), statistics.median(times["container"])
        print(f"{args.app} app build (warm cache), median of {args.rounds} rounds")
        print(f"  {'on the host':<28}{host * 1000:8.0f} ms")
        print(f"  {'in a build container':<28}{ctr * 1000:8.0f} ms")
        print(f"  {'container / host':<28}{ctr / host:8.2f} x")
        print(f"  first (cold cache) build: {cold['host'] * 1000:.0f} ms on the host, "
              f"{cold['container'] * 1000:.0f} ms in a build container")
        if args.json:
            result: dict[str, Any] = {
                "build_host_ms": round(host * 1000, 1),
                "build_container_ms": round(ctr * 1000, 1),
                "container_over_host": round(ctr / host, 2),
                "rounds": args.rounds,
                "app": args.app,
                "cold_host_ms": round(cold["host"] * 1000, 1),
                "cold_container_ms": round(cold["container"] * 1000, 1),
            }
            print(json.dumps(result))
        return 0
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        from runtime.network import HostNetwork

        HostNetwork(bridge, subnet, root / "runtime" / "network").teardown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
