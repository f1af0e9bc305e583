"""A real control plane (gunicorn, SQLite in a throw-away data dir, its own redis-server) with
the tiny busybox image as the build stack, and people who push to it with the real `git`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.liveprocs import free_port, isolated_env, start_redis, stop_groups, wait_until_answers

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Server:
    url: str
    env: dict[str, str]
    data: Path
    log: Path

    def shell(self, code: str) -> str:
        result = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "shell", "--verbosity", "0", "-c", code],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def query(self, code: str) -> object:
        """Run `code`, which sets `out`, in the server's Django; return `out` (JSON)."""
        return json.loads(self.shell(code + "\nimport json; print(json.dumps(out))").splitlines()[-1])


@contextlib.contextmanager
def running_server(extra_env: dict[str, str] | None = None,
                   prepare: Callable[[Path], None] | None = None) -> Iterator[Server]:
    """Run the control plane in a throw-away data dir; `prepare(data_dir)` runs before the web
    process starts (by default it puts the tiny image in the store as the build stack)."""
    work = Path(tempfile.mkdtemp(prefix="paas-git-"))
    port, redis_port = free_port(), free_port()
    defaults = {"PAAS_BUILD_STACK": "tiny", "PAAS_BUILD_PROGRESS_S": "1",
                "PAAS_GIT_MAX_REPO_MB": "24", "PAAS_DOMAIN": "apps.test"}
    env = isolated_env(work, redis_port, "git", **{**defaults, **(extra_env or {})})
    redis = start_redis(work, redis_port)
    web: subprocess.Popen[bytes] | None = None
    log_path = work / "gunicorn.log"
    log = open(log_path, "wb")  # noqa: SIM115 — closed in the finally below
    try:
        srv = Server(url=f"http://127.0.0.1:{port}", env=env, data=work / "data", log=log_path)
        subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--verbosity", "0"],
                       cwd=ROOT, env=env, check=True, timeout=120)
        if prepare is not None:
            prepare(work / "data")
        else:
            subprocess.run(
                [sys.executable, "-c", "import sys; from pathlib import Path; "
                 "from runtime.images import ImageStore; from runtime.tinyimage import build_tiny_image;"
                 "build_tiny_image(ImageStore(Path(sys.argv[1])))", str(work / "data/runtime/images")],
                env=env, check=True, timeout=120,
            )
        web = subprocess.Popen(
            [str(BIN / "gunicorn"), "controlplane.wsgi", "--bind", f"127.0.0.1:{port}",
             "--workers", "1", "--worker-class", "gthread", "--threads", "6", "--timeout", "120"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until_answers(web, srv.url + "/api/v1/account", log_path)
        yield srv
        # Whatever the pushes did (hang-ups included), nothing crashed in the web process.
        assert "Traceback" not in log_path.read_text(), log_path.read_text()
    finally:
        stop_groups(web, redis)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    with running_server() as srv:
        yield srv


@dataclass
class Team:
    """A team with an app, an owner who may deploy and a viewer who may not."""

    app: str
    owner: str
    owner_token: str
    viewer_token: str
    remote: str = field(default="")


@pytest.fixture
def team(server: Server) -> Team:
    return make_team(server)


def make_team(server: Server) -> Team:
    app, owner, viewer, tname = unique("app"), unique("own"), unique("view"), unique("team")
    tokens = server.query(
        "from core.actions import token_create, user_create, team_create, member_add, app_create\n"
        "from core.models import Role\n"
        f"o = user_create(actor=None, username={owner!r}, email='o@example.com')\n"
        f"v = user_create(actor=None, username={viewer!r}, email='v@example.com')\n"
        f"t = team_create(actor=o, name={tname!r})\n"
        "member_add(actor=o, team=t, user=v, role=Role.VIEWER)\n"
        f"app_create(actor=o, name={app!r}, team=t)\n"
        "out = [token_create(actor=o, description='t')[1], token_create(actor=v, description='t')[1]]\n"
    )
    assert isinstance(tokens, list)
    return Team(app=app, owner=owner, owner_token=tokens[0], viewer_token=tokens[1])


@dataclass
class Git:
    """The real git client in a work tree of its own, with no user or system configuration."""

    dir: Path
    home: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "PAAS_"))}
        env.update({"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / ".config"),
                    "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "LANG": "C.UTF-8",
                    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"})
        return env

    def run(self, *args: str, ok: bool = True, timeout: float = 180,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["git", *args], cwd=self.dir, env={**self.env(), **(extra_env or {})},
                                capture_output=True, text=True, timeout=timeout)
        if ok:
            assert result.returncode == 0, result.stdout + result.stderr
        else:
            assert result.returncode != 0, result.stdout + result.stderr
        return result

    def write(self, files: dict[str, str | bytes]) -> None:
        for name, content in files.items():
            path = self.dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)

    def commit(self, files: dict[str, str | bytes], message: str = "change") -> str:
        self.write(files)
        self.run("add", "-A")
        self.run("commit", "-q", "-m", message)
        return self.run("rev-parse", "HEAD").stdout.strip()

    def head(self) -> str:
        return self.run("rev-parse", "HEAD").stdout.strip()


def remote_url(server: Server, app: str, token: str | None, user: str = "anyone") -> str:
    host = server.url.removeprefix("http://")
    auth = f"{user}:{token}@" if token is not None else ""
    return f"http://{auth}{host}/git/{app}.git"


@pytest.fixture
def git(tmp_path: Path) -> Git:
    work = tmp_path / "work"
    work.mkdir()
    g = Git(dir=work, home=tmp_path / "home")
    g.home.mkdir()
    g.run("init", "-q", "-b", "main")
    return g


@dataclass
class SlowBuildpack:
    """A buildpack (pushed to an app of the team's, so it is fetched over git) whose compile
    prints three lines, then waits, silent, until `release()` is called."""

    url: str
    go: Path

    def release(self) -> None:
        self.go.write_text("go\n")


@pytest.fixture
def slow_buildpack(server: Server, team: Team, tmp_path: Path) -> Iterator[SlowBuildpack]:
    bp_app = unique("bp")
    server.query(
        "from django.contrib.auth import get_user_model\n"
        "from core.actions import app_create\n"
        f"o = get_user_model().objects.get(username={team.owner!r})\n"
        f"app_create(actor=o, name={bp_app!r}, team=o.memberships.first().team)\n"
        "out = 1\n"
    )
    go = tmp_path / "go"
    g = Git(dir=tmp_path / "bp", home=tmp_path / "bp-home")
    g.dir.mkdir()
    g.home.mkdir()
    g.run("init", "-q", "-b", "main")
    g.commit({
        # The buildpack's own repository must build to be pushed: it is a Procfile app too.
        "Procfile": "web: true\n",
        "bin/detect": "#!/bin/sh\necho Slow\n",
        "bin/compile": (
            "#!/bin/sh\necho 'step one'\necho 'step two'\necho 'step three'\n"
            f"while [ ! -e {go} ]; do sleep 0.1; done\necho 'step four'\n"
        ),
        "bin/release": "#!/bin/sh\nprintf 'default_process_types:\\n  web: sleep 1\\n'\n",
    })
    for name in ("detect", "compile", "release"):
        (g.dir / "bin" / name).chmod(0o755)
    g.run("add", "-A")
    g.run("commit", "-q", "-m", "executable")
    g.run("push", "-q", remote_url(server, bp_app, team.owner_token), "main")
    yield SlowBuildpack(url=remote_url(server, bp_app, team.owner_token), go=go)
    go.touch()  # let a build still waiting end
