"""The agent's Celery app: tasks on the host's queue, heartbeat and event threads in the worker.

Task names (the control plane sends them with `send_task(name, kwargs=..., queue="host.<name>")`):

    agent.container_run     spec: dict                               create and start a container
    agent.container_stop    container_id: str, timeout_s: float=10   stop and remove it
    agent.container_ready   container_id, address, kind, path, deadline, chain=""   (the
                            agent's own follow-up: polls readiness until the deadline, then
                            reports; the control plane sends it again when it heard nothing,
                            and a second chain for a container already polled ends at once)
    agent.oneoff_run        spec: dict, timeout_s: float             run a one-off to its end on
                            a thread of its own, its output to `paas:run:<id>` (see
                            `runtime.agent.oneoff`)

Serialization is JSON only; results are not stored (reports go to the Redis streams of
`runtime.agent.reports`).
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import redis
from celery import Celery, Task
from celery.signals import worker_ready, worker_shutdown

from runtime.agent.config import AgentSettings
from runtime.agent.core import Agent, every
from runtime.agent.logship import log_shipper
from runtime.agent.oneoff import resume_oneoffs, start_oneoff
from runtime.agent.reports import Reporter

READY_POLL_S = 0.5


def make_app(settings: AgentSettings, agent: Agent | None = None) -> Celery:
    """Build the agent's Celery app for `settings`, with its tasks registered."""
    app = Celery("paas-agent", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=settings.queue,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    if agent is None:
        agent = Agent(settings, Reporter(redis.Redis.from_url(settings.redis_url), settings.host))
    app.agent = agent

    @app.task(name="agent.container_run", bind=True)  # type: ignore[untyped-decorator]
    def container_run(self: Task, *, spec: dict[str, Any]) -> dict[str, Any]:
        result = agent.run(spec)
        parsed = spec if isinstance(spec, dict) else {}
        port = parsed.get("port")
        if result["ok"] and port and result.get("address"):
            readiness = parsed.get("readiness") or {}
            timeout = float(readiness.get("timeout_s", 60.0))
            container_ready.apply_async(
                kwargs={
                    "container_id": result["id"],
                    "address": result["address"],
                    "kind": readiness.get("type", "tcp"),
                    "path": readiness.get("path", "/"),
                    "deadline": time.time() + timeout,
                    "chain": secrets.token_hex(4),
                },
                queue=settings.queue,
            )
        elif result["ok"]:
            # No port, no readiness check (a worker): running is ready.
            agent.reporter.event(result["id"], "ready", address=result.get("address") or "")
        return result

    @app.task(name="agent.container_stop")  # type: ignore[untyped-decorator]
    def container_stop(*, container_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
        return agent.stop(container_id, timeout_s=float(timeout_s))

    @app.task(name="agent.oneoff_run")  # type: ignore[untyped-decorator]
    def oneoff_run(*, spec: dict[str, Any], timeout_s: float = 3600.0) -> dict[str, Any]:
        return start_oneoff(agent, spec, float(timeout_s))

    @app.task(name="agent.container_ready", bind=True)  # type: ignore[untyped-decorator]
    def container_ready(
        self: Task, *, container_id: str, address: str, kind: str, path: str, deadline: float,
        chain: str = "",
    ) -> str:
        chain = chain or secrets.token_hex(4)
        if not agent.readiness_claim(container_id, chain):
            return "checking"  # another chain polls it already (a check sent again)
        if agent.container_state(container_id) != "running":
            agent.readiness_done(container_id, chain)
            return "gone"  # it exited meanwhile; the event relay reported that
        if agent.check_ready(container_id, address, kind, path):
            agent.reporter.event(container_id, "ready", address=address)
            agent.readiness_done(container_id, chain)
            return "ready"
        if time.time() >= deadline:
            agent.reporter.event(
                container_id, "failed", address=address, message="not ready before its deadline"
            )
            agent.readiness_done(container_id, chain)
            return "failed"
        self.apply_async(
            kwargs={
                "container_id": container_id,
                "address": address,
                "kind": kind,
                "path": path,
                "deadline": deadline,
                "chain": chain,
            },
            countdown=READY_POLL_S,
            queue=settings.queue,
        )
        return "waiting"

    return app


def run_worker(settings: AgentSettings, loglevel: str = "INFO") -> None:
    """Run the agent: a Celery worker on the host's queue, plus heartbeat and event threads."""
    app = make_app(settings)
    agent: Agent = app.agent
    stop = threading.Event()

    def start_threads(**_kwargs: Any) -> None:
        resume_oneoffs(agent)
        threading.Thread(
            target=every, args=(settings.heartbeat_s, stop, agent.heartbeat), name="heartbeat",
            daemon=True,
        ).start()
        threading.Thread(
            target=agent.relay_events, args=(stop,), name="events", daemon=True
        ).start()
        threading.Thread(
            target=log_shipper(settings).run, args=(stop,), name="logs", daemon=True
        ).start()

    def stop_threads(**_kwargs: Any) -> None:
        stop.set()

    worker_ready.connect(start_threads, weak=False)
    worker_shutdown.connect(stop_threads, weak=False)
    app.worker_main(
        [
            "worker",
            "--queues", settings.queue,
            "--hostname", f"agent@{settings.host}",
            "--pool", "threads",
            "--concurrency", str(settings.concurrency),
            "--loglevel", loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )
