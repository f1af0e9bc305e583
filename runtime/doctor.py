"""`python -m runtime doctor`: say in plain words what this host supports and what is missing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime import cgroups


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def check_cgroups(root: Path) -> Check:
    try:
        version = cgroups.detect_version(root)
    except cgroups.CgroupError:
        return Check("cgroups", False, f"no cgroup hierarchy at {root}: no memory, CPU or pids limits")
    if version == 2:
        have = _read(root / "cgroup.controllers").split()
        missing = [c for c in ("memory", "cpu", "pids") if c not in have]
        swap = "memory.swap.max" in " ".join(p.name for p in root.glob("*/memory.swap.max"))
        detail = f"version 2 (unified) with {', '.join(have) or 'no controllers'}"
        if missing:
            return Check("cgroups", False, f"{detail}; missing controllers: {', '.join(missing)}")
        return Check("cgroups", True, detail + ("" if swap else "; swap is not accounted"))
    missing = [c for c in cgroups.V1_CONTROLLERS if not (root / c).is_dir()]
    swap = (root / "memory" / "memory.memsw.limit_in_bytes").exists()
    detail = "version 1 (one hierarchy per controller)"
    if missing:
        return Check("cgroups", False, f"{detail}; missing controllers: {', '.join(missing)}")
    return Check(
        "cgroups",
        True,
        f"{detail} with memory, cpu, cpuacct, pids; "
        + ("swap accounted (no swap beyond the memory limit)" if swap else "swap not accounted"),
    )


def check_overlayfs(proc: Path) -> Check:
    if "overlay" in _read(proc / "filesystems").split():
        return Check("overlayfs", True, "available: container roots are image layers plus an upper dir")
    return Check("overlayfs", False, "not available: load the overlay module (modprobe overlay)")


def check_seccomp(proc: Path) -> Check:
    actions = _read(proc / "sys" / "kernel" / "seccomp" / "actions_avail").split()
    if "errno" in actions and "kill_process" in actions:
        return Check("seccomp", True, "filters available: dangerous syscalls are refused with EPERM")
    if "Seccomp:" in _read(proc / "self" / "status"):
        return Check("seccomp", True, "filters available")
    return Check("seccomp", False, "the kernel has no seccomp filters: containers would be unfiltered")


def check_userns(proc: Path) -> Check:
    limit = _read(proc / "sys" / "user" / "max_user_namespaces").strip()
    if limit.isdigit() and int(limit) > 0:
        return Check("user namespaces", True, f"available (up to {limit}); not needed: apps run as an unprivileged uid", False)
    return Check("user namespaces", False, "not available; not needed: apps run as an unprivileged uid", False)


def check_pidfd() -> Check:
    try:
        fd = os.pidfd_open(os.getpid())
    except (OSError, AttributeError):
        return Check("pidfd", False, "pidfd_open is missing (Linux 5.3+ needed to watch containers)")
    os.close(fd)
    return Check("pidfd", True, "available: the daemon watches containers it re-adopts after a restart")


def check_compiler() -> Check:
    if shutil.which("gcc") and Path("/usr/lib/x86_64-linux-gnu/libc.a").exists():
        return Check("gcc", True, "present: the container init is compiled from runtime/init.c")
    if shutil.which("gcc"):
        return Check("gcc", True, "present (a static libc was not found where expected)")
    return Check("gcc", False, "missing: install gcc to build the container init")


def check_network_tools(which: Callable[[str], str | None] = shutil.which) -> Check:
    """iptables for NAT and the runtime's chains, ebtables for build containers' egress filter."""
    missing = [tool for tool in ("iptables", "ebtables") if which(tool) is None]
    if missing:
        return Check("iptables", False, f"missing {' and '.join(missing)}: install the Debian package iptables "
                                        "(the daemon does not start without both)")
    return Check("iptables", True, "iptables and ebtables present: NAT, and build containers' egress filter")


def check_root() -> Check:
    if os.geteuid() == 0:
        return Check("root", True, "running as root")
    return Check("root", False, "not root: the daemon needs root for namespaces, mounts and cgroups")


def checks(proc: Path = Path("/proc"), cgroup_root: Path = cgroups.DEFAULT_ROOT) -> list[Check]:
    return [
        check_root(),
        check_cgroups(cgroup_root),
        check_overlayfs(proc),
        check_seccomp(proc),
        check_userns(proc),
        check_pidfd(),
        check_compiler(),
        check_network_tools(),
    ]


def report(
    root: Path, proc: Path = Path("/proc"), cgroup_root: Path = cgroups.DEFAULT_ROOT
) -> tuple[bool, str]:
    """Return whether the host can run containers and the report to print."""
    results = checks(proc, cgroup_root)
    lines = [f"runtime root: {root}"]
    for c in results:
        mark = "ok     " if c.ok else ("MISSING" if c.required else "absent ")
        lines.append(f"{mark} {c.name}: {c.detail}")
    ok = all(c.ok for c in results if c.required)
    lines.append("this host can run containers" if ok else "this host cannot run containers yet")
    return ok, "\n".join(lines)
