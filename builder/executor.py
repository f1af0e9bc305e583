"""Run one buildpack command: the seam between the build runner and where builds execute.

`Executor` is the interface the runner needs. Two implementations:

- `RuntimeExecutor` runs every step of a build inside one isolated build container on the
  host's runtime daemon, on the app's stack image: its own namespaces, an unprivileged user,
  memory, CPU and pids limits from its cgroup, outbound NAT for the package registries under
  the runtime's build egress policy (public addresses on TCP 80/443 and DNS, never the
  platform's own services or private networks: `runtime.egress`), and only the build's own
  directories bound in (see `CONTAINER_DIRS`). This is what the platform
  uses when a runtime daemon answers (as root, with `make up`).
- `HostExecutor` runs the command as a plain child process on this host: its own session and
  process group, exactly the environment the runner passes (nothing is inherited), and resource
  limits set with `setrlimit` in the child before exec. It gives no isolation from the host: the
  buildpack runs with the builder's user and sees the host's file system. It is for
  development without root, and for buildpack authors (`python -m builder`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from builder.errors import BuildError
from runtime.client import DaemonClient, DaemonError
from runtime.container import DEFAULT_GID, DEFAULT_UID, image_settings

OnLine = Callable[[str], None]
_MAX_LINE = 8192


class StepTimeout(BuildError):
    """The command ran past its time limit; its whole process group was killed."""

    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        super().__init__(f"{argv[0]} did not finish within {timeout:.0f} s and was stopped")
        self.timeout = timeout


@dataclass(frozen=True)
class BuildDirs:
    """The directories of one build on the host, as the runner lays them out."""

    work: Path
    app: Path
    cache: Path
    env: Path
    buildpacks: Path
    home: Path
    tmp: Path


class Executor(Protocol):
    """Where build steps run.

    `owner` is the uid:gid the steps run as, or None for the builder's own user; the runner
    hands that owner the directories a step may write (the app, its cache, HOME, TMPDIR).
    The runner calls `prepare` once before the first step and `close` once after the last,
    whatever happened; `visible_path` says how a step sees a directory of `BuildDirs`.
    `cancel` may be called from another thread: it stops the running step and any later one.
    """

    owner: tuple[int, int] | None

    def prepare(self, dirs: BuildDirs, timeout: float) -> None: ...

    def close(self) -> None: ...

    def visible_path(self, path: Path) -> str: ...

    def cancel(self) -> None: ...

    def run(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        timeout: float,
        on_line: OnLine,
    ) -> int:
        """Run `argv` in `cwd` with exactly `env`; pass each output line to `on_line`.

        stdout and stderr are merged. Return the exit code (negative: killed by that signal).
        Raise StepTimeout when `timeout` seconds pass first, after killing every process the
        command started.
        """
        ...


@dataclass(frozen=True)
class Limits:
    """Resource limits for a build step (`None` leaves that limit as it is)."""

    max_file_bytes: int | None = 2 * 1024**3
    max_open_files: int | None = 4096
    max_processes: int | None = 4096
    cpu_seconds: int | None = None
    core_bytes: int | None = 0

    def apply(self) -> None:
        """Set the limits on the calling process (called in the child, before exec)."""
        pairs = [
            (resource.RLIMIT_FSIZE, self.max_file_bytes),
            (resource.RLIMIT_NOFILE, self.max_open_files),
            # RLIMIT_NPROC counts the user's processes and is not enforced for root
            # (setrlimit(2)); it matters once builds run as an unprivileged user.
            (resource.RLIMIT_NPROC, self.max_processes),
            (resource.RLIMIT_CPU, self.cpu_seconds),
            (resource.RLIMIT_CORE, self.core_bytes),
        ]
        for which, value in pairs:
            if value is None:
                continue
            _soft, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY and value > hard:
                value = hard
            resource.setrlimit(which, (value, value))


class HostExecutor:
    """Run build steps as child processes of this host (no isolation; see the module doc)."""

    def __init__(
        self,
        limits: Limits | None = None,
        kill_grace: float = 2.0,
        owner: tuple[int, int] | None = None,
    ) -> None:
        """`owner` (uid, gid): run steps as that user, with no supplementary groups.

        Switching user needs root; a build user cannot touch the builder's own files or the
        config vars in ENV_DIR, and RLIMIT_NPROC applies to it.
        """
        if owner is not None and os.geteuid() != 0:
            raise ValueError("running build steps as another user needs root")
        self.limits = limits or Limits()
        self.kill_grace = kill_grace
        self.owner = owner
        self._lock = threading.Lock()
        self._pgid: int | None = None
        self._cancelled = False

    def prepare(self, dirs: BuildDirs, timeout: float) -> None:
        """Nothing to set up: steps run in the host's own file system."""

    def close(self) -> None:
        """Nothing to take down: each step's process group is gone when `run` returns."""

    def visible_path(self, path: Path) -> str:
        return str(path)

    def cancel(self) -> None:
        """Kill the running step's whole process group; later steps are refused."""
        with self._lock:
            self._cancelled = True
            pgid = self._pgid
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)

    def run(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        timeout: float,
        on_line: OnLine,
    ) -> int:
        if not argv:
            raise ValueError("argv must not be empty")
        deadline = time.monotonic() + timeout
        limits = self.limits
        uid, gid = self.owner if self.owner is not None else (None, None)
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                # preexec_fn runs between fork and exec; Limits.apply only calls setrlimit(2),
                # which is safe there even while other threads hold locks.
                preexec_fn=limits.apply,
                user=uid,
                group=gid,
                extra_groups=[] if self.owner is not None else None,
            )
        except OSError as e:
            raise BuildError(f"cannot run {argv[0]}: {e.strerror}") from None
        assert proc.stdout is not None
        pgid = proc.pid  # start_new_session: the child leads its own process group
        with self._lock:
            self._pgid = pgid
            if self._cancelled:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        pending = b""
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_READ)
                eof = False
                while not eof:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise StepTimeout(argv, timeout)
                    # Wake at least twice a second: the command may exit while a process it
                    # left behind holds the pipe open, and then EOF would never come.
                    if not sel.select(min(left, 0.5)):
                        if proc.poll() is not None:
                            pending = _drain(fd, pending, on_line)
                            break
                        continue
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        eof = True
                    pending = _emit_lines(pending + chunk, on_line)
                    if not eof and proc.poll() is not None:
                        # The command is done; what it wrote is in the pipe already. Anything
                        # still writing is a leftover and must not keep the step alive.
                        pending = _drain(fd, pending, on_line)
                        break
            if pending:
                on_line(_decode(pending))
            left = max(deadline - time.monotonic(), 0.0)
            try:
                return proc.wait(timeout=left if left > 0 else 0.01)
            except subprocess.TimeoutExpired:
                raise StepTimeout(argv, timeout) from None
        finally:
            # Whatever happened, nothing the step started may outlive it.
            with self._lock:
                self._pgid = None
            self._kill_group(pgid, proc)
            proc.stdout.close()

    def _kill_group(self, pgid: int, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + self.kill_grace
            while time.monotonic() < deadline:
                if proc.poll() is None:
                    time.sleep(0.02)
                    continue
                # The leader is gone; stragglers may remain in the group.
                os.killpg(pgid, 0)
                time.sleep(0.02)
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self.kill_grace)


