"""Talk to the runtime daemon over its Unix socket.

Protocol (version 1). The daemon listens on a Unix stream socket,
`$PAAS_DATA_DIR/runtime/daemon.sock` by default (mode 0600: only root may drive it). A client
writes one request as a single line of JSON and reads one or more lines of JSON back:

    request:   {"op": "<operation>", ...arguments}
    reply:     {"ok": true, "result": <value>}
    failure:   {"ok": false, "error": "<plain-words message>", "kind": "<kind>"}

`kind` is one of `invalid` (bad arguments or spec), `not_found` (no such container),
`conflict` (the container is in the wrong state for the operation) or `internal`.

Operations and their results:

    ping                                        {"version": 1, "pid": int}
    create   spec, layers, image_config         container          (state "created")
    start    id                                 container          (state "running")
    run      spec, layers, image_config,        container          (create and start in one;
             wait=false                                            with wait, reply at its exit)
    stop     id, timeout_s=10                   container          (SIGTERM, SIGKILL after timeout)
    kill     id, signal="SIGKILL"               container
    remove   id, force=false                    {"removed": id}
    exec     id, command, env={}, timeout_s=60  {"exit_code": int, "stdout": str, "stderr": str}
    list                                        [container, ...]
    inspect  id                                 container
    stats    id                                 {"memory_bytes", "memory_limit_bytes", "cpu_ns", "pids"}
    logs     id, tail=100, follow=false         streamed, see below
    events                                      streamed, see below
    exec_session  id, command, env={},          attached session, see below
             tty=false, rows=24, cols=80
    run      ..., attach="tty"|"stdin",         attached session: create, start with the app's
             rows, cols, remove=false           stdio on a pty or stdin on a pipe

`spec` is a container spec (see `runtime.spec.ContainerSpec`); `layers` the image's read-only
layer directories, bottom first; `image_config` the image's OCI config object (its `config` part:
`Env`, `Cmd`, `Entrypoint`, `WorkingDir`, `User`). A container is a JSON object:

    {"id", "state", "pid", "exit_code", "oom", "ip", "error", "created_at", "started_at",
     "finished_at", "spec"}

with `state` one of `created`, `running`, `exited`, `oom`, `failed` (it never started; `error`
says why); times are seconds since the epoch.

Streamed operations (`logs`, `events`) reply with one line per item, each `{"ok": true,
"item": {...}}`, and a final `{"ok": true, "end": true}` unless they follow, in which case the
stream lasts until the client closes the connection. A log item is
`{"time": "<RFC 3339 UTC>", "stream": "stdout"|"stderr", "line": str}`; an event item is
`{"id", "state", "exit_code", "time"}` (states as in the design's container event contract).

Attached sessions (`exec_session`, `run` with `attach`) pass file descriptors: the first reply
(`{"ok": true, "result": ...}`) carries them as SCM_RIGHTS ancillary data: the pty's master
(`tty`), the write end of the app's stdin (`run` with `stdin`) or, for `exec_session` without
`tty`, the write end of stdin and the read ends of stdout and stderr, in that order. The client
copies them itself. The last reply, `{"ok": true, "exit_code": int}`, comes when the process has
ended. Closing the connection ends the session: an exec'd command's session gets SIGHUP (SIGKILL
two seconds later), an attached `run` container is stopped. See `runtime.sessions`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

PROTOCOL_VERSION = 1


class DaemonError(RuntimeError):
    """The daemon refused or failed an operation; `kind` says which way."""

    def __init__(self, message: str, kind: str = "internal") -> None:
        super().__init__(message)
        self.kind = kind


class DaemonUnavailable(DaemonError):
    """No daemon answers on the socket."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "unavailable")


def default_socket_path() -> Path:
    """Return the daemon's socket path under `$PAAS_DATA_DIR` (default `/var/lib/paas`)."""
    return runtime_root() / "daemon.sock"


