"""Per-container cgroups on cgroup v2 (unified) and cgroup v1 (one hierarchy per controller).

Both writers take the cgroup mount root as an argument (default `/sys/fs/cgroup`), so tests can
point the v2 writer at a temporary directory laid out like cgroup2 and check what it writes.
Every container gets `<root>/paas/<id>` (v2) or `<root>/<controller>/paas/<id>` (v1).

Limits: memory with no swap beyond it (v2 `memory.swap.max = 0`; v1 `memory.memsw` equal to the
memory limit where the kernel accounts swap), CPU weight from shares, an optional CPU quota in
CPUs per 100 ms period, and a pids limit. OOM kills are read from `memory.events` (v2) or
`memory.oom_control` (v1).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

DEFAULT_ROOT = Path("/sys/fs/cgroup")
PARENT = "paas"
CPU_PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")


class CgroupError(RuntimeError):
    """A cgroup could not be made, limited, read or removed."""


@dataclass(frozen=True)
class Limits:
    """The resources a container may use."""

    memory_bytes: int
    cpu_shares: int = 1024
    cpu_quota: float | None = None  # CPUs, e.g. 0.5; None for no quota
    pids: int = 512


@dataclass(frozen=True)
class Usage:
    """What a container uses now (memory) and has used so far (CPU)."""

    memory_bytes: int
    memory_limit_bytes: int
    cpu_ns: int
    pids: int
    oom_kills: int


class Cgroup(Protocol):
    """One container's cgroup, whichever version backs it."""

    version: int

    def create(self, limits: Limits) -> None: ...
    def procs_files(self) -> list[Path]: ...
    def usage(self) -> Usage: ...
    def oom_kills(self) -> int: ...
    def pids(self) -> list[int]: ...
    def remove(self) -> None: ...


def detect_version(root: Path = DEFAULT_ROOT) -> int:
    """Return 2 when `root` is a unified hierarchy, 1 when it holds v1 controller mounts."""
    if (root / "cgroup.controllers").exists():
        return 2
    if (root / "memory" / "memory.limit_in_bytes").exists():
        return 1
    raise CgroupError(f"no cgroup hierarchy found at {root}")


def for_container(container_id: str, root: Path = DEFAULT_ROOT, version: int | None = None) -> Cgroup:
    """Return the cgroup of a container on the hierarchy found at `root`."""
    v = version or detect_version(root)
    return CgroupV2(root, container_id) if v == 2 else CgroupV1(root, container_id)


def cpu_weight(shares: int) -> int:
    """Map v1 `cpu.shares` (2..262144) onto v2 `cpu.weight` (1..10000), as runc and crun do."""
    return 1 + ((shares - 2) * 9999) // 262142


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise CgroupError(f"cannot write {value.strip()!r} to {path}: {exc.strerror}") from None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise CgroupError(f"cannot read {path}: {exc.strerror}") from None


