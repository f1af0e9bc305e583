"""`paas logs` end to end: the installed command against real gunicorn (gthread) and Redis.

The server follows with keep-alives every 0.3 s; the module's follow answers last 600 s, so
only a freed thread lets the last test's request through in time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from paas_cli.client import ApiClient
from paas_cli.logs import format_line, show_logs
from tests.controlplane.test_cli_e2e import ROOT, Server, free_port
from tests.liveprocs import isolated_env, start_redis, stop_groups, wait_until_answers

BIN = Path(sys.executable).parent
PAAS = str(BIN / "paas")
THREADS = 2


@dataclass
class Site:
    server: Server
    redis: redis.Redis[bytes]
    home: Path
    user: str
    app: str

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAAS_")}
        env.update({"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / "config")})
        return env

    def paas(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([PAAS, *args], capture_output=True, text=True, cwd=self.home,
                                env=self.env(), timeout=60, start_new_session=True)
        assert "Traceback" not in result.stdout + result.stderr
        assert (result.returncode == 0) == ok, result.stderr
        return result

    def add(self, tag: str, line: str, when: str = "1795823999.75") -> None:
        self.redis.xadd(f"paas:logs:{self.app}", {"time": when, "tag": tag, "line": line})


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    work = Path(tempfile.mkdtemp(prefix="paas-cli-logs-"))
    port, redis_port = free_port(), free_port()
    env = isolated_env(work, redis_port, "cli-logs",
                       PAAS_LOG_FOLLOW_KEEPALIVE_MS="300",
                       PAAS_LOG_FOLLOW_MAX_S="600")
    rs = start_redis(work, redis_port)
    web: subprocess.Popen[bytes] | None = None
    log = open(work / "gunicorn.log", "wb")  # noqa: SIM115 — closed in the finally below
    client: redis.Redis[bytes] = redis.Redis(port=redis_port)
    try:
        srv = Server(url=f"http://127.0.0.1:{port}", env=env)
        srv.manage("migrate", "--verbosity", "0")
        web = subprocess.Popen(
            [str(BIN / "gunicorn"), "controlplane.wsgi", "--bind", f"127.0.0.1:{port}",
             "--workers", "1", "--worker-class", "gthread", "--threads", str(THREADS)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until_answers(web, srv.url + "/api/v1/account", work / "gunicorn.log")
        user, app = f"logs-{uuid.uuid4().hex[:6]}", f"logs-{uuid.uuid4().hex[:6]}"
        token = srv.users({user: False})[user]
        home = work / "home"
        home.mkdir()
        s = Site(srv, client, home, user, app)
        s.paas("login", "--server", srv.url, "--token", token)
        s.paas("apps:create", app, "--no-remote")
        yield s
    finally:
        client.close()
        stop_groups(web, rs)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


pytestmark = pytest.mark.slow


def test_it_prints_the_last_lines_with_time_and_tag_and_no_colour_in_a_pipe(site: Site) -> None:
    site.add("app[web.1]", "listening on 5000")
    site.add("router", "GET / 200")
    site.add("app[worker.1]", "job done")
    out = site.paas("logs", "-a", site.app, "-n", "2").stdout
    assert out == ("2026-11-27T23:59:59Z router: GET / 200\n"
                   "2026-11-27T23:59:59Z app[worker.1]: job done\n")
    assert "\x1b" not in out
    out = site.paas("logs", "-a", site.app, "--ps", "web").stdout
    assert out == "2026-11-27T23:59:59Z app[web.1]: listening on 5000\n"


def test_an_unknown_app_is_a_clear_error(site: Site) -> None:
    err = site.paas("logs", "-a", "no-such-app", ok=False).stderr
    assert err == "paas: App 'no-such-app' not found.\n"


def test_bad_options_are_refused_before_asking(site: Site) -> None:
    err = site.paas("logs", "-a", site.app, "-n", "many", ok=False).stderr
    assert "many" in err and "Traceback" not in err
    err = site.paas("logs", "-a", site.app, "--ps", "Web!", ok=False).stderr
    assert err.startswith("paas: ps must be a process type")


def test_follow_prints_new_lines_and_ends_quietly_on_ctrl_c(site: Site) -> None:
    site.add("app[web.1]", "before")
    proc = subprocess.Popen([PAAS, "logs", "-a", site.app, "-f", "-n", "1"], cwd=site.home,
                            env=site.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        # The last line printed means the server has taken its place in the stream.
        assert proc.stdout.readline() == "2026-11-27T23:59:59Z app[web.1]: before\n"
        site.add("app[web.2]", "written after paas logs -f started")
        line = proc.stdout.readline()
        assert line == "2026-11-27T23:59:59Z app[web.2]: written after paas logs -f started\n"
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and err == "" and out == ""
    finally:
        stop_groups(proc)  # type: ignore[arg-type]


def test_a_closed_follower_frees_its_server_thread(site: Site) -> None:
    url = f"{site.server.url}/api/v1/apps/{site.app}/logs?follow=1&lines=0"
    token = json.loads((site.home / "config" / "paas" / "credentials.json").read_text())["token"]
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(3):
        # Take every thread of the server with a follower, then go away.
        clients = [httpx.Client(timeout=30) for _ in range(THREADS)]
        streams = [c.stream("GET", url, headers=headers) for c in clients]
        for s in streams:
            assert s.__enter__().status_code == 200
        for s, c in zip(streams, clients, strict=True):
            s.__exit__(None, None, None)
            c.close()
    # Were the threads still following (600 s), this would wait for one in vain.
    r = httpx.get(f"{site.server.url}/api/v1/apps/{site.app}/logs?lines=1", headers=headers,
                  timeout=30)
    assert r.status_code == 200


# --- the client's side of reconnecting, against answers made up here -------------------------


def test_it_reconnects_from_the_last_line_when_a_follow_answer_ends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    asked: list[dict[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        asked.append(params)
        if len(asked) == 1:
            body: list[Any] = [{"id": "5-0", "time": "2026-11-27T23:59:58.1Z", "tag": "router",
                                "line": "first"}, None, {"reconnect": {"after": "6-0"}}]
        elif len(asked) == 2:
            body = [{"id": "7-0", "time": "2026-11-27T23:59:59.9Z", "tag": "app[web.1]",
                     "line": "second"}]  # then the connection ends without a hint
        else:
            raise KeyboardInterrupt  # the user has seen enough
        text = "".join(json.dumps(x) + "\n" if x else "\n" for x in body)
        return httpx.Response(200, text=text, headers={"Content-Type": "application/x-ndjson"})

    api = ApiClient("http://paas.test", "t", transport=httpx.MockTransport(answer))
    assert show_logs(api, "shop", 10, "web", follow=True) == 0
    assert capsys.readouterr().out == ("2026-11-27T23:59:58Z router: first\n"
                                       "2026-11-27T23:59:59Z app[web.1]: second\n")
    assert asked[0] == {"lines": "10", "ps": "web", "follow": "1"}
    assert asked[1] == {"lines": "0", "ps": "web", "follow": "1", "after": "6-0"}
    assert asked[2]["after"] == "7-0"


def test_it_colours_time_and_tag_on_a_terminal() -> None:
    line = format_line({"time": "2026-11-27T23:59:59.5Z", "tag": "app[web.1]", "line": "hi"}, True)
    assert line.startswith("\x1b[2m2026-11-27T23:59:59Z\x1b[0m \x1b[") and line.endswith(" hi")
