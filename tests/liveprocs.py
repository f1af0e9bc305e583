"""Real server processes for tests: wait until one answers, stop process groups for sure."""

from __future__ import annotations

import os
import signal
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
