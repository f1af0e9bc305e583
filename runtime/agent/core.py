"""What the agent does, free of Celery: run, stop and remove containers, check readiness, beat.

The Celery tasks in `runtime.agent.app` are thin shells over `Agent`'s methods.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.agent.config import AgentSettings
from runtime.agent.reports import Heartbeat, Reporter, host_capacity
from runtime.client import DaemonClient, DaemonError, DaemonUnavailable
from runtime.images import ImageError, ImageStore
from runtime.spec import ID_RE, ContainerSpec, SpecError

log = logging.getLogger("paas.agent")


class Agent:
    """Drive the daemon for the control plane and report what happens."""

    def __init__(
        self,
        settings: AgentSettings,
        reporter: Reporter,
        daemon: DaemonClient | None = None,
        proc: Path = Path("/proc"),
    ) -> None:
        self.settings = settings
        self.reporter = reporter
        self.daemon = daemon or DaemonClient(settings.daemon_socket)
        self.proc = proc

    # -- containers -------------------------------------------------------------------------

    def run(self, raw_spec: object) -> dict[str, Any]:
        """Validate a container spec, resolve its image, create and start it; report each step.

        Return a summary; a bad spec, a missing image or a daemon refusal is reported as a
        `failed` event and returned, never raised (retrying would not help).
        """
        try:
            spec = ContainerSpec.from_dict(raw_spec)
        except SpecError as e:
            cid = raw_spec.get("id") if isinstance(raw_spec, dict) else None
            cid = cid if isinstance(cid, str) and ID_RE.fullmatch(cid) else ""
            self.reporter.event(cid, "failed", message=f"invalid container spec: {e}")
            return {"ok": False, "id": cid, "error": f"invalid container spec: {e}"}
        about = {"app": spec.app, "release": spec.release, "process_type": spec.process_type}
        try:
            image = ImageStore(self.settings.image_root).resolve(spec.image)
        except ImageError as e:
            self.reporter.event(spec.id, "failed", message=str(e), **about)
            return {"ok": False, "id": spec.id, "error": str(e)}
        self.reporter.event(spec.id, "starting", **about)
        try:
            try:
                self.daemon.create(spec.to_dict(), image.layers, image.config.get("config", {}))
            except DaemonError as e:
                if e.kind != "conflict":
                    raise
                # Already created: a redelivered task. Start it if it is not running yet.
            container = self.daemon.inspect(spec.id)
            if container.get("state") != "running":
                container = self.daemon.start(spec.id)
        except DaemonError as e:
            self.reporter.event(spec.id, "failed", message=str(e), **about)
            return {"ok": False, "id": spec.id, "error": str(e)}
        ip = container.get("ip") or ""
        address = f"{ip}:{spec.port}" if ip and spec.port else ""
        self.reporter.event(spec.id, "running", address=address, **about)
        return {"ok": True, "id": spec.id, "address": address, "image": image.digest}

    def stop(self, container_id: str, timeout_s: float = 10.0, remove: bool = True) -> dict[str, Any]:
        """Stop a container (SIGTERM, then SIGKILL after `timeout_s`) and remove it."""
        if not ID_RE.fullmatch(container_id):
            return {"ok": False, "error": f"invalid container id {container_id!r}"}
        try:
            container = self.daemon.stop(container_id, timeout_s=timeout_s)
            if remove:
                self.daemon.remove(container_id, force=True)
        except DaemonError as e:
            if e.kind == "not_found":
                return {"ok": True, "id": container_id, "gone": True}
            self.reporter.event(container_id, "failed", message=str(e))
            return {"ok": False, "id": container_id, "error": str(e)}
        self.reporter.event(container_id, "exited", exit_code=container.get("exit_code"))
        return {"ok": True, "id": container_id}

    def check_ready(self, container_id: str, address: str, kind: str, path: str) -> bool:
        """Return whether the container answers: a TCP connect, or an HTTP GET below 500."""
        host, _, port = address.rpartition(":")
        try:
            if kind == "http":
                url = f"http://{host}:{port}{path}"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return int(resp.status) < 500
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        except urllib.error.HTTPError as e:
            return e.code < 500
        except (OSError, ValueError):
            return False

    def container_state(self, container_id: str) -> str | None:
        try:
            state = self.daemon.inspect(container_id).get("state")
        except DaemonError:
            return None
        return str(state) if state else None

    # -- reports ----------------------------------------------------------------------------

    def heartbeat(self) -> Heartbeat:
        """Gather the host's capacity and usage and write a heartbeat."""
        cap = host_capacity(self.proc)
        try:
            containers = [
                {"id": c.get("id"), "state": c.get("state"), "ip": c.get("ip")}
                | {"memory_mb": (c.get("spec") or {}).get("memory_mb", 0)}
                for c in self.daemon.list()
            ]
            daemon = "up"
        except DaemonError:
            containers, daemon = [], "unavailable"
        beat = Heartbeat(
            host=self.settings.host,
            time=time.time(),
            cpus=int(cap["cpus"]),
            memory_mb=int(cap["memory_mb"]),
            memory_available_mb=int(cap["memory_available_mb"]),
            load1=float(cap["load1"]),
            memory_reserved_mb=sum(
                int(c["memory_mb"] or 0) for c in containers if c["state"] == "running"
            ),
            daemon=daemon,
            containers=containers,
        )
        self.reporter.heartbeat(beat, self.settings.heartbeat_s)
        return beat

    def relay_events(self, stop: threading.Event) -> None:
        """Forward the daemon's container events (exits, OOM kills) until `stop` is set."""
        while not stop.is_set():
            try:
                for item in self.daemon.events():
                    state = str(item.get("state", ""))
                    if state in ("exited", "oom", "failed"):
                        code = item.get("exit_code")
                        self.reporter.event(
                            str(item.get("id", "")),
                            state,
                            exit_code=int(code) if isinstance(code, int) else None,
                        )
                    if stop.is_set():
                        return
            except DaemonUnavailable:
                pass  # the daemon is (re)starting; try again shortly
            except (DaemonError, OSError, ValueError) as e:
                log.warning("following the daemon's events failed: %s", e)
            stop.wait(1.0)


def every(interval_s: float, stop: threading.Event, fn: Callable[[], object]) -> None:
    """Call `fn` now and every `interval_s` until `stop` is set; errors do not stop the loop."""
    while not stop.is_set():
        try:
            fn()
        except Exception:  # a failed beat (Redis away) must not end the heartbeat thread
            log.exception("periodic %s failed", getattr(fn, "__name__", "task"))
        stop.wait(interval_s)
