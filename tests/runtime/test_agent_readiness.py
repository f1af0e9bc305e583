"""Readiness checks of the agent: an HTTP GET on a configured path answered 2xx or 3xx, against a
real HTTP server on a loopback socket, through a real agent process (the daemon is the fake of
tests/runtime/agent_fakes.py, which gives every container the address 127.0.0.1)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from celery import Celery

from runtime.agent.config import AgentSettings, queue_name
from runtime.agent.core import Agent
from tests.runtime.test_agent import (  # noqa: F401 — fixtures
    agent,
    daemon,
    rdb,
    redis_url,
    runtime_dir,
    settings,
    spec,
    wait_for_events,
    worker,
)


class App(ThreadingHTTPServer):
    """Answers by path; `/healthz` says 503 to the first `warming` requests, then 200."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.warming = 3
        self.seen: list[str] = []


class Handler(BaseHTTPRequestHandler):
    server: App

    def do_GET(self) -> None:
        self.server.seen.append(self.path)
        status = {"/ok": 200, "/moved": 302, "/broken": 500, "/busy": 503, "/gone": 404,
                  "/created": 201}.get(self.path, 404)
        if self.path == "/healthz":
            self.server.warming -= 1
            status = 503 if self.server.warming >= 0 else 200
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/broken")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_app() -> Iterator[App]:
    server = App()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_it_is_ready_on_2xx_and_3xx_and_not_on_4xx_5xx_or_silence(
        agent: Agent, http_app: App) -> None:  # noqa: F811
    address = f"127.0.0.1:{http_app.server_address[1]}"
    assert agent.check_ready("c", address, "http", "/moved") is True
    assert http_app.seen == ["/moved"], "a redirect is an answer, not followed"
    answers = {path: agent.check_ready("c", address, "http", path)
               for path in ("/ok", "/created", "/moved", "/gone", "/broken", "/busy")}
    assert answers == {"/ok": True, "/created": True, "/moved": True, "/gone": False,
                       "/broken": False, "/busy": False}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert agent.check_ready("c", f"127.0.0.1:{closed}", "http", "/ok") is False


@pytest.mark.slow
def test_a_real_agent_polls_the_http_path_until_ready_or_fails_at_the_deadline(
        worker: AgentSettings, rdb: redis.Redis[bytes], http_app: App) -> None:  # noqa: F811
    port = http_app.server_address[1]
    sender = Celery("controlplane-test", broker=worker.redis_url, set_as_current=False)
    sender.conf.task_serializer = "json"
    queue = queue_name(worker.host)
    good = spec(id="web1-v3-web-1", port=port,
                readiness={"type": "http", "path": "/healthz", "timeout_s": 30})
    bad = spec(id="web1-v3-web-2", port=port,
               readiness={"type": "http", "path": "/gone", "timeout_s": 1.5})
    background = spec(id="web1-v3-worker-1", process_type="worker", port=None, env={})
    for s in (good, bad, background):
        sender.send_task("agent.container_run", kwargs={"spec": s}, queue=queue)

    def ended() -> bool:
        got = {(e.id, e.state) for e in wait_for_events(rdb, worker.host, 1)}
        return {("web1-v3-web-1", "ready"), ("web1-v3-web-2", "failed"),
                ("web1-v3-worker-1", "ready")} <= got

    got = wait_for_events(rdb, worker.host, 9)
    for _ in range(100):
        if ended():
            break
        got = wait_for_events(rdb, worker.host, len(got) + 1)
    by_id: dict[str, list[str]] = {}
    for e in wait_for_events(rdb, worker.host, 1):
        by_id.setdefault(e.id, []).append(e.state)
    assert by_id["web1-v3-web-1"][-1] == "ready", by_id
    assert http_app.seen.count("/healthz") >= 4, "polled through the 503s"
    failed = [e for e in wait_for_events(rdb, worker.host, 1)
              if e.id == "web1-v3-web-2" and e.state == "failed"]
    assert failed and failed[0].message == "not ready before its deadline"
    assert "ready" not in by_id["web1-v3-web-2"]
    assert by_id["web1-v3-worker-1"][-1] == "ready", "no port, no check: running is ready"
