"""Real server processes for tests: wait until one answers, stop process groups for sure."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx


def wait_until_answers(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60) -> None:
    """Wait until `url` answers over HTTP; fail with the server's log if it dies or never does."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)


def stop_groups(*procs: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM each process's group (started with start_new_session), SIGKILL after 20 s."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def isolated_env(work: Path, redis_port: int, secret: str, **extra: str) -> dict[str, str]:
    """The environment of a control plane of its own: none of the test run's PAAS_*,
    DATABASE_URL or REDIS_URL; its data dir under `work`; the redis-server on `redis_port`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PAAS_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({
        "PAAS_DATA_DIR": str(work / "data"),
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "PAAS_SECRET_KEY": f"{secret}-{os.urandom(16).hex()}",
        **extra,
    })
    return env


def start_redis(work: Path, port: int) -> subprocess.Popen[bytes]:
    """A throw-away redis-server of one test module's own (no other test's worker sees its
    queues); stop it with `stop_groups`."""
    return subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(work),
         "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, start_new_session=True,
    )