def runtime_root(env: Mapping[str, str] | None = None) -> Path:
    """Return the runtime's root directory: `$PAAS_RUNTIME_DIR` or `$PAAS_DATA_DIR/runtime`."""
    env = os.environ if env is None else env
    explicit = env.get("PAAS_RUNTIME_DIR")
    if explicit:
        return Path(explicit)
    return Path(env.get("PAAS_DATA_DIR") or "/var/lib/paas") / "runtime"


class DaemonClient:
    """A blocking client; one connection per call, so it is safe to share between threads."""

    def __init__(self, socket_path: str | os.PathLike[str] | None = None, timeout: float = 120.0):
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        self.timeout = timeout

    # -- operations ---------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return self._call({"op": "ping"})  # type: ignore[no-any-return]

    def create(
        self,
        spec: Mapping[str, Any],
        layers: list[str] | list[Path],
        image_config: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        return self._call(  # type: ignore[no-any-return]
            {
                "op": "create",
                "spec": dict(spec),
                "layers": [str(p) for p in layers],
                "image_config": dict(image_config or {}),
            }
        )

    def run(
        self,
        spec: Mapping[str, Any],
        layers: list[str] | list[Path],
        image_config: Mapping[str, Any] | None = None,
        wait: bool = False,
    ) -> dict[str, Any]:
        """Create and start a container in one request; with `wait`, return once it has ended."""
        return self._call(  # type: ignore[no-any-return]
            {
                "op": "run",
                "spec": dict(spec),
                "layers": [str(p) for p in layers],
                "image_config": dict(image_config or {}),
                "wait": wait,
            },
            timeout=None if wait else self.timeout,
        )

    def start(self, container_id: str) -> dict[str, Any]:
        return self._call({"op": "start", "id": container_id})  # type: ignore[no-any-return]

    def stop(self, container_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
        return self._call(  # type: ignore[no-any-return]
            {"op": "stop", "id": container_id, "timeout_s": timeout_s},
            timeout=timeout_s + self.timeout,
        )

    def kill(self, container_id: str, signal: str = "SIGKILL") -> dict[str, Any]:
        return self._call(  # type: ignore[no-any-return]
            {"op": "kill", "id": container_id, "signal": signal}
        )

    def remove(self, container_id: str, force: bool = False) -> dict[str, Any]:
        return self._call(  # type: ignore[no-any-return]
            {"op": "remove", "id": container_id, "force": force}
        )

    def exec(
        self,
        container_id: str,
        command: list[str],
        env: Mapping[str, str] | None = None,
        timeout_s: float = 60.0,
    ) -> dict[str, Any]:
        return self._call(  # type: ignore[no-any-return]
            {
                "op": "exec",
                "id": container_id,
                "command": list(command),
                "env": dict(env or {}),
                "timeout_s": timeout_s,
            },
            timeout=timeout_s + self.timeout,
        )

    def list(self) -> list[dict[str, Any]]:
        return self._call({"op": "list"})  # type: ignore[no-any-return]

    def inspect(self, container_id: str) -> dict[str, Any]:
        return self._call({"op": "inspect", "id": container_id})  # type: ignore[no-any-return]

    def stats(self, container_id: str) -> dict[str, Any]:
        return self._call({"op": "stats", "id": container_id})  # type: ignore[no-any-return]

    def logs(
        self, container_id: str, tail: int = 100, follow: bool = False
    ) -> Iterator[dict[str, Any]]:
        return self._stream(
            {"op": "logs", "id": container_id, "tail": tail, "follow": follow},
            timeout=None if follow else self.timeout,
        )

    def events(self) -> Iterator[dict[str, Any]]:
        return self._stream({"op": "events"}, timeout=None)

    def exec_session(
        self,
        container_id: str,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        tty: bool = False,
        size: tuple[int, int] = (24, 80),
    ) -> Session:
        """Start `command` in the container with its stdio handed to us (see `Session`)."""
        return self._session(
            {
                "op": "exec_session", "id": container_id, "command": list(command),
                "env": dict(env or {}), "tty": tty, "rows": size[0], "cols": size[1],
            }
        )

    def run_attached(
        self,
        spec: Mapping[str, Any],
        layers: Sequence[str] | Sequence[Path],
        image_config: Mapping[str, Any] | None = None,
        attach: Literal["tty", "stdin"] = "tty",
        size: tuple[int, int] = (24, 80),
        remove: bool = False,
    ) -> Session:
        """Create and start a container whose app's stdio is ours; it lives as long as the
        session (closing it stops the container); with `remove` it is removed at the end."""
        return self._session(
            {
                "op": "run", "spec": dict(spec), "layers": [str(p) for p in layers],
                "image_config": dict(image_config or {}), "attach": attach,
                "rows": size[0], "cols": size[1], "remove": remove,
            }
        )

    # -- transport ----------------------------------------------------------------------------

    def _connect(self, timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise DaemonUnavailable(
                f"the runtime daemon is not running (no answer on {self.socket_path})"
            ) from exc
        return sock

    def _call(
        self, request: dict[str, Any], timeout: float | Literal["default"] | None = "default"
    ) -> Any:
        with self._connect(self.timeout if timeout == "default" else timeout) as sock:
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as f:
                return _unwrap(f.readline())["result"]

    def _stream(self, request: dict[str, Any], timeout: float | None) -> Iterator[dict[str, Any]]:
        with self._connect(timeout) as sock:
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as f:
                for raw in f:
                    reply = _unwrap(raw)
                    if reply.get("end"):
                        return
                    yield reply["item"]


    def _session(self, request: dict[str, Any]) -> Session:
        sock = self._connect(self.timeout)
        fds: list[int] = []
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while b"\n" not in buf:
                data, got, _, _ = socket.recv_fds(sock, 1 << 16, 8, socket.MSG_CMSG_CLOEXEC)
                fds += got
                if not data:
                    break
                buf += data
            line, _, rest = buf.partition(b"\n")
            result = _unwrap(line)["result"]
        except BaseException:
            for fd in fds:
                os.close(fd)
            sock.close()
            raise
        sock.settimeout(None)
        return Session(sock, result, fds, rest)


class Session:
    """An attached session: `fds` are the process's stdio ends (see the protocol above),
    `result` the first reply's result; `read_exit` gives the exit code once it has ended."""

    def __init__(self, sock: socket.socket, result: Any, fds: list[int], buffered: bytes = b"") -> None:
        self.sock = sock
        self.result = result
        self.fds = fds
        self._buf = buffered
        self.exit_code: int | None = None

    def fileno(self) -> int:
        """The connection's descriptor: readable when the daemon has something to say."""
        return self.sock.fileno()

    def read_exit(self) -> int | None:
        """Read what the daemon sent; return the exit code once it has come (blocks until
        something can be read)."""
        if b"\n" not in self._buf:
            data = self.sock.recv(1 << 16)
            if not data:
                raise DaemonError("the runtime daemon closed the session before it ended")
            self._buf += data
        if b"\n" not in self._buf:
            return None
        line, _, self._buf = self._buf.partition(b"\n")
        reply = _unwrap(line)
        self.exit_code = int(reply["exit_code"])
        return self.exit_code

    def wait(self) -> int:
        """Block until the process has ended; return its exit code."""
        while self.exit_code is None:
            self.read_exit()
        return self.exit_code

    def close(self) -> None:
        """Close our ends; a session still running ends (see the protocol above)."""
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []
        self.sock.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unwrap(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise DaemonError("the runtime daemon closed the connection without answering")
    try:
        reply = json.loads(raw)
    except ValueError as exc:
        raise DaemonError("the runtime daemon sent a malformed reply") from exc
    if not isinstance(reply, dict):
        raise DaemonError("the runtime daemon sent a malformed reply")
    if not reply.get("ok"):
        raise DaemonError(str(reply.get("error", "unknown error")), str(reply.get("kind", "internal")))
    return reply
