"""A stand-in for the agents' queues that records what the scheduler sends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RecordingDispatcher:
    runs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    stops: list[tuple[str, str]] = field(default_factory=list)
    oneoffs: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    # (host, container id, address, readiness, deadline): checks of readiness asked again
    readies: list[tuple[str, str, str, dict[str, Any], float]] = field(default_factory=list)

    def run(self, host: str, spec: dict[str, Any]) -> None:
        self.runs.append((host, spec))

    def stop(self, host: str, container_id: str, timeout_s: float) -> None:
        self.stops.append((host, container_id))

    def oneoff(self, host: str, spec: dict[str, Any], timeout_s: float) -> None:
        self.oneoffs.append((host, spec, timeout_s))

    def ready(self, host: str, container_id: str, address: str, readiness: dict[str, Any],
              deadline: float) -> None:
        self.readies.append((host, container_id, address, readiness, deadline))
