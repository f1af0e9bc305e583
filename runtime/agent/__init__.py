"""The host agent: a Celery worker on the host's own queue `host.<name>` that drives the daemon.

It receives container specs as tasks, validates them, resolves their images in the host's image
store, creates and starts the containers through the runtime daemon, and reports what it sees
back through Redis streams (`runtime.agent.reports`). It never touches the database and never
imports Django: it has its own Celery app, configured from the environment.
"""

from __future__ import annotations

from runtime.agent.config import AgentSettings, queue_name

__all__ = ["AgentSettings", "queue_name"]
