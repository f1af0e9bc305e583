"""Attached sessions of the runtime daemon: `exec_session` and `run` with `attach`.

A client that wants a container process's stdio gets the process's ends of it as file
descriptors over the daemon's socket (SCM_RIGHTS) and copies them itself; the daemon keeps none
of them, so no byte of a session passes through it and a session costs it one pidfd or none.

- `exec_session` (tty): the daemon opens a new pty in the container's own devpts instance
  (`/proc/<init>/root/dev/pts/ptmx`, walked without following symlinks; the terminal from
  `TIOCGPTPEER`), so the command sees `/dev/pts/N` as its terminal and `tty` names it. The
  terminal becomes fds 0-2 of `paas-init exec --stdio tty`, whose command makes it its
  controlling terminal in a session of its own (job control, Ctrl-C as SIGINT to the foreground
  job). The master goes to the client.
- `exec_session` (pipes): three pipes; the client gets the write end of stdin and the read ends
  of stdout and stderr.
- `run` with `attach` (`tty` or `stdin`): the container's init opens the pty (or the stdin pipe)
  itself and sends its end to the daemon with its `ok` line; the daemon passes it on.

The first reply carries the descriptors; the last one is `{"ok": true, "exit_code": N}`. A
client that goes away ends its session: the exec helper hangs the command's session up (SIGHUP,
SIGKILL two seconds later); an attached `run` container is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import stat
import struct
import termios
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.container import plan, read_passwd

if TYPE_CHECKING:
    from runtime.daemon import Runtime

TIOCSPTLCK = 0x40045431  # <asm-generic/ioctls.h>: _IOW('T', 0x31, int)
TIOCGPTPEER = 0x5441  # _IO('T', 0x41), Linux 4.13
PTMX_DEVICE = (5, 2)
STOP_GRACE_S = 2.0
MAX_SIZE = 10000


def _op_error(message: str, kind: str = "invalid") -> Exception:
    from runtime.daemon import OpError

    return OpError(message, kind)


def window_size(req: dict[str, Any]) -> tuple[int, int]:
    """Return the (rows, cols) a request asks for (24 x 80 by default)."""
    out = []
    for name, default in (("rows", 24), ("cols", 80)):
        v = req.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= MAX_SIZE:
            raise _op_error(f"{name}: must be a whole number between 1 and {MAX_SIZE}")
        out.append(v)
    return out[0], out[1]


def open_container_pty(pid: int, size: tuple[int, int], uid: int, gid: int) -> tuple[int, int]:
    """Open a new pty in the devpts of the container whose init is `pid`: (master, terminal).

    The path is walked one component at a time with O_NOFOLLOW below the container's root, so
    nothing in the container can point the daemon elsewhere; the node must be the pty
    multiplexer. The terminal is sized and owned by the command's user, mode 0620."""
    dirs: list[int] = []
    try:
        dirs.append(os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        for name in ("dev", "pts"):
            flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            dirs.append(os.open(name, flags, dir_fd=dirs[-1]))
        master = os.open("ptmx", os.O_RDWR | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirs[-1])
    except OSError as exc:
        raise _op_error(f"cannot open a terminal in the container: {exc.strerror}", "internal") from None
    finally:
        for fd in dirs:
            os.close(fd)
    try:
        st = os.fstat(master)
        if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != PTMX_DEVICE:
            raise _op_error("the container's /dev/pts/ptmx is not a pty multiplexer", "internal")
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
        term = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        os.close(master)
        raise _op_error(f"cannot open a terminal in the container: {exc.strerror}", "internal") from None
    except BaseException:
        os.close(master)
        raise
    try:
        os.fchown(term, uid, gid)
        os.fchmod(term, 0o620)
    except OSError as exc:
        os.close(master)
        os.close(term)
        raise _op_error(f"cannot hand the terminal to the command: {exc.strerror}", "internal") from None
    return master, term


@dataclass
class ExecSession:
    """A command started in a container for an attached client."""

    pid: int
    control: socket.socket  # our end of the helper's --session socket
    client_fds: list[int]
    tty: bool
    reaped: bool = field(default=False)


def start_exec(rt: Runtime, req: dict[str, Any]) -> ExecSession:
    """Validate an `exec_session` request and start its command; the client's fds come back."""
    rec = rt._get(req.get("id"))
    if rec.state != "running":
        raise _op_error(
            f"container {rec.spec.id} is {rec.state}, not running; exec needs a running container",
            "conflict",
        )
    command, env, tty = req.get("command"), req.get("env", {}), req.get("tty", False)
    if not isinstance(command, list) or not command or not all(isinstance(a, str) and "\0" not in a for a in command):
        raise _op_error("command: must be a non-empty list of strings")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise _op_error("env: must be an object of strings")
    if not isinstance(tty, bool):
        raise _op_error("tty: must be true or false")
    size = window_size(req)
    p = plan(rec.spec, rec.image_config, read_passwd([Path(x) for x in rec.layers]))
    args = [
        str(rt.init), "exec", "--pid", str(rec.pid), "--uid", str(p.uid), "--gid", str(p.gid),
        "--cwd", p.cwd, "--session", "3", "--stdio", "tty" if tty else "pipe",
    ]
    for procs in rt.cgroup(rec.spec.id).procs_files():
        args += ["--cgroup", str(procs)]
    full_env = {**p.env, **{k: v for k, v in env.items() if "=" not in k and "\0" not in v}}
    if tty:
        full_env.setdefault("TERM", req.get("term") if isinstance(req.get("term"), str) else "xterm")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    mine: list[int] = []
    client: list[int] = []
    try:
        if tty:
            master, term = open_container_pty(rec.pid, size, p.uid, p.gid)
            client, mine, stdio = [master], [term], (term, term, term)
        else:
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            client, mine, stdio = [in_w, out_r, err_r], [in_r, out_w, err_w], (in_r, out_w, err_w)
        pid = os.posix_spawn(
            str(rt.init),
            [*args, "--", *command],
            full_env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, stdio[0], 0),
                (os.POSIX_SPAWN_DUP2, stdio[1], 1),
                (os.POSIX_SPAWN_DUP2, stdio[2], 2),
                (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3),
            ],
            setsid=True,
        )
    except OSError as exc:
        for fd in client:
            os.close(fd)
        ours.close()
        raise _op_error(f"cannot start the command: {exc.strerror}", "internal") from None
    except BaseException:
        for fd in client:
            os.close(fd)
        ours.close()
        raise
    finally:
        for fd in mine:
            os.close(fd)
        theirs.close()
    return ExecSession(pid=pid, control=ours, client_fds=client, tty=tty)


