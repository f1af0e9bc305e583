"""The runtime daemon: owns the containers of one host.

One long-lived process per host. It spawns the compiled init (`runtime/init.c`) per container
with `posix_spawn`, so no Python interpreter is started per container; it is a child subreaper,
so each container's init (whose setup parent exits at once) becomes its child. It watches every
init through a pidfd, which works the same for the inits it spawned and for those it re-adopts
after a restart (they were reparented elsewhere while it was down): the init writes the app's
exit status to the container's `exit` file itself, so nothing is lost while no daemon runs.

State on disk, under the runtime root (default `$PAAS_DATA_DIR/runtime`):

    daemon.sock                  the API socket (protocol: `runtime.client`)
    bin/paas-init-<hash>         the compiled init
    containers/<id>/state.json   the container record (spec, layers, state, pid, exit code ...)
    containers/<id>/upper, work  the overlayfs upper and work directories
    containers/<id>/rootfs       the mount point of the root (mounted only inside the container)
    containers/<id>/container.log, container.log.1   timestamped stdout/stderr, rotated
    containers/<id>/exit         "<exit code> <signal>" written by the init when the app ends
    containers/<id>/init.err     what the init said if it failed before it could report
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runtime import cgroups
from runtime.build import init_binary
from runtime.client import PROTOCOL_VERSION
from runtime.container import Paths, Plan, PlanError, plan, read_passwd
from runtime.egress import container_resolv_conf
from runtime.spec import ContainerSpec, SpecError

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_STOP_TIMEOUT_S = 10.0
STATES = ("created", "running", "exited", "oom", "failed")


class OpError(Exception):
    """An operation the daemon refuses; `kind` goes to the client as is."""

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


class NetworkHook(Protocol):
    """What the daemon needs from host networking (`runtime.network.HostNetwork`)."""

    def attach(self, container_id: str, pid: int, nat: bool, egress: str = "open") -> Any: ...
    def detach(self, container_id: str) -> None: ...


@dataclass
class Record:
    """A container as the daemon knows it; persisted as state.json."""

    spec: ContainerSpec
    layers: list[str]
    image_config: dict[str, Any]
    state: str = "created"
    pid: int = 0
    pid_start: int = 0
    exit_code: int | None = None
    oom: bool = False
    ip: str | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.spec.id,
            "state": self.state,
            "pid": self.pid or None,
            "exit_code": self.exit_code,
            "oom": self.oom,
            "ip": self.ip,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "spec": self.spec.to_dict(),
        }

    def to_json(self) -> dict[str, Any]:
        d = self.public()
        d.update(layers=self.layers, image_config=self.image_config, pid_start=self.pid_start)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Record:
        return cls(
            spec=ContainerSpec.from_dict(d["spec"], allow_mounts=True),
            layers=list(d["layers"]),
            image_config=dict(d["image_config"]),
            state=str(d["state"]),
            pid=int(d.get("pid") or 0),
            pid_start=int(d.get("pid_start") or 0),
            exit_code=d.get("exit_code"),
            oom=bool(d.get("oom")),
            ip=d.get("ip"),
            error=d.get("error"),
            created_at=float(d["created_at"]),
            started_at=d.get("started_at"),
            finished_at=d.get("finished_at"),
        )


def process_start_time(pid: int, proc: Path = Path("/proc")) -> int:
    """Return the start time of `pid` in clock ticks since boot (0 if it is gone).

    Together with the pid it names a process unambiguously across pid reuse."""
    try:
        raw = (proc / str(pid) / "stat").read_text()
    except OSError:
        return 0
    # The command name (field 2) may contain spaces and parentheses; fields follow the last ')'.
    return int(raw.rsplit(")", 1)[1].split()[19])


def set_child_subreaper() -> None:
    """Make this process adopt orphaned descendants (prctl(2) PR_SET_CHILD_SUBREAPER)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


