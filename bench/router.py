#!/usr/bin/env python3
"""Benchmark: the router against nginx as a reverse proxy, in front of the same fast app.

Starts, all on loopback and in a throw-away directory: a redis-server (the route table), an nginx
serving a tiny static answer (the app), an nginx reverse proxy with keep-alive to the app, and
`python -m router`, both proxies with the same number of worker processes. Both write an
access-log line per request in batches (nginx to a file, the router to Redis). wrk then measures the
app directly, through nginx and through the router, one after the other in the same run.

    python bench/router.py [--duration 5] [--rounds 3] [--connections 64] [--light-connections 4]
                            [--workers 2] [--json]

Throughput is measured saturated (--connections); latency also at light load
(--light-connections), where queueing does not hide what the proxy adds. During the saturated
runs the script also reads each proxy's CPU time from /proc (all its processes; for the router
also the redis-server that takes its access-log lines, as nginx writes its own) and reports CPU
microseconds per request: on a busy shared machine that figure moves much less than req/s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NGINX_APP = """
worker_processes 1;
daemon off;
pid {dir}/app.pid;
error_log {dir}/app-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{ default_type text/plain; return 200 "hello from the app\\n"; }}
  }}
}}
"""

NGINX_PROXY = """
worker_processes {workers};
daemon off;
pid {dir}/proxy.pid;
error_log {dir}/proxy-error.log;
events {{ worker_connections 4096; }}
http {{
  # Like the router, which sends an access-log line per request to Redis in batches.
  log_format paas '$remote_addr $host "$request" $status $body_bytes_sent $request_id $request_time';
  access_log {dir}/proxy-access.log paas buffer=64k flush=1s;
  keepalive_requests 1000000;
  upstream app {{ server 127.0.0.1:{app_port}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Port $server_port;
      proxy_set_header X-Request-Id $request_id;
      proxy_set_header X-Request-Start $msec;
      proxy_set_header Via "1.1 nginx";
      proxy_buffering off;
    }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench: nothing listens on 127.0.0.1:{port}")


def wait_http(port: int, host: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(request)
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"bench: 127.0.0.1:{port} does not answer 200 for {host}")


def to_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, host: str, duration: int, connections: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency",
         "-H", f"Host: {host}", url],
        check=True, capture_output=True, text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s|m)\b", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s|m)\b", out)
    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return {
        "rps": rps,
        "p50_ms": to_ms(*p50.groups()) if p50 else 0.0,
        "p99_ms": to_ms(*p99.groups()) if p99 else 0.0,
        "errors": errors,
    }


