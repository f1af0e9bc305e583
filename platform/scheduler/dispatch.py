"""The boundary to the host agents: container specs and stops go to each host's own queue.

`current` is what the scheduler sends through; tests put a recorder there
(`tests/scheduler/fakes.py`), production uses Celery's `send_task` to `host.<name>`.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from scheduler.conf import SchedulerSettings

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def run(self, host: str, spec: dict[str, Any]) -> None: ...

    def stop(self, host: str, container_id: str, timeout_s: float) -> None: ...

    def oneoff(self, host: str, spec: dict[str, Any], timeout_s: float) -> None: ...

    def ready(self, host: str, container_id: str, address: str, readiness: dict[str, Any],
              deadline: float) -> None: ...


class CeleryDispatcher:
    """Send `agent.container_run` / `agent.container_stop` / `agent.oneoff_run` /
    `agent.container_ready` to the agent's queue `host.<name>`."""

    def run(self, host: str, spec: dict[str, Any]) -> None:
        from controlplane.celery import app

        app.send_task("agent.container_run", kwargs={"spec": spec}, queue=f"host.{host}")

    def stop(self, host: str, container_id: str, timeout_s: float) -> None:
        """Stop a container after `PAAS_STOP_DRAIN_S` (default 2 s).

        A stop follows the route-table change that took the container out; routers apply that
        change a moment later (pub/sub), and until then may still send it requests. The agent
        gets the stop only after this pause, so no request lands on a container going away.
        """
        from controlplane.celery import app

        drain_s = SchedulerSettings.from_env().stop_drain_s
        app.send_task(
            "agent.container_stop",
            kwargs={"container_id": container_id, "timeout_s": timeout_s},
            queue=f"host.{host}",
            countdown=drain_s,
        )

    def oneoff(self, host: str, spec: dict[str, Any], timeout_s: float) -> None:
        from controlplane.celery import app

        app.send_task("agent.oneoff_run", kwargs={"spec": spec, "timeout_s": timeout_s},
                      queue=f"host.{host}")

    def ready(self, host: str, container_id: str, address: str, readiness: dict[str, Any],
              deadline: float) -> None:
        """Ask the agent again whether a container is ready (its own check was lost): it polls
        until `deadline` (epoch seconds) and reports `ready` or `failed`."""
        from controlplane.celery import app

        app.send_task(
            "agent.container_ready",
            kwargs={"container_id": container_id, "address": address,
                    "kind": str(readiness.get("type") or "tcp"),
                    "path": str(readiness.get("path") or "/"), "deadline": deadline},
            queue=f"host.{host}",
        )


current: Dispatcher = CeleryDispatcher()