def _keyed(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in _read(path).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _rmdir(path: Path) -> None:
    """Remove a cgroup directory; retry briefly while the kernel finishes tearing tasks down."""
    for _ in range(100):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise CgroupError(f"cannot remove {path}: {exc.strerror}") from None
            time.sleep(0.01)
    raise CgroupError(f"cannot remove {path}: processes are still in it")


class CgroupV2:
    """A container's cgroup on a unified (v2) hierarchy."""

    version = 2

    def __init__(self, root: Path, container_id: str) -> None:
        self.root = root
        self.path = root / PARENT / container_id

    def create(self, limits: Limits) -> None:
        parent = self.root / PARENT
        if not parent.exists():
            parent.mkdir(exist_ok=True)
        # Controllers must be enabled top-down before a child can use them (cgroup-v2.rst).
        for where in (self.root, parent):
            enabled = _read(where / "cgroup.subtree_control").split()
            missing = [c for c in ("cpu", "memory", "pids") if c not in enabled]
            if missing:
                _write(where / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
        try:
            self.path.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            raise CgroupError(f"cannot create {self.path}: {exc.strerror}") from None
        _write(self.path / "memory.max", f"{limits.memory_bytes}\n")
        if (self.path / "memory.swap.max").exists():
            _write(self.path / "memory.swap.max", "0\n")
        _write(self.path / "cpu.weight", f"{cpu_weight(limits.cpu_shares)}\n")
        quota = "max" if limits.cpu_quota is None else str(int(limits.cpu_quota * CPU_PERIOD_US))
        _write(self.path / "cpu.max", f"{quota} {CPU_PERIOD_US}\n")
        _write(self.path / "pids.max", f"{limits.pids}\n")

    def procs_files(self) -> list[Path]:
        return [self.path / "cgroup.procs"]

    def usage(self) -> Usage:
        limit = _read(self.path / "memory.max").strip()
        return Usage(
            memory_bytes=int(_read(self.path / "memory.current")),
            memory_limit_bytes=-1 if limit == "max" else int(limit),
            cpu_ns=_keyed(self.path / "cpu.stat").get("usage_usec", 0) * 1000,
            pids=int(_read(self.path / "pids.current")),
            oom_kills=self.oom_kills(),
        )

    def oom_kills(self) -> int:
        return _keyed(self.path / "memory.events").get("oom_kill", 0)

    def pids(self) -> list[int]:
        return [int(p) for p in _read(self.path / "cgroup.procs").split()]

    def remove(self) -> None:
        if self.path.exists():
            _rmdir(self.path)


class CgroupV1:
    """A container's cgroups on v1 hierarchies: memory, cpu, cpuacct and pids."""

    version = 1

    def __init__(self, root: Path, container_id: str) -> None:
        self.root = root
        self.id = container_id

    def dir(self, controller: str) -> Path:
        return self.root / controller / PARENT / self.id

    def create(self, limits: Limits) -> None:
        for c in V1_CONTROLLERS:
            d = self.dir(c)
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CgroupError(f"cannot create {d}: {exc.strerror}") from None
        mem = self.dir("memory")
        _write(mem / "memory.limit_in_bytes", f"{limits.memory_bytes}\n")
        # memsw exists only when the kernel accounts swap; it must be >= the memory limit.
        if (mem / "memory.memsw.limit_in_bytes").exists():
            _write(mem / "memory.memsw.limit_in_bytes", f"{limits.memory_bytes}\n")
        with contextlib.suppress(CgroupError):
            _write(mem / "memory.swappiness", "0\n")
        cpu = self.dir("cpu")
        _write(cpu / "cpu.shares", f"{limits.cpu_shares}\n")
        _write(cpu / "cpu.cfs_period_us", f"{CPU_PERIOD_US}\n")
        quota = -1 if limits.cpu_quota is None else int(limits.cpu_quota * CPU_PERIOD_US)
        _write(cpu / "cpu.cfs_quota_us", f"{quota}\n")
        _write(self.dir("pids") / "pids.max", f"{limits.pids}\n")

    def procs_files(self) -> list[Path]:
        return [self.dir(c) / "cgroup.procs" for c in V1_CONTROLLERS]

    def usage(self) -> Usage:
        mem = self.dir("memory")
        return Usage(
            memory_bytes=int(_read(mem / "memory.usage_in_bytes")),
            memory_limit_bytes=int(_read(mem / "memory.limit_in_bytes")),
            cpu_ns=int(_read(self.dir("cpuacct") / "cpuacct.usage")),
            pids=int(_read(self.dir("pids") / "pids.current")),
            oom_kills=self.oom_kills(),
        )

    def oom_kills(self) -> int:
        path = self.dir("memory") / "memory.oom_control"
        if not path.exists():
            return 0
        return _keyed(path).get("oom_kill", 0)

    def pids(self) -> list[int]:
        return [int(p) for p in _read(self.dir("pids") / "cgroup.procs").split()]

    def remove(self) -> None:
        for c in V1_CONTROLLERS:
            d = self.dir(c)
            if d.exists():
                _rmdir(d)


def kill_all(cgroup: Cgroup, sig: int = 9) -> None:
    """Send `sig` to every process left in the cgroup (a container whose init is gone)."""
    for pid in cgroup.pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
