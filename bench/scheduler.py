"""Scheduler figures: placement by the pure planner.

Places 10,000 containers (500 apps of 20 web replicas, of three sizes, a tenth of them with a
label constraint) on 1,000 simulated hosts with some reservations already on them, several
rounds, and prints the best and median seconds per placement run. Host failover and scaling
times need real hosts and are not measured here yet.

    python bench/scheduler.py [--hosts N] [--containers N] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))

from scheduler.placement import HostCapacity, Request, place  # noqa: E402


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
    if args.json:
        print(json.dumps({"placement_s": round(min(times), 4),
                          "placement_median_s": round(statistics.median(times), 4),
                          "placed": placed, "containers": len(requests), "hosts": len(hosts)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
