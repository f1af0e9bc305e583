"""Certificate figures: checking an upload, and how soon the router serves a replaced file.

`parse_ms`: `core.certs.parse` of a leaf and its issuing CA with an EC P-256 key and with an
RSA-2048 key (what a `PUT .../certificate` spends before the database write), median of N.

`pickup_ms`: with `python -m router` (TLS on, a throw-away data dir and redis-server), the
certificate file of a host name is replaced the way the control plane does it after commit
(`core.certs.write_file`: temporary file, fsync, rename); the clock stops at the first TLS
handshake that presents the new certificate (handshakes back to back). The router re-checks a
file at most once a second, so this is bounded by about a second plus one handshake.

    python bench/certs.py [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "platform"))

from core import certs  # noqa: E402
from tests.controlplane import certgen  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_ms(rounds: int, rsa_key: bool) -> float:
    authority = certgen.ca()
    made = certgen.leaf(["www.example.com"], issuer=authority, rsa_key=rsa_key)
    chain = made.pem + authority.pem
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        certs.parse("www.example.com", chain, made.key_pem)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def served(port: int) -> str | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), 5) as raw, \
                context.wrap_socket(raw, server_hostname="www.example.com") as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return hashlib.sha256(der).hexdigest() if der else None


def pickup_ms(rounds: int) -> list[float]:
    work = Path(tempfile.mkdtemp(prefix="paas-bench-certs-"))
    redis_port, tls_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, start_new_session=True))
        env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
                   PAAS_DOMAIN="bench.test", PAAS_DATA_DIR=str(work),
                   PAAS_ROUTER_BIND=f"127.0.0.1:{free_port()}",
                   PAAS_ROUTER_TLS_BIND=f"127.0.0.1:{tls_port}", PAAS_ROUTER_WORKERS="1",
                   PYTHONPATH=str(REPO))
        procs.append(subprocess.Popen([sys.executable, "-m", "router"], env=env, cwd=REPO,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        directory = work / "router" / "certs"
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", tls_port), 1):
                break
            if time.monotonic() > deadline:
                raise SystemExit("the router did not open its TLS port")
            time.sleep(0.05)
        figures = []
        for _ in range(rounds):
            made = certgen.leaf(["www.example.com"])
            start = time.perf_counter()
            certs.write_file(directory, "www.example.com", certs.router_pem(made.pem, made.key_pem))
            while served(tls_port) != made.fingerprint:
                if time.perf_counter() - start > 10:
                    raise SystemExit("the router did not serve the new certificate in 10 s")
            figures.append((time.perf_counter() - start) * 1000)
        return figures
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("bench/certs.py: redis-server is needed", file=sys.stderr)
        return 1
    results = {
        "parse_ms_ec_p256": round(parse_ms(max(args.rounds, 20), rsa_key=False), 2),
        "parse_ms_rsa_2048": round(parse_ms(max(args.rounds, 20), rsa_key=True), 2),
    }
    pickups = pickup_ms(args.rounds)
    results |= {"pickup_ms_median": round(statistics.median(pickups)),
                "pickup_ms_max": round(max(pickups)), "pickup_rounds": len(pickups)}
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