class Runtime:
    """The containers of this host and the operations on them (the daemon's core)."""

    def __init__(
        self,
        root: Path,
        *,
        cgroup_root: Path = cgroups.DEFAULT_ROOT,
        proc: Path = Path("/proc"),
        network: NetworkHook | None = None,
        log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
    ) -> None:
        self.root = root
        self.containers_dir = root / "containers"
        self.cgroup_root = cgroup_root
        self.proc = proc
        self.network = network
        self.log_max_bytes = log_max_bytes
        self.records: dict[str, Record] = {}
        # pyroute2 runs an asyncio loop of its own inside its blocking calls: give it a thread
        # with a loop of its own so it never touches the daemon's.
        self._net_pool = ThreadPoolExecutor(1, "network", initializer=_own_event_loop)
        self._io_pool = ThreadPoolExecutor(2, "release")
        self._releasing: dict[str, Future[None]] = {}
        self._detaching: dict[str, Future[None]] = {}
        self._exited: dict[str, asyncio.Event] = {}
        self._pidfds: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._stdio_fds: dict[str, int] = {}
        self.containers_dir.mkdir(parents=True, exist_ok=True)
        self.init = init_binary(root)
        self.cgroup_version = cgroups.detect_version(cgroup_root)

    # -- bookkeeping ----------------------------------------------------------------------------

    def paths(self, cid: str) -> Paths:
        return Paths(self.containers_dir / cid)

    def cgroup(self, cid: str) -> cgroups.Cgroup:
        return cgroups.for_container(cid, self.cgroup_root, self.cgroup_version)

    def _save(self, rec: Record) -> None:
        path = self.paths(rec.spec.id).state
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec.to_json()))
        os.replace(tmp, path)

    def _get(self, cid: object) -> Record:
        if not isinstance(cid, str) or cid not in self.records:
            raise OpError(f"no such container: {cid}", "not_found")
        return self.records[cid]

    def _lock(self, cid: str) -> asyncio.Lock:
        return self._locks.setdefault(cid, asyncio.Lock())

    def _emit(self, rec: Record, state: str) -> None:
        event = {"id": rec.spec.id, "state": state, "exit_code": rec.exit_code, "time": time.time()}
        for q in self._subscribers:
            q.put_nowait(event)

    def load(self) -> None:
        """Read the records on disk and re-adopt the containers that still run."""
        for path in sorted(self.containers_dir.glob("*/state.json")):
            try:
                rec = Record.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, SpecError):
                continue
            self.records[rec.spec.id] = rec
            self._exited[rec.spec.id] = asyncio.Event()
            if rec.state == "running":
                if rec.pid and process_start_time(rec.pid, self.proc) == rec.pid_start:
                    try:
                        self._watch(rec)
                        continue
                    except ProcessLookupError:
                        pass
                self._finish(rec, None)
            else:
                if rec.state == "created":
                    # A daemon that died in the middle of a start may have left an init behind
                    # that no record points to: end it with its cgroup.
                    self._release(rec)
                    if self.network is not None and spec_uses_network(rec.spec):
                        self._net_pool.submit(_quietly, self.network.detach, rec.spec.id)
                self._exited[rec.spec.id].set()

    # -- operations -----------------------------------------------------------------------------

    async def create(self, spec_d: object, layers: object, image_config: object) -> Record:
        try:
            # The socket is root's only (mode 0600); the agent refuses mounts in what the
            # control plane sends before it gets here.
            spec = ContainerSpec.from_dict(spec_d, allow_mounts=True)
        except SpecError as exc:
            raise OpError(f"invalid spec: {exc}") from None
        for mount in spec.mounts:
            source = Path(mount.source)
            # A real directory, reached without symlinks: what is checked is what gets bound.
            if not source.is_dir() or os.path.realpath(source) != mount.source:
                raise OpError(f"invalid spec: mounts: the source {mount.source!r} is not a directory "
                              "(without symlinks) on this host")
        if not isinstance(layers, list) or not layers or not all(isinstance(x, str) for x in layers):
            raise OpError("layers: must be a non-empty list of directory paths")
        for layer in layers:
            if not layer.startswith("/") or ":" in layer or "," in layer or not Path(layer).is_dir():
                raise OpError(f"layers: {layer!r} is not an absolute path to a directory")
        if not isinstance(image_config, dict):
            raise OpError("image_config: must be an object")
        try:
            plan(spec, image_config, read_passwd([Path(x) for x in layers]))
        except PlanError as exc:
            raise OpError(str(exc)) from None
        if spec.id in self.records:
            raise OpError(f"container {spec.id} already exists", "conflict")
        paths = self.paths(spec.id)
        for d in (paths.upper, paths.work, paths.rootfs):
            d.mkdir(parents=True, exist_ok=True)
        _write_etc(paths.upper / "etc", spec.id)
        rec = Record(spec=spec, layers=layers, image_config=image_config)
        self.records[spec.id] = rec
        self._exited[spec.id] = asyncio.Event()
        self._save(rec)
        self._emit(rec, "created")
        return rec

    async def start(self, cid: object, stdio: str = "log", size: tuple[int, int] = (24, 80)) -> Record:
        """Start a created container; `stdio` "tty" or "stdin" attaches the app's stdio (the
        client's end: `take_stdio_fd`, see `runtime.sessions`), `size` is the pty's rows, cols."""
        rec = self._get(cid)
        async with self._lock(rec.spec.id):
            if rec.state != "created":
                raise OpError(f"container {rec.spec.id} is {rec.state}; only a created container starts", "conflict")
            try:
                await self._start(rec, stdio, size)
            except OpError as exc:
                rec.state, rec.error, rec.finished_at = "failed", str(exc), time.time()
                self._save(rec)
                self._exited[rec.spec.id].set()
                self._emit(rec, "failed")
                raise
            return rec

    def take_stdio_fd(self, cid: str) -> int | None:
        """Return (once) the client's end of an attached container's stdio."""
        return self._stdio_fds.pop(cid, None)

    async def _start(self, rec: Record, stdio: str = "log", size: tuple[int, int] = (24, 80)) -> None:
        spec, paths = rec.spec, self.paths(rec.spec.id)
        layers = [Path(x) for x in rec.layers]
        try:
            p: Plan = plan(spec, rec.image_config, read_passwd(layers))
        except PlanError as exc:
            raise OpError(str(exc)) from None
        cg = self.cgroup(spec.id)
        limits = cgroups.Limits(spec.memory_mb * 1024 * 1024, spec.cpu_shares, spec.cpu_quota, spec.pids_limit)
        try:
            cg.create(limits)
        except cgroups.CgroupError as exc:
            raise OpError(f"cannot set up the container's cgroup: {exc}", "internal") from None
        paths.exit.unlink(missing_ok=True)
        attach = self.network is not None and spec.network.mode == "bridge"
        fast = _fast_network(self.network) if attach else None
        loop = asyncio.get_running_loop()
        prepared: asyncio.Future[tuple[str, str, Callable[[], None] | None]] | None = None
        nat_done: asyncio.Future[Any] | None = None
        net_args: list[str] = []
        if fast is not None:
            # The setup process plugs the container in itself (one netlink message, a few
            # ioctls) with the address the allocator gives meanwhile; only the NAT rule needs
            # iptables, and the app waits for it.
            prepared = loop.run_in_executor(
                self._net_pool, fast.prepare, spec.id, spec.network.nat, spec.network.egress
            )
            net_args = ["--net-bridge", fast.net.bridge, "--net-veth", fast.veth_name(spec.id)]
            attach = False
        wait_for_go = attach or (fast is not None and spec.network.nat)
        mount_args = [
            a for m in spec.mounts
            for a in ("--mount", f"{'ro' if m.readonly else 'rw'}:{m.source}:{m.target}")
        ]
        if stdio != "log":  # the app's stdio attached: the init sends its end with "ok"
            net_args += ["--stdio", stdio, "--rows", str(size[0]), "--cols", str(size[1])]
        args = p.init_args(
            self.init, paths, layers, cg.procs_files(), self.log_max_bytes, wait_for_go,
            [*net_args, *mount_args],
        )
        try:
            outer, ours = self._spawn(args, p.env, paths.init_err)
        except OSError as exc:
            if prepared is not None:
                with contextlib.suppress(Exception):
                    await prepared
                rec.ip = ""  # let the network undo what the allocator did
            self._release(rec)
            raise OpError(f"cannot start the container's init: {exc}", "internal") from None
        ours.setblocking(False)
        lines = _Lines(ours, with_fds=stdio != "log")
        try:
            if prepared is not None:
                try:
                    net_line, rec.ip, nat = await prepared
                except Exception as exc:
                    raise OpError(f"cannot attach the container to the network: {exc}", "internal") from None
                await loop.sock_sendall(ours, net_line.encode())
                if nat is not None:
                    nat_done = loop.run_in_executor(self._net_pool, nat)
            first = await lines.readline()
            if not first.startswith("pid "):
                raise OpError(self._init_failure(first, paths), "invalid")
            rec.pid = int(first.split()[1])
            rec.pid_start = process_start_time(rec.pid, self.proc)
            if attach and self.network is not None:
                try:
                    # A hook that knows no egress policy fails a build container rather than
                    # leave it unfiltered; other containers do not pass one.
                    extra = {"egress": spec.network.egress} if spec.network.egress != "open" else {}
                    att = await asyncio.get_running_loop().run_in_executor(
                        self._net_pool,
                        functools.partial(self.network.attach, spec.id, rec.pid, spec.network.nat, **extra),
                    )
                    rec.ip = str(getattr(att, "ip", "")) or None
                except Exception as exc:
                    raise OpError(f"cannot attach the container to the network: {exc}", "internal") from None
                await asyncio.get_running_loop().sock_sendall(ours, b"g")
            if nat_done is not None:
                try:
                    await nat_done
                except Exception as exc:
                    raise OpError(f"cannot set up outbound NAT: {exc}", "internal") from None
                await asyncio.get_running_loop().sock_sendall(ours, b"g")
            second = await lines.readline()
            # The setup process exits right after reporting the pid; reap it now rather than
            # wait for it while the init was still building the root.
            os.waitpid(outer, 0)
            outer = 0
            if not second.startswith("ok "):
                raise OpError(self._init_failure(second, paths), "invalid")
            if lines.fds:
                self._stdio_fds[rec.spec.id] = lines.fds.pop(0)
        except BaseException:
            # Closing our end ends a setup process or init still waiting for us (they read EOF).
            with contextlib.suppress(OSError):
                lines.buf += ours.recv(4096)
            ours.close()
            if outer:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(outer, 0)
            if not rec.pid and lines.buf.startswith(b"pid "):
                rec.pid = int(lines.buf.split()[1])
            if prepared is not None and rec.ip is None:
                rec.ip = ""  # whatever the allocator did, let the network undo it
            if rec.pid:
                with contextlib.suppress(ProcessLookupError, ChildProcessError):
                    os.kill(rec.pid, signal.SIGKILL)
                    os.waitpid(rec.pid, 0)
            self._release(rec)
            rec.pid = 0
            raise
        finally:
            ours.close()
            for fd in lines.fds:
                os.close(fd)
        rec.state, rec.started_at = "running", time.time()
        self._save(rec)
        self._watch(rec)
        self._emit(rec, "running")

    def _spawn(self, args: list[str], env: Mapping[str, str], err: Path) -> tuple[int, socket.socket]:
        """Start the init's setup process; return its pid and our end of its sync socket."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.posix_spawn(
                str(self.init),
                args,
                dict(env),
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3),
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 2, str(err), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                ],
                setsid=True,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        return pid, ours

    def _init_failure(self, line: str, paths: Paths) -> str:
        if line.startswith("error "):
            return line[len("error "):].strip()
        with contextlib.suppress(OSError):
            said = paths.init_err.read_text().strip()
            if said:
                return said.removeprefix("paas-init: ")
        return "the container's init ended before it reported"

    def _watch(self, rec: Record) -> None:
        """Watch the init through a pidfd: readable once it has exited (pidfd_open(2))."""
        fd = os.pidfd_open(rec.pid)
        self._pidfds[rec.spec.id] = fd
        asyncio.get_running_loop().add_reader(fd, self._on_init_exit, rec.spec.id)

    def _on_init_exit(self, cid: str) -> None:
        rec = self.records[cid]
        fd = self._pidfds.pop(cid)
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)
        status: int | None = None
        with contextlib.suppress(ChildProcessError):
            pid, st = os.waitpid(rec.pid, os.WNOHANG)
            status = st if pid else None
        self._finish(rec, status)

    def _finish(self, rec: Record, status: int | None) -> None:
        """Record how a container ended: the app's status from the init, else the init's."""
        paths = self.paths(rec.spec.id)
        code: int | None = None
        with contextlib.suppress(OSError, ValueError, IndexError):
            code = int(paths.exit.read_text().split()[0])
        if code is None and status is not None:
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
        if code is None:
            code = 128 + signal.SIGKILL  # the init is gone without a word: it was killed
        cg = self.cgroup(rec.spec.id)
        with contextlib.suppress(cgroups.CgroupError, OSError):
            rec.oom = cg.oom_kills() > 0
        rec.exit_code, rec.finished_at = code, time.time()
        rec.state = "oom" if rec.oom else "exited"
        self._save(rec)
        self._exited[rec.spec.id].set()
        self._emit(rec, rec.state)
        # The cgroup may hold exiting tasks for a moment (rmdir says EBUSY): release it off
        # the event loop.
        self._releasing[rec.spec.id] = self._io_pool.submit(self._release, rec)

    def _release(self, rec: Record) -> None:
        """Give back what a container held on the host: its network and its cgroup."""
        if self.network is not None and spec_uses_network(rec.spec) and rec.ip is not None:
            rec.ip = None
            self._detaching[rec.spec.id] = self._net_pool.submit(
                _quietly, self.network.detach, rec.spec.id
            )
        cg = self.cgroup(rec.spec.id)
        with contextlib.suppress(cgroups.CgroupError, OSError):
            cgroups.kill_all(cg)
        with contextlib.suppress(cgroups.CgroupError, OSError):
            cg.remove()

    def _signal(self, rec: Record, sig: int) -> None:
        fd = self._pidfds.get(rec.spec.id)
        if fd is None:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, sig)

    async def stop(self, cid: object, timeout_s: object = DEFAULT_STOP_TIMEOUT_S) -> Record:
        rec = self._get(cid)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 <= timeout_s <= 3600:
            raise OpError("timeout_s: must be a number of seconds between 0 and 3600")
        if rec.state != "running":
            return rec
        self._signal(rec, signal.SIGTERM)
        try:
            await asyncio.wait_for(self._exited[rec.spec.id].wait(), timeout_s)
        except TimeoutError:
            self._signal(rec, signal.SIGKILL)
            await self._exited[rec.spec.id].wait()
        return rec

    async def wait(self, cid: object) -> Record:
        """Return the container once it is no longer running."""
        rec = self._get(cid)
        await self._exited[rec.spec.id].wait()
        return rec

    async def kill(self, cid: object, sig: object = "SIGKILL") -> Record:
        rec = self._get(cid)
        try:
            signum = signal.Signals[str(sig)] if not isinstance(sig, int) else signal.Signals(sig)
        except (KeyError, ValueError):
            raise OpError(f"signal: {sig!r} is not a signal name like SIGTERM") from None
        if rec.state != "running":
            raise OpError(f"container {rec.spec.id} is not running", "conflict")
        self._signal(rec, signum)
        return rec

    async def remove(self, cid: object, force: object = False) -> dict[str, Any]:
        rec = self._get(cid)
        if rec.state == "running":
            if force is not True:
                raise OpError(f"container {rec.spec.id} is running; stop it first or force", "conflict")
            await self.stop(rec.spec.id, 0)
        # Once remove answers, the container holds nothing on the host any more.
        for waiting in (self._releasing, self._detaching):
            pending = waiting.pop(rec.spec.id, None)
            if pending is not None:
                await asyncio.wrap_future(pending)
        await asyncio.get_running_loop().run_in_executor(
            self._io_pool, shutil.rmtree, self.paths(rec.spec.id).dir, True
        )
        del self.records[rec.spec.id]
        self._exited.pop(rec.spec.id, None)
        self._locks.pop(rec.spec.id, None)
        return {"removed": rec.spec.id}

    async def exec(self, cid: object, command: object, env: object, timeout_s: object) -> dict[str, Any]:
        rec = self._get(cid)
        if rec.state != "running":
            raise OpError(f"container {rec.spec.id} is not running", "conflict")
        if not isinstance(command, list) or not command or not all(isinstance(a, str) and "\0" not in a for a in command):
            raise OpError("command: must be a non-empty list of strings")
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise OpError("env: must be an object of strings")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s <= 3600:
            raise OpError("timeout_s: must be a number of seconds between 0 and 3600")
        p = plan(rec.spec, rec.image_config, read_passwd([Path(x) for x in rec.layers]))
        args = [
            str(self.init), "exec", "--pid", str(rec.pid), "--uid", str(p.uid), "--gid", str(p.gid),
            "--cwd", p.cwd,
        ]
        for procs in self.cgroup(rec.spec.id).procs_files():
            args += ["--cgroup", str(procs)]
        full_env = {**p.env, **{k: v for k, v in env.items() if "=" not in k and "\0" not in v}}

        def run() -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [*args, "--", *command], env=full_env, capture_output=True, stdin=subprocess.DEVNULL,
                timeout=float(timeout_s), check=False,
            )

        try:
            done = await asyncio.get_running_loop().run_in_executor(None, run)
        except subprocess.TimeoutExpired:
            raise OpError(f"the command ran longer than {timeout_s} s and was killed", "internal") from None
        return {
            "exit_code": done.returncode,
            "stdout": done.stdout.decode(errors="replace"),
            "stderr": done.stderr.decode(errors="replace").replace("paas-init: ", ""),
        }

    def stats(self, cid: object) -> dict[str, Any]:
        rec = self._get(cid)
        if rec.state != "running":
            raise OpError(f"container {rec.spec.id} is not running", "conflict")
        try:
            u = self.cgroup(rec.spec.id).usage()
        except cgroups.CgroupError as exc:
            raise OpError(str(exc), "internal") from None
        return {
            "memory_bytes": u.memory_bytes,
            "memory_limit_bytes": u.memory_limit_bytes,
            "cpu_ns": u.cpu_ns,
            "pids": u.pids,
            "oom_kills": u.oom_kills,
        }

    async def logs(self, cid: object, tail: object, follow: object) -> AsyncGenerator[dict[str, Any], None]:
        rec = self._get(cid)
        if isinstance(tail, bool) or not isinstance(tail, int) or tail < 0:
            raise OpError("tail: must be a whole number of lines (0 or more)")
        paths = self.paths(rec.spec.id)
        lines: list[bytes] = []
        with contextlib.suppress(FileNotFoundError):
            lines += (paths.dir / "container.log.1").read_bytes().splitlines()
        pos, ino, data = 0, 0, b""
        with contextlib.suppress(FileNotFoundError), open(paths.log, "rb") as f:
            data = f.read()
            # Follow from exactly what was read, in the file that was read.
            pos, ino = len(data), os.fstat(f.fileno()).st_ino
        whole, _, buf = data.rpartition(b"\n")
        lines += whole.splitlines() if whole or data.startswith(b"\n") else []
        if follow is not True and buf:
            lines.append(buf)
        for raw in lines[-tail:] if tail else []:
            yield _log_item(raw)
        if follow is not True:
            return
        if tail == 0:
            buf = b""
        while True:
            size, cur = _stat_log(paths.log)
            if cur != ino or size < pos:  # rotated: read the new file from the start
                pos, ino = 0, cur
            if size > pos:
                with open(paths.log, "rb") as f:
                    f.seek(pos)
                    chunk = f.read(size - pos)
                pos += len(chunk)
                buf += chunk
                *complete, buf = buf.split(b"\n")
                for raw in complete:
                    yield _log_item(raw)
            elif rec.state != "running" or rec.spec.id not in self.records:
                return
            else:
                await asyncio.sleep(0.1)

    async def events(self) -> AsyncGenerator[dict[str, Any], None]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._subscribers.discard(q)

    def close(self) -> None:
        """Stop watching (containers keep running; the next daemon re-adopts them)."""
        loop = asyncio.get_running_loop()
        for fd in self._pidfds.values():
            loop.remove_reader(fd)
            os.close(fd)
        self._pidfds.clear()


class _FastNetwork:
    """Plug containers into a `HostNetwork` from the init's setup process instead of pyroute2.

    `HostNetwork.reserve` gives the address and records the attachment, so `detach` undoes it
    like one of `attach`'s; `nat_enable` adds the NAT rule.
    """

    def __init__(self, net: Any) -> None:
        self.net = net

    def veth_name(self, cid: str) -> str:
        return "p" + hashlib.sha256(f"{self.net.bridge}/{cid}".encode()).hexdigest()[:12]

    def prepare(self, cid: str, nat: bool, egress: str = "open") -> tuple[str, str, Callable[[], None] | None]:
        """Allocate the address and record the attachment; return the init's `net` line.

        A build container's egress policy is in place before the line goes out.
        """
        net = self.net
        att = net.reserve(cid, self.veth_name(cid), nat, egress)
        line = f"net {att.ip}/{att.prefixlen} {att.gateway}\n"

        def add_nat() -> None:
            net.nat_enable(att)

        return line, str(att.ip), add_nat if nat else None


def _fast_network(network: object) -> _FastNetwork | None:
    """Use the fast path for the host's own `HostNetwork` (not one acting in another netns)."""
    try:
        from runtime.network import HostNetwork
    except ImportError:
        return None
    if isinstance(network, HostNetwork) and network.netns is None:
        return _FastNetwork(network)
    return None


