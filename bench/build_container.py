"""One build of the Procfile sample app: in a runtime build container vs on the host, side by side.

Each round builds `tests/builder/apps/shell` (the Procfile buildpack: detect, compile, release,
slug) once with the host executor and once with the runtime executor (one build container per
build on the debian stack, with networking and limits), in a random order, and reports the
median of each and their ratio: what isolation costs a build. The daemon runs on a throw-away
root with its own bridge; the stack comes from the per-host stack cache (`make stack` or the
test suite builds it once).

    python bench/build_container.py [--rounds N] [--json]

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

APP = REPO / "tests" / "builder" / "apps" / "shell"
STACK = "debian-13"


def stack_image() -> Image:
    """The stack from the per-host stack cache's store (built or imported there once per host)."""
    cache = Path(os.environ.get("PAAS_STACK_CACHE_DIR", "/var/cache/paas/stacks"))
    store = ImageStore(cache / "test-store")
    build_stack(store, STACK, cache)
    return store.resolve(f"stack:{STACK}")


def one_build(executor: Executor, scratch: Path, n: int) -> float:
    req = BuildRequest(app="bench", source_dir=APP, work_dir=scratch / f"work{n}",
                       cache_dir=scratch / "cache", timeout=120)
    started = time.perf_counter()
    build(req, executor, lambda _line: None)
    took = time.perf_counter() - started
    shutil.rmtree(req.work_dir)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
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
        n = 0
        for _ in range(args.rounds):
            kinds = ["host", "container"]
            random.shuffle(kinds)
            for kind in kinds:
                n += 1
                executor: Executor = HostExecutor() if kind == "host" else RuntimeExecutor(
                    client, image.digest, image.layers, image.config, app="bench")
                times[kind].append(one_build(executor, scratch, n))
        host, ctr = statistics.median(times["host"]), statistics.median(times["container"])
        print(f"Procfile app build, median of {args.rounds} rounds")
        print(f"  {'on the host':<28}{host * 1000:8.0f} ms")
        print(f"  {'in a build container':<28}{ctr * 1000:8.0f} ms")
        print(f"  {'container / host':<28}{ctr / host:8.2f} x")
        if args.json:
            result: dict[str, Any] = {
                "build_host_ms": round(host * 1000, 1),
                "build_container_ms": round(ctr * 1000, 1),
                "container_over_host": round(ctr / host, 2),
                "rounds": args.rounds,
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
