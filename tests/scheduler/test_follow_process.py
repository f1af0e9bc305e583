"""`manage.py scheduler_follow` as a process: it follows the streams and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from scheduler.ingest import GROUP

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_it_joins_the_consumer_group_and_stops_on_sigterm(tmp_path: Path) -> None:
    url = os.environ.get("REDIS_URL")
    assert url, "REDIS_URL is not set: run the suite through scripts/with-test-services"
    env = dict(os.environ, PAAS_DATA_DIR=str(tmp_path), DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3")
    manage = [sys.executable, str(REPO / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, timeout=120)
    proc = subprocess.Popen([*manage, "scheduler_follow"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        r = redis.Redis.from_url(url)
        name = f"follow-{os.uname().nodename}-{proc.pid}"
        deadline = time.monotonic() + 60
        while not any(c["name"].decode() == name for c in _consumers(r)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the follower never read the streams"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "following agent reports" in out and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _consumers(r: redis.Redis) -> list[dict]:
    try:
        return r.xinfo_consumers("paas:agent:events", GROUP)
    except redis.ResponseError:
        return []