def _quietly(fn: Callable[[str], None], arg: str) -> None:
    with contextlib.suppress(Exception):
        fn(arg)


def _own_event_loop() -> None:
    asyncio.set_event_loop(asyncio.new_event_loop())


def spec_uses_network(spec: ContainerSpec) -> bool:
    return spec.network.mode == "bridge"


def _stat_log(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return 0, 0
    return st.st_size, st.st_ino


def _log_item(raw: bytes) -> dict[str, Any]:
    parts = raw.decode(errors="replace").split(" ", 2)
    if len(parts) < 3:
        parts += [""] * (3 - len(parts))
    return {"time": parts[0], "stream": parts[1], "line": parts[2]}


def _write_etc(etc: Path, cid: str) -> None:
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hostname").write_text(f"{cid[:63]}\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{cid[:63]}\n")
    # The host's resolvers, minus loopback ones: the container's loopback is its own. A build
    # container's egress policy lets it reach these (runtime.egress.resolvers).
    try:
        text = Path("/etc/resolv.conf").read_text()
    except OSError:
        text = ""
    (etc / "resolv.conf").write_text(container_resolv_conf(text))


def _set_once(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Lines:
    """Read lines from a non-blocking socket on the event loop, keeping what comes after one."""

    def __init__(self, sock: socket.socket, with_fds: bool = False) -> None:
        self.sock = sock
        self.buf = b""
        self.with_fds = with_fds  # also receive descriptors sent along (SCM_RIGHTS) into `fds`
        self.fds: list[int] = []

    async def readline(self, limit: int = 4096) -> str:
        loop = asyncio.get_running_loop()
        while b"\n" not in self.buf and len(self.buf) < limit:
            chunk = await (self._recv_fds(limit) if self.with_fds else loop.sock_recv(self.sock, limit))
            if not chunk:
                break
            self.buf += chunk
        line, sep, self.buf = self.buf.partition(b"\n")
        return (line + sep).decode(errors="replace")

    async def _recv_fds(self, limit: int) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, limit, 4, socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_reader(self.sock.fileno(), _set_once, ready)
                try:
                    await ready
                finally:
                    loop.remove_reader(self.sock.fileno())
                continue
            self.fds += fds
            return data


# -- the socket server -------------------------------------------------------------------------


class Server:
    """Serve the protocol of `runtime.client` on a Unix socket."""

    def __init__(self, runtime: Runtime, socket_path: Path) -> None:
        self.runtime = runtime
        self.socket_path = socket_path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        old = os.umask(0o077)
        try:
            self._server = await asyncio.start_unix_server(
                self._handle, str(self.socket_path), limit=64 * 1024 * 1024
            )
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await reader.readline()
            if not raw:
                return
            try:
                req = json.loads(raw)
                if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                    raise ValueError
            except ValueError:
                await _reply(writer, {"ok": False, "error": "a request is one JSON object with an 'op'", "kind": "invalid"})
                return
            op = req["op"]
            try:
                if op in ("logs", "events"):
                    await self._stream(op, req, reader, writer)
                    return
                if op == "exec_session" or (op == "run" and req.get("attach") is not None):
                    from runtime import sessions

                    session = sessions.serve_exec if op == "exec_session" else sessions.serve_run
                    await session(self.runtime, req, reader, writer)
                    return
                result = await self._dispatch(op, req)
                await _reply(writer, {"ok": True, "result": result})
            except OpError as exc:
                await _reply(writer, {"ok": False, "error": str(exc), "kind": exc.kind})
            except Exception as exc:
                await _reply(writer, {"ok": False, "error": f"internal error: {exc}", "kind": "internal"})
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the daemon is shutting down; the client sees the connection close
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _dispatch(self, op: str, req: dict[str, Any]) -> Any:
        rt = self.runtime
        handlers: dict[str, Callable[[], Any]] = {
            "ping": lambda: {"version": PROTOCOL_VERSION, "pid": os.getpid()},
            "create": lambda: rt.create(req.get("spec"), req.get("layers"), req.get("image_config", {})),
            "start": lambda: rt.start(req.get("id")),
            "run": lambda: self._run(req),
            "stop": lambda: rt.stop(req.get("id"), req.get("timeout_s", DEFAULT_STOP_TIMEOUT_S)),
            "kill": lambda: rt.kill(req.get("id"), req.get("signal", "SIGKILL")),
            "remove": lambda: rt.remove(req.get("id"), req.get("force", False)),
            "exec": lambda: rt.exec(req.get("id"), req.get("command"), req.get("env", {}), req.get("timeout_s", 60)),
            "list": lambda: [r.public() for r in rt.records.values()],
            "inspect": lambda: rt._get(req.get("id")).public(),
            "stats": lambda: rt.stats(req.get("id")),
        }
        if op not in handlers:
            raise OpError(f"unknown operation {op!r}")
        result = handlers[op]()
        if asyncio.iscoroutine(result):
            result = await result
        return result.public() if isinstance(result, Record) else result

    async def _run(self, req: dict[str, Any]) -> Record:
        rec = await self.runtime.create(req.get("spec"), req.get("layers"), req.get("image_config", {}))
        rec = await self.runtime.start(rec.spec.id)
        if req.get("wait") is True:
            await self.runtime.wait(rec.spec.id)
        return rec

    async def _stream(
        self, op: str, req: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        rt = self.runtime
        items = rt.logs(req.get("id"), req.get("tail", 100), req.get("follow", False)) if op == "logs" else rt.events()
        closed = asyncio.ensure_future(reader.read())  # EOF: the client went away
        try:
            it = aiter(items)
            while True:
                nxt = asyncio.ensure_future(anext(it))
                done, _ = await asyncio.wait({nxt, closed}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    return
                try:
                    item = nxt.result()
                except StopAsyncIteration:
                    break
                await _reply(writer, {"ok": True, "item": item})
            await _reply(writer, {"ok": True, "end": True})
        finally:
            closed.cancel()
            with contextlib.suppress(Exception):
                await items.aclose()


async def _reply(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj).encode() + b"\n")
    await writer.drain()


async def serve(runtime: Runtime, socket_path: Path, ready: Callable[[], None] | None = None) -> None:
    """Run the daemon until SIGTERM or SIGINT; containers keep running after it ends."""
    runtime.load()
    server = Server(runtime, socket_path)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    me = os.getpid()

    # Not loop.add_signal_handler: its wakeup fd is inherited by processes forked from this one
    # (pyroute2 forks to enter network namespaces), and a signal such a child gets would reach
    # this loop as if the daemon had got it. A plain handler runs only where the signal lands.
    def on_signal(signum: int, frame: object) -> None:
        if os.getpid() == me:
            loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if ready is not None:
        ready()
    await stop.wait()
    await server.close()
    runtime.close()
    socket_path.unlink(missing_ok=True)
