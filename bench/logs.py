#!/usr/bin/env python3
"""Benchmark: the agent's log shipper (runtime/agent/logship.py) against a throw-away redis-server.

Container directories are laid out as the runtime's init writes them (state.json, container.log
with `<RFC 3339 time> <stream> <line>` lines), in a temporary runtime root:

- `ship_lines_per_s`: `--containers` containers (default 20) with `--lines` lines each (default
  5000, 120 bytes of text) already written; the time until the shipper has sent all of them to
  their apps' streams (a cold agent catching up).
- `idle_poll_ms`: CPU time one poll round costs with `--idle` containers (default 200) that write
  nothing (what the agent pays every `PAAS_AGENT_LOG_POLL_S` on a quiet host).
- `latency_ms_p50`/`_p95`: a line appended to a container's log until a reader blocked in XREAD on
  the app's stream gets it, with the shipper's loop running at its default poll interval (0.25 s);
  `--samples` lines at random moments (default 100).

    python bench/logs.py [--containers N] [--lines N] [--idle N] [--samples N] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

import redis  # noqa: E402

from runtime.agent.logship import LogShipper, LogShipSettings, logs_key  # noqa: E402

TEXT = "x" * 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def container(root: Path, app: str, n: int) -> Path:
    d = root / "containers" / f"{app}.web.{n}.{secrets.token_hex(3)}"
    d.mkdir(parents=True)
    spec = {"id": d.name, "app": app, "process_type": "web", "labels": {"paas.process": f"web.{n}"}}
    (d / "state.json").write_text(json.dumps({"spec": spec}))
    (d / "container.log").touch()
    return d


def stamp() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def append(d: Path, lines: list[str]) -> None:
    with open(d / "container.log", "a") as f:
        f.write("".join(f"{stamp()} stdout {line}\n" for line in lines))


def bench_throughput(r: redis.Redis[bytes], work: Path, containers: int, lines: int) -> float:
    root = work / "throughput"
    app = f"bench-{secrets.token_hex(3)}"
    for n in range(1, containers + 1):
        append(container(root, app, n), [f"{i} {TEXT}" for i in range(lines)])
    settings = LogShipSettings(maxlen=containers * lines + 1000)
    shipper = LogShipper(root / "containers", root / "state.json", r, "bench", settings)
    start = time.perf_counter()
    while shipper.shipped < containers * lines:
        shipper.step()
    took = time.perf_counter() - start
    assert r.xlen(logs_key(app)) == containers * lines
    r.delete(logs_key(app))
    return containers * lines / took


def bench_idle(r: redis.Redis[bytes], work: Path, idle: int, rounds: int = 200) -> float:
    root = work / "idle"
    app = f"bench-{secrets.token_hex(3)}"
    for n in range(1, idle + 1):
        append(container(root, app, n), ["hello"])
    shipper = LogShipper(root / "containers", root / "state.json", r, "bench-idle")
    shipper.step()
    start = time.process_time()
    for _ in range(rounds):
        shipper.step()
    r.delete(logs_key(app))
    return (time.process_time() - start) / rounds * 1000


def bench_latency(r: redis.Redis[bytes], work: Path, samples: int) -> list[float]:
    root = work / "latency"
    app = f"bench-{secrets.token_hex(3)}"
    d = container(root, app, 1)
    shipper = LogShipper(root / "containers", root / "state.json", r, "bench-latency")
    stop = threading.Event()
    thread = threading.Thread(target=shipper.run, args=(stop,), daemon=True)
    thread.start()
    key = logs_key(app)
    last = "0-0"
    got: list[float] = []
    try:
        for i in range(samples):
            time.sleep(random.uniform(0.05, 0.3))
            sent = time.perf_counter()
            append(d, [f"sample {i}"])
            while True:
                answer = r.xread({key: last}, block=5000)
                if not answer:
                    raise RuntimeError("a line did not arrive within 5 s")
                last = answer[0][1][-1][0].decode()
                if answer[0][1][-1][1][b"line"] == f"sample {i}".encode():
                    break
            got.append((time.perf_counter() - sent) * 1000)
    finally:
        stop.set()
        thread.join()
        r.delete(key)
    return got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("skipped: needs redis-server")
        return 0
    work = Path(tempfile.mkdtemp(prefix="paas-bench-logs-"))
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(work),
         "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    r: redis.Redis[bytes] = redis.Redis(port=port)
    try:
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        rate = bench_throughput(r, work, args.containers, args.lines)
        idle_ms = bench_idle(r, work, args.idle)
        lat = sorted(bench_latency(r, work, args.samples))
    finally:
        r.close()
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    p50, p95 = statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.95))]
    print(f"ship    {args.containers} containers x {args.lines} lines already written: "
          f"{rate:,.0f} lines/s")
    print(f"idle    one poll round over {args.idle} quiet containers: {idle_ms:.2f} ms CPU")
    print(f"latency line written -> in the app's stream (poll 0.25 s), {len(lat)} samples: "
          f"p50 {p50:.0f} ms, p95 {p95:.0f} ms")
    if args.json:
        print(json.dumps({"ship_lines_per_s": round(rate), "idle_poll_ms": round(idle_ms, 3),
                          "latency_ms_p50": round(p50, 1), "latency_ms_p95": round(p95, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
