"""Take this host's runtime down: stop its containers, remove its network.

    python -m runtime network teardown [--force]   the bridge, its iptables rules, routes, state
    python -m runtime down                         stop every running container, then the above

`down` stops containers through the daemon when it answers; otherwise (containers outlive the
daemon) it signals each recorded init itself, checked by pid and start time, and kills what is
left in its cgroup; the next daemon then records those containers as exited.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

from runtime import cgroups
from runtime.client import DaemonClient, DaemonError, DaemonUnavailable

STOP_TIMEOUT_S = 10.0


class TeardownError(Exception):
    """Taking the runtime down was refused or failed; the message says why."""


def _need_root() -> None:
    if os.geteuid() != 0:
        raise TeardownError("taking the runtime down needs root (network interfaces, iptables, cgroups)")


def network_teardown(root: Path, settings: tuple[str, str], force: bool = False) -> int:
    """Remove the host network (bridge, iptables chains and rules, routes, address state)."""
    from runtime.network import HostNetwork, NetworkError

    _need_root()
    bridge, subnet = settings
    state = root / "network"
    try:
        net = HostNetwork(bridge, subnet, state)
        attached = net.attachments()
        if attached and not force:
            names = ", ".join(a.container_id for a in attached[:5]) + (" ..." if len(attached) > 5 else "")
            raise TeardownError(
                f"{len(attached)} container(s) are still attached to {bridge} ({names}); stop them "
                "first (python -m runtime down) or force it with --force (they lose their network)"
            )
        net.teardown()
    except NetworkError as exc:
        raise TeardownError(f"cannot tear the network down: {exc}") from None
    shutil.rmtree(state, ignore_errors=True)
    print(f"removed bridge {bridge}, its iptables rules and routes, and the network's state")
    if (root / "daemon.sock").exists():
        try:
            DaemonClient(root / "daemon.sock", timeout=5).ping()
            print("the runtime daemon still runs: restart it to bring the network back")
        except DaemonError:
            pass
    return 0


def down(root: Path, settings: tuple[str, str]) -> int:
    """Stop every running container of this runtime root, then tear the network down."""
    _need_root()
    try:
        stopped = _stop_through_daemon(root)
        _wait_detached(root / "network", stopped)
    except DaemonUnavailable:
        stopped = _stop_without_daemon(root)  # their attachments go with the network
    for cid in stopped:
        print(f"stopped {cid}")
    if not stopped:
        print("no container was running")
    return network_teardown(root, settings, force=True)


def _stop_through_daemon(root: Path) -> list[str]:
    client = DaemonClient(root / "daemon.sock", timeout=STOP_TIMEOUT_S + 30)
    running = [c["id"] for c in client.list() if c["state"] == "running"]
    for cid in running:
        try:
            client.stop(cid, timeout_s=STOP_TIMEOUT_S)
        except DaemonError as exc:
            if exc.kind != "not_found":
                raise TeardownError(f"cannot stop {cid}: {exc}") from None
    return running


def _stop_without_daemon(root: Path) -> list[str]:
    from runtime.daemon import process_start_time

    found: list[tuple[str, int]] = []
    for path in sorted((root / "containers").glob("*/state.json")):
        try:
            rec = json.loads(path.read_text())
            cid, pid, start = str(rec["spec"]["id"]), int(rec.get("pid") or 0), int(rec.get("pid_start") or 0)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if rec.get("state") == "running" and pid and process_start_time(pid) == start:
            found.append((cid, pid))
    pidfds = {}
    for cid, pid in found:
        try:
            pidfds[cid] = os.pidfd_open(pid)
            signal.pidfd_send_signal(pidfds[cid], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for fd in pidfds.values():
        if not _wait_fd(fd, deadline):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            _wait_fd(fd, time.monotonic() + 5)
        os.close(fd)
    for cid, _ in found:
        cg = cgroups.for_container(cid)
        try:
            cgroups.kill_all(cg)
            cg.remove()
        except (cgroups.CgroupError, OSError):
            pass
    return [cid for cid, _ in found]


def _wait_fd(fd: int, deadline: float) -> bool:
    """Wait until the pidfd `fd` is readable (its process has exited) or the deadline passes."""
    import select

    remaining = max(0.0, deadline - time.monotonic())
    r, _, _ = select.select([fd], [], [], remaining)
    return bool(r)


def _wait_detached(state: Path, cids: list[str], timeout: float = 10.0) -> None:
    """Let the daemon finish detaching the stopped containers (it does it off its event loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any((state / "attachments" / f"{cid}.json").exists() for cid in cids):
            return
        time.sleep(0.05)