# Where each build directory appears inside the build container, and whether steps may write it.
# The buildpacks' copies stay writable: a buildpack leaves an `export` file in its own directory
# for the next ones (the runner checks afterwards that none wrote into another's).
CONTAINER_DIRS: dict[str, tuple[str, bool]] = {
    "app": ("/tmp/build", False),
    "cache": ("/tmp/cache", False),
    "env": ("/tmp/env", True),
    "buildpacks": ("/tmp/buildpacks", False),
    "home": ("/tmp/home", False),
    "tmp": ("/tmp/tmpdir", False),
}
STEP_LOG_DIR = "/tmp/.paas-steps"
CA_DIR = "/etc/ssl/certs"
CA_BUNDLE = f"{CA_DIR}/ca-certificates.crt"
# With the host's CA certificates bound in, the tools buildpacks use find them through these.
CA_ENV = {name: CA_BUNDLE for name in (
    "SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO",
    "CURL_CA_BUNDLE",
)}
# Run one step: change to its directory, then exec it with stdout and stderr to its log file
# (which the builder follows from the host), so output streams while the step runs.
_STEP_WRAPPER = 'cd "$1" || exit 126; log=$2; shift 2; exec "$@" >>"$log" 2>&1'


@dataclass(frozen=True)
class ContainerLimits:
    """What a build container may use: memory (MiB), CPUs (cores; None: no cap) and pids."""

    memory_mb: int = 2048
    cpu_quota: float | None = 2.0
    pids_limit: int = 1024


class RuntimeExecutor:
    """Run the steps of one build inside one build container of the runtime daemon.

    `prepare` starts the container (its main process only waits, and ends by itself shortly
    after the build's deadline, so a builder that dies leaves nothing running for long); each
    step is an `exec` into it as the container's unprivileged user, its output followed from a
    host file; `close` removes the container with its cgroup and network attachment. A step
    past its time, or a `cancel`, kills the whole container.
    """

    def __init__(
        self,
        client: DaemonClient,
        image_digest: str,
        layers: Sequence[Path],
        image_config: Mapping[str, Any],
        *,
        app: str,
        build_id: str = "",
        limits: ContainerLimits | None = None,
        network: bool = True,
        owner: tuple[int, int] = (DEFAULT_UID, DEFAULT_GID),
        ca_certs: Path | None = None,
    ) -> None:
        """`ca_certs`: a host directory of CA certificates holding `ca-certificates.crt`, bound
        read-only over the stack's own at /etc/ssl/certs (for a host whose egress goes through
        a TLS-inspecting proxy); steps are pointed at its bundle.
        """
        if owner[0] == 0 or owner[1] == 0:
            raise ValueError("build containers run as an unprivileged user, not root")
        self.client = client
        self.image_digest = image_digest
        self.layers = [str(p) for p in layers]
        self.image_config = dict(image_config)
        self.app = app
        self.build_id = build_id
        self.limits = limits or ContainerLimits()
        self.network = network
        self.owner: tuple[int, int] | None = owner
        self.ca_certs = ca_certs
        self.container_id: str | None = None
        self._map: list[tuple[str, str]] = []
        self._steps_dir: Path | None = None
        self._count = 0
        self._lock = threading.Lock()
        self._cancelled = False

    # -- the container --------------------------------------------------------------------------

    def prepare(self, dirs: BuildDirs, timeout: float) -> None:
        """Start the build container with the build's directories bound in."""
        assert self.owner is not None
        uid, gid = self.owner
        steps = Path(tempfile.mkdtemp(prefix=".steps-", dir=dirs.work.parent))
        steps.chmod(0o755)  # the build user writes the log files made for it, nothing else
        self._steps_dir = steps
        mounts = [{"source": str(steps), "target": STEP_LOG_DIR, "readonly": False}]
        self._map = []
        for name, (target, readonly) in CONTAINER_DIRS.items():
            source = os.path.realpath(getattr(dirs, name))
            mounts.append({"source": source, "target": target, "readonly": readonly})
            self._map.append((str(getattr(dirs, name)), target))
            if source != str(getattr(dirs, name)):
                self._map.append((source, target))
        self._map.sort(key=lambda pair: len(pair[0]), reverse=True)
        if self.ca_certs is not None:
            if not (self.ca_certs / "ca-certificates.crt").is_file():
                raise BuildError(f"The CA certificates directory {self.ca_certs} has no ca-certificates.crt.")
            mounts.append({"source": os.path.realpath(self.ca_certs), "target": CA_DIR, "readonly": True})
        settings = dict(image_settings(self.image_config))
        settings.update(User=f"{uid}:{gid}", WorkingDir=CONTAINER_DIRS["app"][0], Entrypoint=None)
        cid = self._new_id()
        spec: dict[str, Any] = {
            "id": cid,
            "app": self.app,
            "release": 1,
            "process_type": "build",
            "image": self.image_digest,
            # The container ends by itself a little after the build's deadline.
            "command": ["sleep", str(int(timeout) + 30)],
            "memory_mb": self.limits.memory_mb,
            "cpu_quota": self.limits.cpu_quota,
            "pids_limit": self.limits.pids_limit,
            "labels": {"paas.build": self.build_id or "local"},
            # The build egress policy: public addresses on TCP 80/443, DNS, what the host allows.
            "network": (
                {"mode": "bridge", "nat": True, "egress": "build"} if self.network
                else {"mode": "none", "nat": False}
            ),
            "mounts": mounts,
        }
        with self._lock:
            if self._cancelled:
                raise BuildError("The build was cancelled.")
            self.container_id = cid
        self._sweep()
        try:
            self.client.run(spec, self.layers, settings)
        except DaemonError as e:
            raise BuildError(f"Cannot start the build container: {e}") from None

    def _sweep(self) -> None:
        """Remove build containers that have ended but are still on record: a builder that died
        mid-build never removed its own (its container ended by itself at its deadline)."""
        try:
            containers = self.client.list()
        except DaemonError:
            return
        for c in containers:
            if c.get("spec", {}).get("process_type") == "build" and c.get("state") in ("exited", "oom", "failed"):
                with contextlib.suppress(DaemonError):
                    self.client.remove(str(c["id"]))

    def close(self) -> None:
        """Remove the container (and with it its cgroup and network attachment)."""
        cid = self.container_id
        if cid is not None:
            try:
                self.client.remove(cid, force=True)
            except DaemonError as e:
                if e.kind != "not_found":
                    # Try once more after a kill: remove waits for the release of what it held.
                    with contextlib.suppress(DaemonError):
                        self.client.kill(cid)
                    with contextlib.suppress(DaemonError):
                        self.client.remove(cid, force=True)
            self.container_id = None
        if self._steps_dir is not None:
            shutil.rmtree(self._steps_dir, ignore_errors=True)
            self._steps_dir = None

    def cancel(self) -> None:
        """Kill everything in the build container; the running step ends, later ones fail."""
        with self._lock:
            self._cancelled = True
            cid = self.container_id
        if cid is not None:
            with contextlib.suppress(DaemonError):
                self.client.kill(cid, "SIGKILL")

    def visible_path(self, path: Path) -> str:
        return self._translate(str(path))

    def _new_id(self) -> str:
        build = "".join(c for c in self.build_id.lower() if c.isalnum())[:20]
        return f"build-{build + '-' if build else ''}{secrets.token_hex(6)}"

    def _translate(self, value: str) -> str:
        for host, inside in self._map:
            if value == host or value.startswith(host + "/"):
                return inside + value[len(host):]
        return value

    # -- a step ---------------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        timeout: float,
        on_line: OnLine,
    ) -> int:
        if not argv:
            raise ValueError("argv must not be empty")
        cid, steps = self.container_id, self._steps_dir
        if cid is None or steps is None:
            raise BuildError("The build container is not running (prepare was not called).")
        with self._lock:
            if self._cancelled:
                raise BuildError("The build was cancelled.")
        deadline = time.monotonic() + timeout
        self._count += 1
        name = f"{self._count:03d}.log"
        log = steps / name
        assert self.owner is not None
        fd = os.open(log, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchown(fd, *self.owner)
            command = [
                "/bin/sh", "-c", _STEP_WRAPPER, "paas-step", self._translate(str(cwd)),
                f"{STEP_LOG_DIR}/{name}", *(self._translate(a) for a in argv),
            ]
            step_env = {k: self._translate(v) for k, v in env.items()}
            if self.ca_certs is not None:
                step_env = {**CA_ENV, **step_env}
            result: dict[str, Any] = {}
            done = threading.Event()

            def call() -> None:
                try:
                    # The daemon's own limit is a backstop; the deadline here is what counts.
                    reply = self.client.exec(cid, command, step_env, min(timeout + 30, 3600))
                    result["code"] = int(reply["exit_code"])
                    if reply.get("stderr", "").strip():
                        result["stderr"] = reply["stderr"]
                except DaemonError as e:
                    result["error"] = e
                except BaseException as e:  # handed to the calling thread
                    result["error"] = e
                finally:
                    done.set()

            worker = threading.Thread(target=call, name="build-step", daemon=True)
            worker.start()
            pending = b""
            idle = 0.002  # how long to wait for more output: short at first, then backing off
            read = freed = 0
            while True:
                chunk = os.read(fd, 65536)
                if chunk:
                    pending = _emit_lines(pending + chunk, on_line)
                    idle = 0.002
                    read += len(chunk)
                    if read - freed >= _FREE_EVERY:
                        # What was passed on need not stay on disk: a step that prints
                        # without end must not fill the host's disk with its log.
                        _punch_hole(fd, freed, read - freed)
                        freed = read
                    continue
                if done.is_set():
                    pending = _drain(fd, pending, on_line)
                    break
                if time.monotonic() >= deadline:
                    self.cancel()
                    worker.join(10)
                    pending = _drain(fd, pending, on_line)
                    if pending:
                        on_line(_decode(pending))
                    raise StepTimeout(argv, timeout)
                done.wait(idle)
                idle = min(idle * 2, 0.05)
            if pending:
                on_line(_decode(pending))
        finally:
            os.close(fd)
        error = result.get("error")
        if error is not None:
            if self._cancelled:
                return 128 + signal.SIGKILL
            if isinstance(error, DaemonError):
                raise BuildError(f"The build container failed: {error}")
            raise error
        for line in str(result.get("stderr", "")).splitlines():
            on_line(line)  # the init's own word, e.g. a command that cannot be run
        code: int = result["code"]
        return code


_FREE_EVERY = 4 * 1024 * 1024
_FALLOC_FL_KEEP_SIZE = 0x01  # <linux/falloc.h>
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.fallocate.restype = ctypes.c_int


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Free the disk blocks of `length` bytes at `offset`, keeping the size (fallocate(2)).

    A file system without hole punching keeps the blocks; the log is removed at the end anyway.
    """
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        errno = ctypes.get_errno()
        if errno not in (95, 22):  # EOPNOTSUPP, EINVAL: not supported here
            raise OSError(errno, f"fallocate(PUNCH_HOLE) of the step log: {os.strerror(errno)}")


ExecutorMode = Literal["host", "runtime"]


def executor_mode(setting: str, daemon_answers: Callable[[], bool], is_root: bool) -> ExecutorMode:
    """Pick where builds run from `PAAS_BUILD_EXECUTOR` (`host`, `runtime`, or empty: auto).

    Auto picks the runtime when this process is root and the daemon answers, else the host.
    Raise BuildError when the runtime is asked for but cannot be had.
    """
    value = setting.strip().lower()
    if value == "host":
        return "host"
    if value == "runtime":
        if not daemon_answers():
            raise BuildError(
                "PAAS_BUILD_EXECUTOR=runtime, but the runtime daemon does not answer; start it "
                "(as root, `make up`) or set PAAS_BUILD_EXECUTOR=host."
            )
        return "runtime"
    if value not in ("", "auto"):
        raise BuildError(f"PAAS_BUILD_EXECUTOR must be host, runtime or auto, not {setting!r}.")
    return "runtime" if is_root and daemon_answers() else "host"


def _drain(fd: int, pending: bytes, on_line: OnLine, limit: int = 1 << 20) -> bytes:
    """Pass on what the pipe holds now (at most `limit` bytes); return the unfinished line."""
    taken = 0
    while taken < limit:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        taken += len(chunk)
        pending = _emit_lines(pending + chunk, on_line)
    return pending


def _emit_lines(data: bytes, on_line: OnLine) -> bytes:
    """Pass every complete line of `data` to `on_line`; return what is left."""
    while True:
        nl = data.find(b"\n")
        if nl < 0:
            break
        line = data[:nl]
        for start in range(0, max(len(line), 1), _MAX_LINE):
            on_line(_decode(line[start : start + _MAX_LINE]))
        data = data[nl + 1 :]
    while len(data) > _MAX_LINE:  # a line with no end in sight: pass it on in pieces
        on_line(_decode(data[:_MAX_LINE]))
        data = data[_MAX_LINE:]
    return data


def _decode(line: bytes) -> str:
    return line.rstrip(b"\r").decode("utf-8", errors="replace")
