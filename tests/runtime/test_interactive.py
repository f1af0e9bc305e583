"""Interactive sessions: `python -m runtime exec -it|-i` and `run -it|-i`, driven through real ptys.

The CLI runs on a pty of the test's own (as on a user's terminal); the container's shell gets a
pty of its container's devpts, whose master the daemon handed to the CLI.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import cgroups
from runtime.client import DaemonError
from tests.runtime.daemon_fixtures import (  # noqa: F401  (fixtures)
    REPO,
    Daemon,
    Image,
    daemon_fixture,
    rt_fixture,
    tiny_fixture,
)

pytestmark = pytest.mark.root

LIMIT_S = 30.0  # how long a step may take before the test fails (never a measurement)


class Terminal:
    """The CLI started on a new pty, as a session leader with the pty as its controlling
    terminal, as a shell would start it. We keep the terminal side open too, to read its mode."""

    def __init__(self, argv: list[str], rows: int = 33, cols: int = 101) -> None:
        self.fd, self.term = os.openpty()
        fcntl.ioctl(self.term, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.initial_mode = self.mode()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.setsid()
                fcntl.ioctl(self.term, termios.TIOCSCTTY, 0)
                for n in (0, 1, 2):
                    os.dup2(self.term, n)
                os.closerange(3, 1024)
                os.chdir(REPO)
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        self.pid = pid
        self.out = b""
        self.status: int | None = None

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def expect(self, token: bytes, timeout: float = LIMIT_S) -> bytes:
        """Read until `token` has appeared after what earlier calls consumed; return it all."""
        deadline = time.monotonic() + timeout
        while token not in self.out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{token!r} never came; the terminal shows {self.out!r}")
            r, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if r:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:  # EIO: the CLI and all it started have closed the terminal
                    data = b""
                if not data:
                    raise AssertionError(f"{token!r} never came; the terminal closed after {self.out!r}")
                self.out += data
        seen, _, self.out = self.out.partition(token)
        return seen + token

    def resize(self, rows: int, cols: int) -> None:
        """Resize our window: the kernel sends SIGWINCH to the CLI."""
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def alive(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is None

    def wait(self, timeout: float = LIMIT_S) -> int:
        """Return the CLI's exit code, reading what it prints meanwhile."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise AssertionError(f"the CLI did not exit; the terminal shows {self.out!r}")
            r, _, _ = select.select([self.fd], [], [], 0.1)
            if r:
                with contextlib.suppress(OSError):
                    self.out += os.read(self.fd, 4096)
        while select.select([self.fd], [], [], 0)[0]:  # what it wrote last
            self.out += os.read(self.fd, 4096)
        assert self.status is not None
        return os.waitstatus_to_exitcode(self.status)

    def mode(self) -> list[int | list[bytes | int]]:
        """The terminal's current settings (the CLI puts it in raw mode and back)."""
        return termios.tcgetattr(self.term)

    def raw(self) -> bool:
        lflag = self.mode()[3]
        assert isinstance(lflag, int)
        return not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)

    def close(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.status = 0
        os.close(self.fd)
        os.close(self.term)


@contextlib.contextmanager
def terminal(rt: Daemon, *args: str) -> Iterator[Terminal]:
    t = Terminal([sys.executable, "-m", "runtime", "--root", str(rt.root), *args])
    try:
        yield t
    finally:
        t.close()


def cli(rt: Daemon, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", "--root", str(rt.root), *args],
        cwd=REPO, input=stdin, capture_output=True, text=True, timeout=120,
    )


def container_processes(cid: str) -> list[str]:
    """The command lines of the processes in the container's cgroup."""
    procs = cgroups.for_container(cid).procs_files()[0]
    out = []
    for pid in procs.read_text().split():
        with contextlib.suppress(OSError):
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
    return out


def wait_until(what: str, check: object, timeout: float = LIMIT_S) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def daemon_pid(rt: Daemon) -> int:
    assert rt.proc is not None
    return rt.proc.pid


def daemon_fds(rt: Daemon) -> set[str]:
    return {p.name for p in Path(f"/proc/{daemon_pid(rt)}/fd").iterdir()}


def daemon_children(rt: Daemon) -> set[str]:
    kids: set[str] = set()
    for task in Path(f"/proc/{daemon_pid(rt)}/task").iterdir():
        with contextlib.suppress(OSError):
            kids.update((task / "children").read_text().split())
    return kids


@pytest.fixture(name="box")
def box_fixture(rt: Daemon, tiny: Image) -> str:
    """A running container to exec into."""
    return str(rt.run(tiny, ["sleep", "1000"])["id"])


def test_it_gives_an_exec_shell_a_real_terminal_that_follows_the_window(rt: Daemon, box: str) -> None:
    base = container_processes(box)
    with terminal(rt, "exec", "-it", box, "--", "/bin/sh") as t:
        t.expect(b"$ ")
        assert t.raw()  # every key goes to the container's terminal
        t.send(b"tty; echo $((6*7)); stty size\r")
        assert t.expect(b"33 101\r\n").endswith(b"/dev/pts/0\r\n42\r\n33 101\r\n")
        t.resize(40, 120)
        t.expect(b"$ ")
        t.send(b"stty size\r")
        t.expect(b"40 120\r\n")
        t.send(b"exit 3\r")
        assert t.wait() == 3
        assert t.mode() == t.initial_mode  # out of raw mode again
    wait_until("the shell is gone", lambda: container_processes(box) == base)


def test_it_runs_a_new_container_with_an_interactive_shell(rt: Daemon) -> None:
    from runtime.images import ImageStore
    from runtime.tinyimage import build_tiny_image

    build_tiny_image(ImageStore(rt.root / "images"))
    name = rt.new_id("it")
    with terminal(rt, "run", "-it", "--rm", "--no-network", "-m", "64", "--name", name, "tiny", "--", "/bin/sh") as t:
        t.expect(b"$ ")
        t.send(b"tty; echo $((6*7)); stty size\r")
        assert t.expect(b"33 101\r\n").endswith(b"/dev/pts/0\r\n42\r\n33 101\r\n")
        assert rt.client.inspect(name)["spec"]["memory_mb"] == 64
        assert rt.client.stats(name)["memory_limit_bytes"] == 64 << 20
        t.send(b"sleep 100\r")
        wait_until("sleep 100 runs", lambda: "sleep 100" in container_processes(name))
        t.send(b"\x03")
        t.expect(b"$ ")
        t.send(b"echo rc=$?\r")
        t.expect(b"rc=130\r\n")
        t.send(b"exit 3\r")
        assert t.wait() == 3
    with pytest.raises(DaemonError, match="no such container"):
        rt.client.inspect(name)


def test_it_sends_ctrl_c_to_the_containers_foreground_job_not_to_the_client(rt: Daemon, box: str) -> None:
    with terminal(rt, "exec", "-it", box, "--", "/bin/sh") as t:
        t.expect(b"$ ")
        t.send(b"sleep 100\r")
        wait_until("sleep 100 runs", lambda: "sleep 100" in container_processes(box))
        t.send(b"\x03")
        wait_until("sleep 100 is gone", lambda: "sleep 100" not in container_processes(box))
        t.send(b"echo rc=$?\r")
        t.expect(b"rc=130\r\n")
        assert t.alive()
        t.send(b"exit\r")
        assert t.wait() == 0


def test_it_streams_stdin_stdout_and_stderr_as_pipes_without_a_tty(rt: Daemon, box: str) -> None:
    piped = cli(rt, "exec", "-i", box, "--", "cat", stdin="hi\n")
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, "hi\n", "")
    both = cli(rt, "exec", "-i", box, "--", "sh", "-c", "tty; read x; echo got $x; echo oops >&2; exit 4", stdin="one\n")
    assert (both.returncode, both.stdout, both.stderr) == (4, "not a tty\ngot one\n", "oops\n")
    big = "x" * 300_000 + "\n"  # more than a pipe holds, both ways at once
    assert cli(rt, "exec", "-i", box, "--", "cat", stdin=big).stdout == big