def process_tree(pid: int) -> list[int]:
    """The process and all its descendants, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of these processes (those that are gone count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def median_round(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per target, taken in turns")
    parser.add_argument("--connections", type=int, default=64, help="for throughput (saturated)")
    parser.add_argument("--light-connections", type=int, default=4,
                        help="for latency at light load, where queueing does not hide the proxy's cost")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of each proxy")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "redis-server"):
        if shutil.which(tool) is None and not Path("/usr/sbin/" + tool).exists():
            raise SystemExit(f"bench: {tool} is needed (make debs-test)")

    work = Path(tempfile.mkdtemp(prefix="paas-bench-router-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        redis_port = free_port()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        app_port, nginx_port, router_port = free_port(), free_port(), free_port()
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        (work / "app.conf").write_text(NGINX_APP.format(dir=work, port=app_port))
        (work / "proxy.conf").write_text(
            NGINX_PROXY.format(dir=work, port=nginx_port, app_port=app_port, workers=args.workers))
        for conf in ("app.conf", "proxy.conf"):
            procs.append(subprocess.Popen([nginx, "-c", str(work / conf), "-e", str(work / "error.log")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(redis_port)
        import redis

        from router.table import route_app_set

        client = redis.Redis(port=redis_port)
        route_app_set(client, "bench", [f"127.0.0.1:{app_port}"])
        env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", PAAS_DOMAIN="bench.test",
                   PAAS_ROUTER_BIND=f"127.0.0.1:{router_port}", PAAS_ROUTER_WORKERS=str(args.workers),
                   PAAS_DATA_DIR=str(work), PYTHONPATH=str(ROOT))
        log = open(work / "router.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen([sys.executable, "-m", "router"], env=env, cwd=ROOT,
                                      stdout=log, stderr=log))
        host = "bench.bench.test"
        wait_http(app_port, host)
        wait_http(nginx_port, host)
        wait_http(router_port, host)

        targets = {"direct": app_port, "nginx": nginx_port, "router": router_port}
        # Whose CPU time each target costs (the app's own is the same behind both proxies).
        costs = {"direct": process_tree(procs[1].pid), "nginx": process_tree(procs[2].pid),
                 "router": [*process_tree(procs[3].pid), procs[0].pid]}
        for port in targets.values():
            run_wrk(f"http://127.0.0.1:{port}/", host, 1, args.connections, args.threads)  # warm-up
        # The machine is shared and noisy: run the targets in turns, in a rotating order, and
        # keep each one's median round, so that a busy moment does not fall on one target only.
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        light: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        order = list(targets)
        for _ in range(args.rounds):
            for name in order:
                before = cpu_seconds(costs[name])
                result = run_wrk(f"http://127.0.0.1:{targets[name]}/", host, args.duration, args.connections,
                                 args.threads)
                spent = cpu_seconds(costs[name]) - before
                result["cpu_us_per_request"] = spent / max(1.0, result["rps"] * args.duration) * 1e6
                rounds[name].append(result)
                light[name].append(run_wrk(f"http://127.0.0.1:{targets[name]}/", host, args.duration,
                                           args.light_connections, 1))
            order = order[1:] + order[:1]
        results = {name: median_round(runs) for name, runs in rounds.items()}
        light_results = {name: median_round(runs) for name, runs in light.items()}
        errors = {name: sum(int(r["errors"]) for r in runs + light[name]) for name, runs in rounds.items()}
        metrics = client.hgetall("paas:metrics:router:bench")
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)

    figures = {
        "router_rps": round(results["router"]["rps"], 1),
        "nginx_rps": round(results["nginx"]["rps"], 1),
        "direct_rps": round(results["direct"]["rps"], 1),
        "ratio_vs_nginx": round(results["router"]["rps"] / results["nginx"]["rps"], 3),
        "router_p99_ms": results["router"]["p99_ms"],
        "nginx_p99_ms": results["nginx"]["p99_ms"],
        "direct_p99_ms": results["direct"]["p99_ms"],
        "router_added_p99_ms": round(results["router"]["p99_ms"] - results["direct"]["p99_ms"], 3),
        "router_light_p99_ms": light_results["router"]["p99_ms"],
        "nginx_light_p99_ms": light_results["nginx"]["p99_ms"],
        "direct_light_p99_ms": light_results["direct"]["p99_ms"],
        "router_light_added_p99_ms": round(light_results["router"]["p99_ms"] - light_results["direct"]["p99_ms"], 3),
        "nginx_light_added_p99_ms": round(light_results["nginx"]["p99_ms"] - light_results["direct"]["p99_ms"], 3),
        "errors": errors["router"],
        "nginx_errors": errors["nginx"],
        "router_cpu_us_per_request": round(results["router"]["cpu_us_per_request"], 1),
        "nginx_cpu_us_per_request": round(results["nginx"]["cpu_us_per_request"], 1),
        "cpu_ratio_nginx_to_router": round(results["nginx"]["cpu_us_per_request"]
                                           / max(0.001, results["router"]["cpu_us_per_request"]), 3),
        "router_requests_recorded": int(metrics.get(b"requests", 0)),
        "workers": args.workers,
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
    }
    print(f"median of {args.rounds} rounds of {args.duration} s each, {args.connections} connections")
    print(f"{'target':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU us/req':>11}")
    for name in ("direct", "nginx", "router"):
        r = results[name]
        cost = f"{r['cpu_us_per_request']:>11.1f}" if name != "direct" else f"{'-':>11}"
        print(f"{name:<8} {r['rps']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {errors[name]:>7} {cost}")
    print(f"\nlight load ({args.light_connections} connections): p50/p99 ms")
    for name in ("direct", "nginx", "router"):
        r = light_results[name]
        print(f"{name:<8} {r['rps']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}")
    print(f"CPU per request (proxy processes only; the router's includes its redis-server): "
          f"nginx/router {figures['cpu_ratio_nginx_to_router']:.3f}")
    print(f"router/nginx throughput ratio: {figures['ratio_vs_nginx']:.3f}"
          f"  (router workers: {args.workers}, nginx workers: {args.workers}, {args.connections} connections)")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
