"""The installed `paas` command against the real control plane over HTTP.

One gunicorn server (on a free loopback port, a throw-away SQLite database in its own data dir, a
redis-server of its own as the broker) serves the module; each test drives the real `paas`
console script as a subprocess with a throw-away HOME, so nothing of the user's is touched.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.liveprocs import free_port, isolated_env, start_redis, stop_groups, wait_until_answers

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PAAS = str(BIN / "paas")
PASSWORD = "correct horse battery staple"

pytestmark = pytest.mark.slow


@dataclass
class Server:
    url: str
    env: dict[str, str]

    def manage(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=self.env,
            input=stdin, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result

    def users(self, staff: dict[str, bool]) -> dict[str, str]:
        """Create users (name -> is staff) with PASSWORD in one go; return name -> token."""
        code = (
            "import json\n"
            "from core.actions import token_create, user_create\n"
            "tokens = {}\n"
            f"for name, staff in {staff!r}.items():\n"
            "    user = user_create(actor=None, username=name, email=name + '@example.com',\n"
            f"                       password={PASSWORD!r}, is_staff=staff)\n"
            "    tokens[name] = token_create(actor=user, description='test')[1]\n"
            "print(json.dumps(tokens))\n"
        )
        out = self.manage("shell", "--verbosity", "0", "-c", code).stdout
        tokens: dict[str, str] = json.loads(out.strip().splitlines()[-1])
        return tokens

    def deploy(self, app: str, username: str, process_types: dict[str, str]) -> None:
        """Record a good build of the app, as a finished `git push` would (the build itself is
        the builder's part and is tested there)."""
        code = (
            "from django.contrib.auth import get_user_model\n"
            "from core.actions import build_create, build_finish\n"
            "from core.models import App\n"
            f"user = get_user_model().objects.get(username={username!r})\n"
            f"app = App.objects.get(name={app!r})\n"
            "build = build_create(actor=user, app=app, commit='a' * 40)\n"
            "build_finish(actor=user, build=build, succeeded=True,\n"
            "             image_digest='sha256:' + 'b' * 64,\n"
            f"             process_types={process_types!r})\n"
        )
        self.manage("shell", "--verbosity", "0", "-c", code)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    work = Path(tempfile.mkdtemp(prefix="paas-cli-e2e-"))
    port, redis_port = free_port(), free_port()
    env = isolated_env(work, redis_port, "cli-e2e")
    # The broker the API enqueues on: a redis-server of this module's own, so that no other
    # test's worker picks up this server's tasks.
    redis = start_redis(work, redis_port)
    web: subprocess.Popen[bytes] | None = None
    log = open(work / "gunicorn.log", "wb")  # noqa: SIM115 — closed in the finally below
    try:
        srv = Server(url=f"http://127.0.0.1:{port}", env=env)
        srv.manage("migrate", "--verbosity", "0")
        web = subprocess.Popen(
            [str(BIN / "gunicorn"), "controlplane.wsgi", "--bind", f"127.0.0.1:{port}",
             "--workers", "1", "--threads", "4"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until_answers(web, srv.url + "/api/v1/account", work / "gunicorn.log")
        yield srv
    finally:
        stop_groups(web, redis)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class User:
    """A person at a terminal: their own HOME, and a `paas` command to type."""

    name: str
    home: Path
    server: Server
    token: str

    def paas(self, *args: str, stdin: str = "", cwd: Path | None = None,
             ok: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAAS_")}
        env.update({"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / "config")})
        result = subprocess.run(
            [PAAS, *args], input=stdin, capture_output=True, text=True,
            cwd=cwd or self.home, env=env, timeout=60, start_new_session=True,
        )
        assert "Traceback" not in result.stdout + result.stderr
        if ok:
            assert result.returncode == 0, result.stderr
        else:
            assert result.returncode != 0, result.stdout
            assert result.stderr.startswith("paas: ") or "\npaas: " in result.stderr
        return result

    def json(self, *args: str, cwd: Path | None = None) -> Any:
        return json.loads(self.paas(*args, "--json", cwd=cwd).stdout)

    def login(self) -> None:
        self.paas("login", "--server", self.server.url, "--token", self.token)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# Every test has people of its own (a prefix each), made in one go for the whole module.
PEOPLE = {
    "alice": False, "bob": False, "carol": False, "dave": False, "owner": False,
    "stranger": False, "eve": False, "frank": False, "grace": False, "heidi": False,
    "ivan": False, "judy": False, "kim": False, "root": True, "plain": False, "lena": False,
    "mona": False, "nina": False,
}


@pytest.fixture(scope="module")
def accounts(server: Server) -> dict[str, tuple[str, str]]:
    names = {prefix: _unique(prefix) for prefix in PEOPLE}
    tokens = server.users({names[prefix]: staff for prefix, staff in PEOPLE.items()})
    return {prefix: (name, tokens[name]) for prefix, name in names.items()}


@pytest.fixture
def make_user(
    server: Server, accounts: dict[str, tuple[str, str]], tmp_path: Path,
) -> Iterator[Callable[..., User]]:
    def make(prefix: str, *, login: bool = True) -> User:
        name, token = accounts[prefix]
        home = tmp_path / name
        home.mkdir()
        user = User(name, home, server, token)
        if login:
            user.login()
        return user

    yield make


def _git_repo(path: Path) -> Path:
    path.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    return path


def test_it_logs_in_creates_configures_scales_and_rolls_back_an_app(
    make_user: Callable[..., User], server: Server, tmp_path: Path,
) -> None:
    alice: User = make_user("alice", login=False)
    out = alice.paas("login", "--server", server.url, stdin=f"{alice.name}\n{PASSWORD}\n")
    assert f"Logged in to {server.url} as {alice.name}." in out.stdout
    creds = alice.home / "config" / "paas" / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert json.loads(creds.read_text())["token"].startswith("paas_")
    assert alice.paas("whoami").stdout.strip() == f"{alice.name} on {server.url}"

    repo = _git_repo(tmp_path / "demo-repo")
    app = _unique("demo")
    out = alice.paas("apps:create", app, cwd=repo)
    assert f"Created {app}" in out.stdout
    remote = subprocess.run(["git", "remote", "get-url", "paas"], cwd=repo, check=True,
                            capture_output=True, text=True).stdout.strip()
    assert remote.endswith(f"/git/{app}.git")

    out = alice.paas("config:set", "A=1", cwd=repo)
    assert "released v2" in out.stdout
    assert alice.paas("config:get", "A", cwd=repo).stdout == "1\n"

    out = alice.paas("scale", "web=2", cwd=repo, ok=False)
    assert "Unknown process type 'web'" in out.stderr

    server.deploy(app, alice.name, {"web": "python -m http.server $PORT", "worker": "sleep 1d"})
    out = alice.paas("scale", "web=2", "worker=1:512M", cwd=repo)
    assert "web=2" in out.stdout and "worker=1:512M" in out.stdout
    ps = alice.json("ps", cwd=repo)
    assert isinstance(ps, dict)
    quantities = {row["type"]: row["quantity"] for row in ps["formation"]}
    assert quantities == {"web": 2, "worker": 1}
    out = alice.paas("ps:readiness", "web", "/healthz", "--timeout", "90", cwd=repo)
    assert "http GET /healthz, 90 s" in out.stdout
    out = alice.paas("scale", "worker=1", "--constraint", "region=eu", cwd=repo)
    out = alice.paas("ps", cwd=repo)
    worker_line = next(line for line in out.stdout.splitlines() if line.startswith("worker "))
    assert "region=eu" in worker_line and out.stdout.endswith("\nv3 is pending.\n")

    out = alice.paas("releases", cwd=repo)
    for version in ("v1", "v2", "v3"):
        assert version in out.stdout
    out = alice.paas("rollback", "v1", cwd=repo)
    assert f"Rolled back {app} to v1: released v4." in out.stdout
    releases = alice.json("releases", cwd=repo)
    assert isinstance(releases, list)
    assert [r["version"] for r in releases] == [4, 3, 2, 1]
    assert alice.json("config", cwd=repo) == {}
    info = alice.json("releases:info", "v4", cwd=repo)
    assert isinstance(info, dict) and info["version"] == 4
    # Without a version: back to the one before the current (v3, the deploy with A=1).
    out = alice.paas("rollback", cwd=repo)
    assert f"Rolled back {app} to v3: released v5." in out.stdout
    assert alice.json("config", cwd=repo) == {"A": "1"}


def test_it_prints_the_apis_own_json_for_listings(
    make_user: Callable[..., User], server: Server,
) -> None:
    bob: User = make_user("bob")
    app = _unique("listed")
    bob.paas("apps:create", app)
    printed = bob.json("apps")
    answered = httpx.get(server.url + "/api/v1/apps",
                         headers={"Authorization": f"Bearer {bob.token}"}).json()
    assert printed == answered
    assert [a["name"] for a in answered] == [app]
    info = bob.json("apps:info", "-a", app)
    assert isinstance(info, dict) and info["name"] == app and info["git_url"].endswith(
        f"/git/{app}.git")


def test_it_refuses_a_malformed_key_value_pair(make_user: Callable[..., User]) -> None:
    carol: User = make_user("carol")
    app = _unique("pairs")
    carol.paas("create", app)
    out = carol.paas("config:set", "-a", app, "GOOD=1", "BAD", ok=False)
    assert "'BAD' is not KEY=VALUE" in out.stderr
    assert carol.json("config", "-a", app) == {}
    carol.paas("config:set", "-a", app, "GOOD=1", "ALSO=x=y")
    out = carol.paas("config:unset", "-a", app, "GOOD")
    assert f"Unset GOOD on {app}; released v3." in out.stdout
    assert carol.json("config", "-a", app) == {"ALSO": "x=y"}
    out = carol.paas("config:get", "-a", app, "GOOD", ok=False)
    assert f"{app} has no config var GOOD" in out.stderr


def test_it_says_an_unknown_app_is_not_found(make_user: Callable[..., User]) -> None:
    dave: User = make_user("dave")
    out = dave.paas("info", "-a", _unique("nothere"), ok=False)
    assert "not found" in out.stderr.lower()


def test_it_hides_another_teams_app_as_not_found(make_user: Callable[..., User]) -> None:
    owner: User = make_user("owner")
    stranger: User = make_user("stranger")
    app = _unique("private")
    owner.paas("create", app)
    out = stranger.paas("config", "-a", app, ok=False)
    assert "not found" in out.stderr.lower()


def test_it_refuses_a_wrong_token_and_stores_nothing(
    make_user: Callable[..., User], server: Server,
) -> None:
    eve: User = make_user("eve", login=False)
    out = eve.paas("login", "--server", server.url, "--token", "paas_" + "x" * 40, ok=False)
    assert "paas login" in out.stderr
    assert not (eve.home / "config" / "paas" / "credentials.json").exists()
    out = eve.paas("login", "--server", server.url, stdin=f"{eve.name}\nwrong password\n",
                   ok=False)
    assert not (eve.home / "config" / "paas" / "credentials.json").exists()


def test_it_stops_working_once_its_token_is_revoked(make_user: Callable[..., User]) -> None:
    frank: User = make_user("frank")
    created = frank.json("tokens:create", "--description", "ci")
    assert isinstance(created, dict)
    listed = frank.json("tokens")
    assert isinstance(listed, list)
    assert created["id"] in [t["id"] for t in listed]
    assert all("token" not in t for t in listed)
    out = frank.paas("tokens", ok=True)
    assert "ci" in out.stdout
    # Revoke the token this CLI is logged in with: the next command is refused.
    mine = [t for t in listed if frank.token.startswith(t["prefix"])]
    assert len(mine) == 1
    frank.paas("tokens:revoke", str(mine[0]["id"]))
    out = frank.paas("apps", ok=False)
    assert "paas login" in out.stderr


def test_it_says_the_server_is_down_when_it_is(make_user: Callable[..., User]) -> None:
    grace: User = make_user("grace")
    creds = grace.home / "config" / "paas" / "credentials.json"
    data = json.loads(creds.read_text())
    data["server"] = f"http://127.0.0.1:{free_port()}"
    creds.write_text(json.dumps(data))
    out = grace.paas("apps", ok=False)
    assert "Cannot reach the paas server" in out.stderr


def test_it_manages_domains(make_user: Callable[..., User]) -> None:
    heidi: User = make_user("heidi")
    app = _unique("dom")
    heidi.paas("create", app)
    hostname = f"{app}.example.com"
    assert f"Added {hostname}" in heidi.paas("domains:add", hostname, "-a", app).stdout
    assert hostname in heidi.paas("domains", "-a", app).stdout
    heidi.paas("domains:remove", hostname, "-a", app)
    assert heidi.json("domains", "-a", app) == []


def test_it_serves_a_domain_with_an_uploaded_certificate(
    make_user: Callable[..., User], server: Server, tmp_path: Path,
) -> None:
    from tests.controlplane import certgen

    nina: User = make_user("nina")
    app = _unique("tls")
    nina.paas("create", app)
    hostname = f"{app}.example.com"
    nina.paas("domains:add", hostname, "-a", app)
    made = certgen.leaf([hostname])
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    chain.write_text(made.pem)
    key.write_text(made.key_pem)
    out = nina.paas("certs:add", hostname, str(chain), str(key), "-a", app).stdout
    assert out.startswith(f"Certificate for {hostname} on {app}: {hostname}, expires ")
    # The server wrote the router's file into its data dir before it answered.
    router_file = Path(server.env["PAAS_DATA_DIR"]) / "router" / "certs" / f"{hostname}.pem"
    assert router_file.read_text() == made.pem + made.key_pem
    assert [c["fingerprint"] for c in nina.json("certs", "-a", app)] == [made.fingerprint]
    refused = nina.paas("certs:add", hostname, str(key), str(key), "-a", app, ok=False)
    assert "holds a private key" in refused.stderr
    nina.paas("certs:remove", hostname, "-a", app)
    assert not router_file.exists()
    assert nina.json("certs", "-a", app) == []


def test_it_manages_teams_and_members(make_user: Callable[..., User]) -> None:
    ivan: User = make_user("ivan")
    judy: User = make_user("judy")
    team = _unique("team")
    ivan.paas("teams:create", team)
    # Without --team: the personal team, named after the user.
    assert ivan.json("members") == [{"username": ivan.name, "email": f"{ivan.name}@example.com",
                                     "role": "owner"}]
    assert team in [t["name"] for t in ivan.json("teams")]
    ivan.paas("members:add", judy.name, "--team", team, "--role", "viewer")
    roles = {m["username"]: m["role"] for m in ivan.json("members", "-t", team)}
    assert roles == {ivan.name: "owner", judy.name: "viewer"}
    app = _unique("teamapp")
    ivan.paas("create", app, "--team", team)
    # A viewer sees the app but not its config.
    judy.paas("info", "-a", app)
    judy.paas("config", "-a", app, ok=False)
    ivan.paas("members:set-role", judy.name, "member", "-t", team)
    assert judy.json("config", "-a", app) == {}
    ivan.paas("members:remove", judy.name, "-t", team)
    judy.paas("info", "-a", app, ok=False)


def test_it_destroys_an_app_only_with_the_typed_name(
    make_user: Callable[..., User], tmp_path: Path,
) -> None:
    kim: User = make_user("kim")
    repo = _git_repo(tmp_path / "gone-repo")
    app = _unique("gone")
    kim.paas("create", app, cwd=repo)
    kim.paas("destroy", cwd=repo, stdin="not-the-name\n", ok=False)
    kim.paas("info", cwd=repo)
    out = kim.paas("destroy", cwd=repo, stdin=f"{app}\n")
    assert f"Destroyed {app}." in out.stdout
    kim.paas("info", "-a", app, ok=False)
    remotes = subprocess.run(["git", "remote"], cwd=repo, check=True, capture_output=True,
                             text=True).stdout.split()
    assert "paas" not in remotes


def test_it_lists_hosts_and_lets_only_staff_drain_them(
    make_user: Callable[..., User], server: Server,
) -> None:
    admin: User = make_user("root")
    user: User = make_user("plain")
    name = _unique("host")
    response = httpx.post(
        server.url + "/api/v1/hosts", headers={"Authorization": f"Bearer {admin.token}"},
        json={"name": name, "address": "10.0.0.5", "memory_mb": 2048, "cpus": 2},
    )
    assert response.status_code == 201, response.text
    assert name in user.paas("hosts").stdout
    user.paas("hosts:drain", name, ok=False)
    out = admin.paas("hosts:drain", name)
    assert f"Draining {name}" in out.stdout
    states = {h["name"]: h["state"] for h in admin.json("hosts")}
    assert states[name] == "draining"


def _in_terminal(
    argv: list[str], env: dict[str, str], answers: list[tuple[str, str]],
) -> tuple[int, str]:
    """Run a command on a pseudo-terminal, typing each answer once its prompt shows."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once, whatever happens
        try:
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    out, pending = b"", list(answers)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if pending and out.rstrip().endswith(pending[0][0].encode()):
                os.write(fd, pending.pop(0)[1].encode() + b"\r")
    finally:
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_it_asks_for_the_password_on_a_terminal_without_echoing_it(
    make_user: Callable[..., User], server: Server,
) -> None:
    lena: User = make_user("lena", login=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAAS_")}
    env.update({"HOME": str(lena.home), "XDG_CONFIG_HOME": str(lena.home / "config")})
    code, screen = _in_terminal(
        [PAAS, "login", "--server", server.url], env,
        [("User name:", lena.name), ("Password:", PASSWORD)],
    )
    assert code == 0, screen
    assert f"Logged in to {server.url} as {lena.name}." in screen
    assert PASSWORD not in screen
    assert (lena.home / "config" / "paas" / "credentials.json").exists()


def test_it_revokes_a_token_made_by_a_password_login_on_logout_but_not_a_given_one(
    make_user: Callable[..., User], server: Server,
) -> None:
    mona: User = make_user("mona", login=False)
    mona.paas("login", "--server", server.url, stdin=f"{mona.name}\n{PASSWORD}\n")
    creds = mona.home / "config" / "paas" / "credentials.json"
    made = json.loads(creds.read_text())["token"]
    assert mona.paas("logout").stdout == "Logged out.\n"
    assert not creds.exists()
    account = server.url + "/api/v1/account"
    assert httpx.get(account, headers={"Authorization": f"Bearer {made}"}).status_code == 401

    mona.login()  # with --token: that token may be in use elsewhere, so it stays valid
    mona.paas("logout")
    assert httpx.get(account, headers={"Authorization": f"Bearer {mona.token}"}).status_code == 200
    assert mona.paas("logout").stdout == "You were not logged in.\n"
