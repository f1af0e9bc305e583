"""Run one buildpack command: the seam between the build runner and where builds execute.

`Executor` is the interface the runner needs. `HostExecutor` runs the command as a plain child
process on this host: it gets its own session and process group, exactly the environment the
runner passes (nothing is inherited), and resource limits set with `setrlimit` in the child
before exec. It gives no isolation from the host: the buildpack runs with the builder's user and
sees the host's file system. Isolation arrives with the runtime's build container, which will
implement the same interface.
"""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from builder.errors import BuildError

OnLine = Callable[[str], None]
_MAX_LINE = 8192


class StepTimeout(BuildError):
    """The command ran past its time limit; its whole process group was killed."""

    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        super().__init__(f"{argv[0]} did not finish within {timeout:.0f} s and was stopped")
        self.timeout = timeout


class Executor(Protocol):
    """Where build steps run.

    `owner` is the uid:gid the steps run as, or None for the builder's own user; the runner
    hands that owner the directories a step may write (the app, its cache, HOME, TMPDIR).
    """

    owner: tuple[int, int] | None

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
