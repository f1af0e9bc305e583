"""The installed `paas` command fails with one clear line and a non-zero status, never a traceback.

These cases need a server that misbehaves (nothing listening, a proxy answering HTML, a crash),
which the platform's own server does not do on purpose: a real HTTP server on a loopback socket
plays that part. The answers of the real API are covered in test_cli_e2e.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

PAAS = str(Path(sys.executable).parent / "paas")


def run_paas(
    home: Path, *args: str, stdin: str = "", cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PAAS_")}
    clean.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config")})
    clean.update(env or {})
    return subprocess.run(
        [PAAS, *args], input=stdin, capture_output=True, text=True, cwd=cwd or home,
        env=clean, timeout=60, start_new_session=True,
    )


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert [line for line in result.stderr.splitlines() if line.startswith("paas: ")]
    for fragment in fragments:
        assert fragment in result.stderr


class CannedServer(ThreadingHTTPServer):
    """Answers every request with `answer` (status, content type, body); keeps `requests`."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Canned)
        self.answer: tuple[int, str, str] = (200, "application/json", "[]")
        self.requests: list[tuple[str, str, str | None]] = []


class Canned(BaseHTTPRequestHandler):
    server: CannedServer

    def _answer(self) -> None:
        server = self.server
        status, ctype, body = server.answer
        server.requests.append((self.command, self.path, self.headers.get("Authorization")))
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, fmt: str, *args: object) -> None:  # quiet: no log lines in test output
        pass


@pytest.fixture
def canned() -> Iterator[CannedServer]:
    server = CannedServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def url_of(server: CannedServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


def token_env(server: CannedServer) -> dict[str, str]:
    return {"PAAS_TOKEN": "paas_x", "PAAS_SERVER": url_of(server)}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_it_says_so_when_nobody_is_logged_in(tmp_path: Path) -> None:
    result = run_paas(tmp_path, "apps")
    assert_one_clear_line(result, "not logged in", "paas login")


def test_it_says_the_server_is_down_when_nothing_listens(tmp_path: Path) -> None:
    server = f"http://127.0.0.1:{closed_port()}"
    result = run_paas(tmp_path, "login", "--server", server, "--token", "paas_x")
    assert_one_clear_line(result, "Cannot reach the paas server", server, "connection refused")
    assert not (tmp_path / "config" / "paas" / "credentials.json").exists()


def test_it_explains_an_html_gateway_error(tmp_path: Path, canned: CannedServer) -> None:
    canned.answer = (502, "text/html", "<html><body>Bad Gateway</body></html>")
    result = run_paas(tmp_path, "apps", env=token_env(canned))
    assert_one_clear_line(result, "failed (502 Bad Gateway)")


def test_it_explains_an_answer_that_is_not_json(tmp_path: Path, canned: CannedServer) -> None:
    canned.answer = (200, "text/html", "<html>a web page</html>")
    result = run_paas(tmp_path, "apps", env=token_env(canned))
    assert_one_clear_line(result, "not JSON", "is this URL a paas server?")


def test_it_prints_the_apis_message_and_field_problems(
    tmp_path: Path, canned: CannedServer,
) -> None:
    error = {"error": {"code": "invalid", "message": "App name is not valid.",
                       "fields": {"name": ["Use 3 to 30 lowercase letters."]}}}
    canned.answer = (400, "application/json", json.dumps(error))
    result = run_paas(tmp_path, "apps:create", "Bad_Name", "--no-remote",
                      env=token_env(canned))
    assert_one_clear_line(result, "paas: App name is not valid.", "name: Use 3 to 30 lowercase")
    method, path, auth = canned.requests[0]
    assert (method, path, auth) == ("POST", "/api/v1/apps", "Bearer paas_x")


def test_it_asks_for_a_new_login_on_401(tmp_path: Path, canned: CannedServer) -> None:
    error = {"error": {"code": "unauthenticated", "message": "The token is not valid."}}
    canned.answer = (401, "application/json", json.dumps(error))
    result = run_paas(tmp_path, "teams", env=token_env(canned))
    assert_one_clear_line(result, "The token is not valid.", "paas login")


def test_it_refuses_to_send_a_stored_token_to_another_server(
    tmp_path: Path, canned: CannedServer,
) -> None:
    creds = tmp_path / "config" / "paas" / "credentials.json"
    creds.parent.mkdir(parents=True)
    creds.write_text(json.dumps({"server": "http://127.0.0.1:1", "token": "paas_secret"}))
    result = run_paas(tmp_path, "apps", env={"PAAS_SERVER": url_of(canned)})
    assert_one_clear_line(result, "logged in to http://127.0.0.1:1")
    assert canned.requests == []


def test_it_needs_an_app_outside_a_repository(tmp_path: Path, canned: CannedServer) -> None:
    result = run_paas(tmp_path, "config", env=token_env(canned))
    assert_one_clear_line(result, "No app given", "--app")
    assert canned.requests == []


def test_it_takes_the_app_from_the_paas_remote(tmp_path: Path, canned: CannedServer) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "remote", "add", "paas", f"{url_of(canned)}/git/demo.git"],
                   cwd=repo, check=True)
    canned.answer = (200, "application/json", json.dumps({"A": "1"}))
    result = run_paas(tmp_path, "config:get", "A", cwd=repo,
                      env=token_env(canned))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1\n"
    assert canned.requests[0][:2] == ("GET", "/api/v1/apps/demo/config")


def test_it_refuses_a_malformed_pair_before_sending_anything(
    tmp_path: Path, canned: CannedServer,
) -> None:
    result = run_paas(tmp_path, "config:set", "A=1", "oops", "-a", "demo",
                      env=token_env(canned))
    assert_one_clear_line(result, "'oops' is not KEY=VALUE")
    assert canned.requests == []


def test_it_quotes_user_input_in_paths(tmp_path: Path, canned: CannedServer) -> None:
    canned.answer = (204, "application/json", "")
    result = run_paas(tmp_path, "domains:remove", "../../hosts", "-a", "demo",
                      env=token_env(canned))
    assert result.returncode == 0, result.stderr
    assert canned.requests[0][:2] == (
        "DELETE", "/api/v1/apps/demo/domains/..%2F..%2Fhosts")


def test_it_refuses_a_destroy_whose_confirmation_does_not_match(
    tmp_path: Path, canned: CannedServer,
) -> None:
    env = token_env(canned)
    result = run_paas(tmp_path, "destroy", "-a", "demo", stdin="dmeo\n", env=env)
    assert_one_clear_line(result, "does not match", "nothing destroyed")
    result = run_paas(tmp_path, "apps:destroy", "-a", "demo", "--confirm", "other", env=env)
    assert_one_clear_line(result, "does not match")
    assert canned.requests == []


def test_it_logs_out_even_when_the_server_is_down(tmp_path: Path) -> None:
    creds = tmp_path / "config" / "paas" / "credentials.json"
    creds.parent.mkdir(parents=True)
    creds.write_text(json.dumps({"server": f"http://127.0.0.1:{closed_port()}",
                                 "token": "paas_x", "revoke_on_logout": True}))
    result = run_paas(tmp_path, "logout")
    assert result.returncode == 0
    assert result.stdout == "Logged out.\n"
    assert "could not revoke the token" in result.stderr
    assert not creds.exists()
