"""A stand-in for the runtime daemon that speaks its socket protocol (`runtime.client`).

Real containers need root and take a while; the agent's tests need only the daemon's answers.
It records every request so tests can see what the agent asked for.
"""

from __future__ import annotations

import json
import queue
import socketserver
import threading
import time
from pathlib import Path
from typing import Any


class FakeDaemon:
    def __init__(self, socket_path: Path, ip: str = "127.0.0.1") -> None:
        self.socket_path = socket_path
        self.ip = ip
        self.requests: list[dict[str, Any]] = []
        self.containers: dict[str, dict[str, Any]] = {}
        self.listeners: list[queue.Queue[dict[str, Any] | None]] = []
        # What `stats` answers per container id; a container without an entry gets an error.
        self.usage: dict[str, dict[str, int]] = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                if not line:
                    return
                request = json.loads(line)
                with fake.lock:
                    fake.requests.append(request)
                if request["op"] == "events":
                    fake._stream_events(self)
                    return
                try:
                    reply = {"ok": True, "result": fake._answer(request)}
                except LookupError as e:
                    reply = {"ok": False, "error": str(e), "kind": "not_found"}
                except ValueError as e:
                    reply = {"ok": False, "error": str(e), "kind": "conflict"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

        self.server = socketserver.ThreadingUnixStreamServer(str(socket_path), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def ops(self) -> list[str]:
        with self.lock:
            return [r["op"] for r in self.requests]

    def _container(self, cid: str) -> dict[str, Any]:
        if cid not in self.containers:
            raise LookupError(f"no container {cid}")
        return self.containers[cid]

    def _answer(self, request: dict[str, Any]) -> Any:
        op = request["op"]
        with self.lock:
            if op == "ping":
                return {"version": 1, "pid": 1}
            if op == "create":
                cid = request["spec"]["id"]
                if cid in self.containers:
                    raise ValueError(f"container {cid} exists")
                self.containers[cid] = {"id": cid, "state": "created", "pid": None, "ip": None,
                                        "exit_code": None, "spec": request["spec"]}
                return self.containers[cid]
            if op == "start":
                c = self._container(request["id"])
                c.update(state="running", pid=4242, ip=self.ip)
                return c
            if op == "inspect":
                return self._container(request["id"])
            if op == "list":
                return list(self.containers.values())
            if op == "stats":
                c = self._container(request["id"])
                if c["state"] != "running" or request["id"] not in self.usage:
                    raise ValueError(f"container {request['id']} is not running")
                return dict(self.usage[request["id"]])
            if op == "stop":
                c = self._container(request["id"])
                c.update(state="exited", exit_code=0)
                return c
            if op == "remove":
                self._container(request["id"])
                del self.containers[request["id"]]
                return {"removed": request["id"]}
        raise ValueError(f"unsupported op {op}")

    def exit(self, cid: str, code: int, state: str = "exited") -> None:
        """Make a running container exit, as a crashing app would."""
        with self.lock:
            c = self.containers[cid]
            c.update(state=state, exit_code=code)
            for q in self.listeners:
                q.put({"id": cid, "state": state, "exit_code": code, "time": time.time()})

    def _stream_events(self, handler: socketserver.StreamRequestHandler) -> None:
        q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        with self.lock:
            self.listeners.append(q)
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                handler.wfile.write(json.dumps({"ok": True, "item": item}).encode() + b"\n")
                handler.wfile.flush()
        except OSError:
            return
        finally:
            with self.lock:
                self.listeners.remove(q)

    def listening(self) -> int:
        with self.lock:
            return len(self.listeners)

    def close(self) -> None:
        with self.lock:
            for q in self.listeners:
                q.put(None)
        self.server.shutdown()
        self.server.server_close()
        self.socket_path.unlink(missing_ok=True)
