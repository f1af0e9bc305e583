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

import redis

from runtime import hostroutes
from runtime.agent.config import AgentSettings
from runtime.agent.reports import ContainerUsage, Heartbeat, Reporter, host_capacity
from runtime.client import DaemonClient, DaemonError, DaemonUnavailable
from runtime.hostroutes import RouteError, RouteTable
from runtime.images import Image, ImageError, ImageNotFound, ImagePuller, ImageStore
from runtime.network import HostNetwork, NetworkError
from runtime.spec import ID_RE, ContainerSpec, SpecError

log = logging.getLogger("paas.agent")

CHECK_STALE_S = 10.0  # a readiness chain that has not polled for this long was lost


class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    """Hand a 3xx back as it is instead of following it (and no proxy from the environment)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_NO_REDIRECTS = urllib.request.build_opener(urllib.request.ProxyHandler({}), _KeepRedirects())


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
        # Per running container: (CPU nanoseconds counted so far, time of that sample).
        self._cpu_seen: dict[str, tuple[int, float]] = {}
        self._puller: ImagePuller | None = None
        self._puller_guard = threading.Lock()
        self._routes: RouteTable | None = None
        # Per container whose readiness is being polled: (the polling chain's token, last poll).
        self._checks: dict[str, tuple[str, float]] = {}
        self._checks_guard = threading.Lock()

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
            image = self._image(spec.app, spec.image)
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

    def _image(self, app: str, ref: str) -> Image:
        """Resolve `ref` in the host's store, pulling it by digest from the controller if missing."""
        store = ImageStore(self.settings.image_root)
        try:
            return store.resolve(ref)
        except ImageNotFound:
            if not (self.settings.controller_url and ref.startswith("sha256:")):
                raise
        with self._puller_guard:
            if self._puller is None:
                self._puller = ImagePuller(store, self.settings.controller_url,
                                           self.settings.host_token)
            puller = self._puller
        log.info("pulling image %s of %s from %s", ref, app, self.settings.controller_url)
        puller.pull(app, ref)
        return store.resolve(ref)

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
        """Return whether the container answers: a TCP connect, or an HTTP GET of `path`
        answered 2xx or 3xx (a redirect is not followed: answering it is being ready)."""
        host, _, port = address.rpartition(":")
        try:
            if kind == "http":
                url = f"http://{host}:{port}{path}"
                with _NO_REDIRECTS.open(url, timeout=2) as resp:
                    return 200 <= int(resp.status) < 400
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        except urllib.error.HTTPError as e:
            return 200 <= e.code < 400
        except (OSError, ValueError):
            return False

    def readiness_claim(self, container_id: str, chain: str, now: float | None = None) -> bool:
        """Whether the readiness check `chain` may poll the container now.

        One chain polls a container at a time: a check the control plane sends again (it heard
        nothing, say because this agent was restarted and lost its pending check) while another
        one still polls ends at once; a chain not seen for `CHECK_STALE_S` was lost and the
        next one takes over."""
        now = time.time() if now is None else now
        with self._checks_guard:
            owner = self._checks.get(container_id)
            if owner is not None and owner[0] != chain and now - owner[1] < CHECK_STALE_S:
                return False
            self._checks[container_id] = (chain, now)
            return True

    def readiness_done(self, container_id: str, chain: str) -> None:
        """The chain `chain` has its answer (ready, failed, or the container is gone)."""
        with self._checks_guard:
            if self._checks.get(container_id, ("", 0.0))[0] == chain:
                del self._checks[container_id]

    def container_state(self, container_id: str) -> str | None:
        try:
            state = self.daemon.inspect(container_id).get("state")
        except DaemonError:
            return None
        return str(state) if state else None

    # -- reports ----------------------------------------------------------------------------

    def heartbeat(self) -> Heartbeat:
        """Gather the host's capacity and usage and write a heartbeat.

        Each running container's entry carries its memory (`memory_bytes`) and, from the second
        beat on, its CPU use since the last beat (`cpu_percent` of one core); the same figures go
        to the per-app per-minute runtime metrics. A failed stats call leaves them out.
        """
        cap = host_capacity(self.proc)
        now = time.time()
        usage: list[ContainerUsage] = []
        try:
            listed = self.daemon.list()
            daemon = "up"
        except DaemonError:
            listed, daemon = [], "unavailable"
        containers = []
        for c in listed:
            spec = c.get("spec") or {}
            entry = {"id": c.get("id"), "state": c.get("state"), "ip": c.get("ip"),
                     "memory_mb": spec.get("memory_mb", 0)}
            if c.get("state") == "running" and isinstance(c.get("id"), str):
                sample = self._sample(c["id"], str(spec.get("app") or ""), now)
                if sample is not None:
                    entry["memory_bytes"] = sample.memory_bytes
                    if sample.cpu_percent is not None:
                        entry["cpu_percent"] = sample.cpu_percent
                    usage.append(sample)
            containers.append(entry)
        listed_ids = {c["id"] for c in containers}
        for gone in [cid for cid in self._cpu_seen if cid not in listed_ids]:
            del self._cpu_seen[gone]
        beat = Heartbeat(
            host=self.settings.host,
            time=now,
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
        if self.settings.host_address:
            try:
                self.sync_routes()
            except (redis.RedisError, NetworkError, RouteError, OSError) as e:
                log.warning("syncing the routes to other hosts failed: %s", e)
        if usage:
            try:
                self.reporter.runtime_metrics(usage, now)
            except redis.RedisError as e:  # the heartbeat itself went through
                log.warning("writing the runtime metrics failed: %s", e)
        return beat

    def sync_routes(self) -> tuple[dict[str, str], list[str]]:
        """Announce this host's subnet and route to every other live host's (`runtime.hostroutes`)."""
        s = self.settings
        if self._routes is None:
            self._routes = HostNetwork(s.bridge, s.subnet, s.runtime_root / "network")
        r = self.reporter.redis
        hostroutes.announce(r, s.host, s.host_address, s.subnet, ttl_s=s.heartbeat_s * 3)
        return hostroutes.sync(r, self._routes, s.host, s.subnet)

    def _sample(self, cid: str, app: str, now: float) -> ContainerUsage | None:
        """One stats call: memory now, and CPU used since the container's previous sample."""
        try:
            stats = self.daemon.stats(cid)
            memory, cpu_ns = int(stats["memory_bytes"]), int(stats["cpu_ns"])
        except (DaemonError, OSError, KeyError, TypeError, ValueError) as e:
            log.debug("no stats for container %s: %s", cid, e)
            return None
        if not app:
            app = cid.split(".", 1)[0]  # the reconciler's ids: <app>.<type>.<n>.<hex>
        previous = self._cpu_seen.get(cid)
        cpu_millis, cpu_percent, counted_ns = 0, None, cpu_ns
        if previous is not None and cpu_ns >= previous[0] and now > previous[1]:
            cpu_millis = (cpu_ns - previous[0]) // 1_000_000
            # Carry the part below a millisecond to the next beat, so no CPU time is lost.
            counted_ns = previous[0] + cpu_millis * 1_000_000
            cpu_percent = round((cpu_ns - previous[0]) / ((now - previous[1]) * 1e9) * 100, 2)
        self._cpu_seen[cid] = (counted_ns, now)
        return ContainerUsage(id=cid, app=app, memory_bytes=memory, cpu_millis=cpu_millis,
                              cpu_percent=cpu_percent)

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