def send_with_fds(writer: asyncio.StreamWriter, obj: dict[str, Any], fds: list[int]) -> None:
    """Write one reply line on the connection with `fds` attached to it (SCM_RIGHTS).

    Nothing else is queued on the connection yet (this is its first reply), so the line goes
    straight to the socket through a duplicate of its descriptor."""
    data = json.dumps(obj).encode() + b"\n"
    transport_sock = writer.get_extra_info("socket")
    with socket.socket(fileno=os.dup(transport_sock.fileno())) as sock:
        try:
            sent = socket.send_fds(sock, [data], fds)
        except BlockingIOError:
            raise _op_error("the client does not read its replies", "internal") from None
    if sent < len(data):
        writer.write(data[sent:])


async def _exited(pid: int) -> None:
    """Wait until the process `pid` (a child) has exited, through a pidfd."""
    loop = asyncio.get_running_loop()
    fd = os.pidfd_open(pid)
    done: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, _set_once, done)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _set_once(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _reply(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj).encode() + b"\n")
    await writer.drain()


async def serve_exec(
    rt: Runtime, req: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Run one `exec_session`: hand the client its fds, answer its exit code at the end."""
    sess = start_exec(rt, req)
    exited = asyncio.ensure_future(_exited(sess.pid))
    gone = asyncio.ensure_future(reader.read())  # EOF: the client went away
    try:
        try:
            send_with_fds(writer, {"ok": True, "result": {"stdio": "tty" if sess.tty else "pipe", "pid": sess.pid}}, sess.client_fds)
        finally:
            for fd in sess.client_fds:
                os.close(fd)
        await asyncio.wait({exited, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            sess.control.close()  # the helper hangs the command's session up
        await exited
        _, status = os.waitpid(sess.pid, 0)
        sess.reaped = True
        code = os.waitstatus_to_exitcode(status)
        if not gone.done():
            await _reply(writer, {"ok": True, "exit_code": 128 - code if code < 0 else code})
    finally:
        gone.cancel()
        sess.control.close()  # if it still runs, the helper hangs the session up
        if not sess.reaped:
            exited.cancel()
            reaper = asyncio.ensure_future(_reap(sess.pid))
            _reapers.add(reaper)
            reaper.add_done_callback(_reapers.discard)


_reapers: set[asyncio.Future[None]] = set()


async def _reap(pid: int) -> None:
    """Collect a helper that ends after its session was given up (within two seconds)."""
    with contextlib.suppress(ChildProcessError, OSError):
        await _exited(pid)
        os.waitpid(pid, 0)


async def serve_run(
    rt: Runtime, req: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Create and start a container whose app's stdio is the client's; it lives as long as the
    session. With `remove`, the container is removed once it has ended."""
    attach = req.get("attach")
    if attach not in ("tty", "stdin"):
        raise _op_error("attach: must be 'tty' or 'stdin'")
    size = window_size(req)
    remove = req.get("remove") is True
    rec = await rt.create(req.get("spec"), req.get("layers"), req.get("image_config", {}))
    cid = rec.spec.id
    try:
        await rt.start(cid, stdio=str(attach), size=size)
        fd = rt.take_stdio_fd(cid)
        gone = asyncio.ensure_future(reader.read())
        try:
            try:
                send_with_fds(writer, {"ok": True, "result": rec.public()}, [] if fd is None else [fd])
            finally:
                if fd is not None:
                    os.close(fd)
            ended = asyncio.ensure_future(rt.wait(cid))
            await asyncio.wait({ended, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not ended.done():
                ended.cancel()
                await rt.stop(cid, STOP_GRACE_S)  # the client went away: so does its container
            elif not gone.done():
                await _reply(writer, {"ok": True, "exit_code": rec.exit_code, "container": rec.public()})
        except Exception:
            await rt.stop(cid, STOP_GRACE_S)  # the session broke: the container goes with it
            raise
        finally:
            gone.cancel()
    finally:
        if remove:
            with contextlib.suppress(Exception):
                await asyncio.shield(rt.remove(cid, True))
