"""`paas run` end to end, as root: the real `paas` command against real gunicorn (gthread), which
sends the one-off through a real redis-server to a real agent, which runs it with a real runtime
daemon (with networking) and streams its output back through Redis and the web process.

The web process has its own SQLite database (the test database is not visible to another
process), so the host and the app's build are recorded through `manage.py shell`.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.images import ImageStore
from runtime.tinyimage import build_tiny_image
from tests.controlplane.test_cli_e2e import BIN, PAAS, ROOT, Server, free_port
from tests.liveprocs import isolated_env, start_redis, stop_groups, wait_until_answers
from tests.runtime.daemon_fixtures import Daemon

pytestmark = [pytest.mark.root, pytest.mark.slow]


@dataclass
class Platform:
    server: Server
    daemon: Daemon
    host: str
    app: str
    home: Path

    def paas(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([PAAS, *args], capture_output=True, text=True, env=self.env(),
                                cwd=self.home, timeout=timeout, start_new_session=True)
        assert "Traceback" not in result.stdout + result.stderr
        return result

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAAS_")}
        env.update({"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / "config")})
        return env

    def ours(self) -> set[str]:
        """The one-off containers of the app the daemon has."""
        return {c["id"] for c in self.daemon.client.list() if c["id"].startswith(f"{self.app}.run.")}


SETUP = """
import json
from core.actions import app_create, build_create, build_finish, host_register, token_create, user_create
user = user_create(actor=None, username={user!r}, email="runner@example.com", is_staff=True)
host_register(actor=user, name={host!r}, address="127.0.0.1", memory_mb=4096, cpus=4)
app = app_create(actor=user, name={app!r})
build = build_create(actor=user, app=app, commit="c" * 40)
build_finish(actor=user, build=build, succeeded=True, image_digest={image!r},
             process_types={{"web": "exec httpd -f -p $PORT -h /"}})