def test_it_streams_stdin_into_a_new_container(rt: Daemon) -> None:
    from runtime.images import ImageStore
    from runtime.tinyimage import build_tiny_image

    build_tiny_image(ImageStore(rt.root / "images"))
    name = rt.new_id("i")
    run = cli(rt, "run", "-i", "--rm", "--no-network", "--name", name, "tiny", "--", "sh", "-c", "cat; exit 2", stdin="hi\n")
    assert (run.returncode, run.stdout) == (2, "hi\n")


@pytest.mark.parametrize("mode", ["-it", "-i"])
def test_it_ends_the_session_of_a_client_that_disconnects_and_keeps_nothing(rt: Daemon, box: str, mode: str) -> None:
    warm = cli(rt, "exec", "-i", box, "--", "true")  # whatever the daemon sets up once, it has
    assert warm.returncode == 0
    fds, kids, base = daemon_fds(rt), daemon_children(rt), container_processes(box)
    with terminal(rt, "exec", mode, box, "--", "/bin/sh") as t:
        if mode == "-it":
            t.expect(b"$ ")
            t.send(b"sleep 100\r")
        else:
            t.send(b"sleep 100\n")
        wait_until("sleep 100 runs", lambda: "sleep 100" in container_processes(box))
        # The daemon holds the connection, the helper's control socket and its pidfd, no stdio.
        extra = sorted(os.readlink(f"/proc/{daemon_pid(rt)}/fd/{fd}") for fd in daemon_fds(rt) - fds)
        assert [x.split(":")[0] for x in extra] == ["anon_inode", "socket", "socket"], extra
        os.kill(t.pid, signal.SIGKILL)
        assert t.wait() == -signal.SIGKILL
    wait_until("the session's processes are gone", lambda: container_processes(box) == base)
    wait_until("the daemon holds what it held before", lambda: daemon_fds(rt) == fds and daemon_children(rt) == kids)
    assert rt.client.inspect(box)["state"] == "running"


