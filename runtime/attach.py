"""The client's side of an attached session: copy between our terminal or pipes and the
container process's stdio ends (received from the daemon, see `runtime.sessions`).

With a pty (`tty`), our terminal goes into raw mode (restored on every way out: a normal end, an
error, SIGTERM or SIGHUP), so every key, Ctrl-C included, reaches the container's terminal, whose
line discipline turns it into the signal for the container's foreground job; our window size is
copied to the container's terminal at the start and on every SIGWINCH. Without a pty, our stdin
is copied to the process's stdin (closed at our EOF) and its stdout and stderr to ours.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import struct
import termios
import tty as ttymod
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

from runtime.client import Session

CHUNK = 65536
MAX_PENDING = 1 << 20
EOT = b"\x04"  # what ends input on a terminal in canonical mode (VEOF)


def window_size(fd: int) -> tuple[int, int] | None:
    """Return (rows, cols) of the terminal `fd`, or None if it is not one."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (rows, cols) if rows and cols else None


def terminal_size(*fds: int) -> tuple[int, int]:
    """The window size of the first of `fds` that is a terminal, else 24 x 80."""
    for fd in fds:
        size = window_size(fd)
        if size is not None:
            return size
    return 24, 80


@dataclass
class _Copy:
    """One direction: bytes read from `src` are written to `dst`."""

    src: int
    dst: int
    owned_dst: bool  # dst is ours alone: non-blocking, buffered; else written with blocking writes
    on_eof: str = "none"  # "close": close dst at src's EOF; "eot": send EOT once
    pending: bytes = b""
    eof: bool = False
    dst_gone: bool = False
    closed: bool = False  # dst closed here ("close")


def _set_nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def _write_all(fd: int, data: bytes) -> bool:
    """Write everything to a blocking `fd`; False once its reader is gone."""
    while data:
        try:
            n = os.write(fd, data)
        except BrokenPipeError:
            return False
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        data = data[n:]
    return True


def _read(fd: int) -> bytes | None:
    """Read what is there: b"" at the end (EOF, or EIO of a pty whose terminal is closed), None
    if nothing is there now."""
    try:
        return os.read(fd, CHUNK)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno == errno.EIO:
            return b""
        raise


def _pump(copies: list[_Copy], session: Session) -> int:
    """Copy until the daemon reports the exit code, then drain what is left; return the code."""
    code: int | None = None
    while code is None:
        rlist = [c.src for c in copies if not c.eof and len(c.pending) < MAX_PENDING]
        wlist = [c.dst for c in copies if c.pending and not c.dst_gone]
        r, w, _ = select.select([*rlist, session.fileno()], wlist, [])
        for c in copies:
            if c.dst in w and c.pending:
                try:
                    n = os.write(c.dst, c.pending)
                    c.pending = c.pending[n:]
                except BlockingIOError:
                    pass
                except OSError:
                    c.pending, c.dst_gone = b"", True
                _finish(c)
            if c.src in r and not c.eof:
                data = _read(c.src)
                if data is None:
                    continue
                if not data:
                    c.eof = True
                    _finish(c)
                elif c.owned_dst:
                    c.pending += data
                elif not c.dst_gone and not _write_all(c.dst, data):
                    c.dst_gone = True
        if session.fileno() in r:
            code = session.read_exit()
    # The process has ended: what it wrote is already in the pipes or the pty.
    for c in copies:
        if c.owned_dst:
            continue
        with contextlib.suppress(OSError):
            _set_nonblocking(c.src)
        while not c.eof:
            data = _read(c.src)
            if not data:
                break
            if not c.dst_gone and not _write_all(c.dst, data):
                c.dst_gone = True
    return code


def _finish(c: _Copy) -> None:
    if not c.eof or c.pending:
        return
    if c.on_eof == "close" and not c.closed:
        os.close(c.dst)
        c.dst_gone = c.closed = True
    elif c.on_eof == "eot" and not c.dst_gone:
        c.on_eof = "none"
        c.pending = EOT


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    """Our terminal in raw mode for the block, restored however it ends."""
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    if saved is not None:
        ttymod.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _exit_on_hangup() -> Iterator[None]:
    """SIGTERM and SIGHUP end the client through its `finally` blocks, not around them."""

    def leave(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, leave) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def interact_tty(session: Session, stdin: int = 0, stdout: int = 1, forward_input: bool = True) -> int:
    """Drive a session whose one descriptor is the container terminal's master."""
    (master,) = session.fds
    _set_nonblocking(master)

    def resize(signum: int = 0, frame: FrameType | None = None) -> None:
        size = window_size(stdin) or window_size(stdout)
        if size is not None:
            with contextlib.suppress(OSError):
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))

    copies = [_Copy(master, stdout, owned_dst=False)]
    if forward_input:
        copies.insert(0, _Copy(stdin, master, owned_dst=True, on_eof="eot"))
    old = signal.signal(signal.SIGWINCH, resize)
    try:
        with _exit_on_hangup(), (_raw(stdin) if forward_input else contextlib.nullcontext()):
            resize()  # the window may have changed since the request
            return _pump(copies, session)
    finally:
        signal.signal(signal.SIGWINCH, old)


def interact_pipes(session: Session, stdin: int = 0, stdout: int = 1, stderr: int = 2) -> int:
    """Drive a session whose descriptors are the process's stdin, stdout and stderr ends."""
    proc_in, proc_out, proc_err = session.fds
    _set_nonblocking(proc_in)
    copies = [
        _Copy(stdin, proc_in, owned_dst=True, on_eof="close"),
        _Copy(proc_out, stdout, owned_dst=False),
        _Copy(proc_err, stderr, owned_dst=False),
    ]
    try:
        with _exit_on_hangup():
            return _pump(copies, session)
    finally:
        if copies[0].closed:
            session.fds.remove(proc_in)


def interact_stdin(session: Session, stdin: int = 0) -> int:
    """Drive a session whose one descriptor is the write end of the app's stdin (its output is
    in its log)."""
    (proc_in,) = session.fds
    _set_nonblocking(proc_in)
    copy = _Copy(stdin, proc_in, owned_dst=True, on_eof="close")
    try:
        with _exit_on_hangup():
            return _pump([copy], session)
    finally:
        if copy.closed:
            session.fds.remove(proc_in)