print(json.dumps({{"token": token_create(actor=user, description="run")[1]}}))
"""


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (it runs real containers)")
    work = Path(tempfile.mkdtemp(prefix="paas-cli-run-"))
    port, redis_port = free_port(), free_port()
    env = isolated_env(work, redis_port, "cli-run")
    subnet = f"10.{random.randint(160, 250)}.{random.randint(0, 255)}.0/24"
    daemon = Daemon(work / "runtime", network=(f"pr{secrets.token_hex(3)}", subnet))
    daemon.root.mkdir()
    host = f"run-{secrets.token_hex(4)}"
    redis = web = agent = None
    logs = [open(work / name, "wb") for name in ("gunicorn.log", "agent.log")]  # noqa: SIM115
    try:
        redis = start_redis(work, redis_port)
        daemon.start()
        store = ImageStore(daemon.root / "images")
        image = store.resolve(build_tiny_image(store)).digest
        server = Server(url=f"http://127.0.0.1:{port}", env=env)
        server.manage("migrate", "--verbosity", "0")
        app = f"r{secrets.token_hex(4)}"
        out = server.manage("shell", "--verbosity", "0", "-c", SETUP.format(
            user=f"runner-{secrets.token_hex(3)}", host=host, app=app, image=image)).stdout
        token = out.strip().splitlines()[-1].split('"token": "')[1].rstrip('"}')
        web = subprocess.Popen(
            [str(BIN / "gunicorn"), "controlplane.wsgi", "--bind", f"127.0.0.1:{port}",
             "--workers", "1", "--worker-class", "gthread", "--threads", "4"],
            cwd=ROOT, env=env, stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True)
        agent = subprocess.Popen(
            [sys.executable, "-m", "runtime.agent", "--host", host], cwd=ROOT,
            env=dict(env, PAAS_RUNTIME_DIR=str(daemon.root), PAAS_AGENT_HEARTBEAT_S="1"),
            stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True)
        wait_until_answers(web, server.url + "/api/v1/account", work / "gunicorn.log")
        home = work / "home"
        home.mkdir()
        p = Platform(server, daemon, host, app, home)
        login = p.paas("login", "--server", server.url, "--token", token)
        assert login.returncode == 0, login.stderr
        yield p
    finally:
        stop_groups(agent, web)
        for c in daemon.client.list() if daemon.proc is not None else []:
            daemon.made.append(c["id"])
        daemon.cleanup()
        daemon.stop()
        daemon.teardown_network()
        stop_groups(redis)
        for f in logs:
            f.close()
        shutil.rmtree(work, ignore_errors=True)


def wait_for(check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_it_prints_the_output_in_order_and_exits_with_the_commands_status(platform: Platform) -> None:
    script = "for i in 1 2 3 4 5; do echo out $i; done; echo oops >&2; echo PORT=$PORT DYNO=$DYNO; exit 3"
    result = platform.paas("run", "-a", platform.app, "--", "sh", "-c", script)
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:5] == [f"out {i}" for i in range(1, 6)]
    assert lines[5].startswith("PORT=5000 DYNO=run.")
    assert "oops" in result.stderr and f"on {platform.app} as run." in result.stderr
    wait_for(lambda: not platform.ours())  # removed after its exit


def test_it_exits_0_after_a_command_that_succeeds(platform: Platform) -> None:
    result = platform.paas("run", "-a", platform.app, "--", "true")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_ctrl_c_stops_the_one_off_while_its_output_streams(platform: Platform) -> None:
    proc = subprocess.Popen(
        [PAAS, "run", "-a", platform.app, "--", "sh", "-c", "echo started; sleep 300"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=platform.env(),
        cwd=platform.home, start_new_session=True)
    try:
        assert proc.stdout is not None
        # The line arrives while the command still runs: the output streams through gunicorn.
        assert proc.stdout.readline() == "started\n"
        running = platform.ours()
        assert len(running) == 1
        # `paas ps` shows it while it runs.
        shown = json.loads(platform.paas("ps", "-a", platform.app, "--json").stdout)["runs"]
        assert [r["id"] for r in shown] == sorted(running) and shown[0]["name"].startswith("run.")
        assert shown[0]["name"] in platform.paas("ps", "-a", platform.app).stdout
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        assert "stopped run." in (proc.stderr.read() if proc.stderr else "")
        wait_for(lambda: not (platform.ours() & running), timeout=60)
    finally:
        stop_groups(proc)  # type: ignore[arg-type]


def test_it_says_clearly_when_the_app_has_nothing_to_run(platform: Platform) -> None:
    bare = f"b{secrets.token_hex(4)}"
    assert platform.paas("apps:create", bare, "--no-remote").returncode == 0
    result = platform.paas("run", "-a", bare, "--", "true")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"paas: '{bare}' has no release to run yet: deploy it first (git push paas main).")


def test_it_says_clearly_when_the_image_is_missing_on_the_host(platform: Platform) -> None:
    missing = "sha256:" + "0" * 64
    code = (
        "from django.contrib.auth import get_user_model\n"
        "from core.actions import build_create, build_finish\n"
        "from core.models import App\n"
        "user = get_user_model().objects.filter(is_staff=True).first()\n"
        f"app = App.objects.get(name={platform.app!r})\n"
        "build = build_create(actor=user, app=app, commit='d' * 40)\n"
        f"build_finish(actor=user, build=build, succeeded=True, image_digest={missing!r},\n"
        "             process_types={'web': 'true'})\n"
    )
    platform.server.manage("shell", "--verbosity", "0", "-c", code)
    result = platform.paas("run", "-a", platform.app, "--", "true")
    assert result.returncode == 1
    assert "did not run to its end" in result.stderr and missing[:20] in result.stderr, result.stderr


def test_it_says_clearly_when_no_host_can_take_it(platform: Platform) -> None:
    def host_state(state: str) -> None:
        platform.server.manage("shell", "--verbosity", "0", "-c",
                               "from core.models import Host\n"
                               f"Host.objects.filter(name={platform.host!r}).update(state={state!r})\n")

    host_state("down")
    try:
        result = platform.paas("run", "-a", platform.app, "--", "true")
    finally:
        host_state("ready")
    assert result.returncode == 1
    assert result.stderr.startswith(f"paas: The one-off cannot start: no ready host to place {platform.app} run")
