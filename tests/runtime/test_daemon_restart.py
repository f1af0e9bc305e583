"""A restart of the runtime daemon leaves running containers running and re-adopts them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.runtime.daemon_fixtures import (  # noqa: F401  (fixtures)
    Daemon,
    Image,
    daemon_fixture,
    rt_fixture,
    tiny_fixture,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]


def dead(pid: int) -> bool:
    """True once `pid` has exited (a zombie waiting for whoever adopted it counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_it_leaves_containers_running_across_a_daemon_restart_and_re_adopts_them(
    rt: Daemon, tiny: Image
) -> None:
    c = rt.run(tiny, ["sh", "-c", "trap 'echo bye; exit 7' TERM; while true; do sleep 0.05; done"])
    daemon_pid = rt.proc.pid if rt.proc else 0
    rt.stop()
    assert not dead(c["pid"])  # the container outlived its daemon
    rt.start()
    assert rt.proc is not None and rt.proc.pid != daemon_pid
    again = rt.client.inspect(c["id"])
    assert again["state"] == "running" and again["pid"] == c["pid"]
    stopped = rt.client.stop(c["id"], timeout_s=5)
    assert stopped["state"] == "exited" and stopped["exit_code"] == 7
    assert dead(c["pid"])


def test_it_records_the_exit_code_of_a_container_that_ended_while_no_daemon_ran(
    rt: Daemon, tiny: Image
) -> None:
    c = rt.run(tiny, ["sh", "-c", "read x < /tmp/go 2>/dev/null; sleep 0.3; exit 9"])
    rt.stop()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{c['pid']}").exists() and time.monotonic() < deadline:
        # Reparented to the host's init, which reaps it.
        time.sleep(0.05)
    assert dead(c["pid"])
    rt.start()
    done = rt.client.inspect(c["id"])
    assert done["state"] == "exited" and done["exit_code"] == 9


def test_it_does_not_mistake_a_reused_pid_for_its_container(rt: Daemon, tiny: Image) -> None:
    c = rt.run(tiny, ["sleep", "30"])
    rt.stop()
    state = rt.root / "containers" / c["id"] / "state.json"
    text = state.read_text()
    # Make the record point at a live process that is not the container: this test's own.
    state.write_text(text.replace(f'"pid": {c["pid"]}', f'"pid": {os.getpid()}'))
    rt.start()
    # The record is finished (this test's process was not signalled: it is still here), and
    # what was left in the container's cgroup is cleaned up rather than left running unwatched.
    assert rt.client.inspect(c["id"])["state"] == "exited"
    deadline = time.monotonic() + 10
    while not dead(c["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dead(c["pid"])