def test_it_stops_an_attached_container_whose_client_disconnects(rt: Daemon) -> None:
    from runtime.images import ImageStore
    from runtime.tinyimage import build_tiny_image

    build_tiny_image(ImageStore(rt.root / "images"))
    name = rt.new_id("gone")
    with terminal(rt, "run", "-it", "--no-network", "--name", name, "tiny", "--", "sh", "-c", "trap '' HUP; echo up; sleep 1000") as t:
        t.expect(b"up")
        os.kill(t.pid, signal.SIGKILL)
        t.wait()
    wait_until("the container has ended", lambda: rt.client.inspect(name)["state"] != "running")


def test_it_refuses_an_interactive_exec_into_a_stopped_container_clearly(rt: Daemon, tiny: Image) -> None:
    c = rt.run(tiny, ["true"])
    assert rt.wait(c["id"])["state"] == "exited"
    with terminal(rt, "exec", "-it", c["id"], "--", "/bin/sh") as t:
        assert t.wait() == 1
        assert t.out.decode() == f"error: container {c['id']} is exited, not running; exec needs a running container\r\n"
        assert t.mode() == t.initial_mode
    with terminal(rt, "exec", "-it", "no-such", "--", "sh") as t:
        assert t.wait() == 1
        assert t.out == b"error: no such container: no-such\r\n"
    piped = cli(rt, "exec", "-it", c["id"], "--", "sh", stdin="echo hi\n")
    assert (piped.returncode, piped.stderr) == (2, "error: the input is not a terminal: use -i without -t to pipe input\n")
    nothing = cli(rt, "exec", "-it", c["id"])
    assert nothing.returncode == 2 and "exec needs a command" in nothing.stderr


def test_it_says_what_is_wrong_with_a_session_request(rt: Daemon, box: str) -> None:
    with pytest.raises(DaemonError, match="rows: must be a whole number between 1 and 10000"):
        rt.client.exec_session(box, ["sh"], tty=True, size=(0, 80))
    with pytest.raises(DaemonError, match="command: must be a non-empty list of strings"):
        rt.client.exec_session(box, [], tty=True)
    with rt.client.exec_session(box, ["sh", "-c", "exit 7"]) as s:
        assert s.result["stdio"] == "pipe" and len(s.fds) == 3
        assert s.wait() == 7
    with rt.client.exec_session(box, ["no-such-tool"]) as s:
        code = s.wait()
        assert code == 127 and b"cannot run no-such-tool" in os.read(s.fds[2], 4096)


def test_it_restores_the_terminal_and_says_so_when_the_daemon_goes_away(rt: Daemon, box: str) -> None:
    with terminal(rt, "exec", "-it", box, "--", "/bin/sh") as t:
        t.expect(b"$ ")
        assert t.raw()
        rt.stop()
        try:
            assert t.wait() == 1
            assert t.out.endswith(b"error: the runtime daemon closed the session before it ended\r\n")
            assert t.mode() == t.initial_mode
        finally:
            rt.start()  # the container outlived it; the next tests use it again
    assert rt.client.inspect(box)["state"] == "running"


def sleep_state(cid: str) -> str:
    """The state letter (S, T, ...) of `sleep 100` in the container, "" if it is not there."""
    procs = cgroups.for_container(cid).procs_files()[0]
    for pid in procs.read_text().split():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00100\x00":
                return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return ""


def test_it_gives_the_shell_job_control(rt: Daemon, box: str) -> None:
    with terminal(rt, "exec", "-it", box, "--", "/bin/sh") as t:
        t.expect(b"$ ")
        t.send(b"sleep 100\r")
        wait_until("sleep 100 runs", lambda: sleep_state(box) == "S")
        t.send(b"\x1a")  # Ctrl-Z: the terminal stops the foreground job, the shell takes over
        t.expect(b"Stopped")
        assert sleep_state(box) == "T"
        t.expect(b"$ ")
        t.send(b"jobs\r")
        t.expect(b"[1]+  Stopped                    sleep 100\r\n")
        t.send(b"fg\r")  # back to the foreground, where Ctrl-C reaches it
        wait_until("sleep 100 runs again", lambda: sleep_state(box) == "S")
        t.send(b"\x03")
        wait_until("sleep 100 is gone", lambda: sleep_state(box) == "")
        t.send(b"echo rc=$?\r")
        t.expect(b"rc=130\r\n")
        t.send(b"exit 0\r")
        assert t.wait() == 0


def test_it_ends_a_session_whose_container_stops(rt: Daemon, box: str) -> None:
    with terminal(rt, "exec", "-it", box, "--", "/bin/sh") as t:
        t.expect(b"$ ")
        rt.client.stop(box, timeout_s=0)
        assert t.wait() == 128 + signal.SIGKILL  # the PID namespace ended with its init
        assert t.mode() == t.initial_mode
