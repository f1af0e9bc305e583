from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from builder.buildpack import HOST_PATH, BuildRequest
from builder.slug import launch_argv

APPS = Path(__file__).parent / "apps"


class Output(list[str]):
    """Collects build output lines; `text` joins them for message checks."""

    @property
    def text(self) -> str:
        return "\n".join(self)


@pytest.fixture
def output() -> Output:
    return Output()


def write_script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body).lstrip())
    path.chmod(0o755)
    return path


MakeBuildpack = Callable[..., Path]


@pytest.fixture
def make_buildpack(tmp_path: Path) -> MakeBuildpack:
    """Write a buildpack directory with the given bash bodies for detect, compile and release."""

    def make(
        name: str,
        detect: str = "echo Test; exit 0",
        compile: str = "exit 0",  # noqa: A002 -- named after bin/compile
        release: str | None = "echo '--- {}'",
    ) -> Path:
        root = tmp_path / "buildpacks" / name
        write_script(root / "bin" / "detect", detect)
        write_script(root / "bin" / "compile", compile)
        if release is not None:
            write_script(root / "bin" / "release", release)
        return root

    return make


@pytest.fixture
def app_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "Procfile").write_text("web: echo listening on $PORT\n")
    return src


@pytest.fixture
def request_for(tmp_path: Path) -> Callable[..., BuildRequest]:
    counter = iter(range(1000))

    def make(source: Path, **kwargs: object) -> BuildRequest:
        n = next(counter)
        defaults: dict[str, object] = {
            "app": "demo",
            "source_dir": source,
            "work_dir": tmp_path / f"work{n}",
            "cache_dir": tmp_path / "cache",
            "build_id": "b1",
            "commit": "c0ffee",
            "timeout": 60,
            "allow_local_buildpacks": True,
        }
        defaults.update(kwargs)
        return BuildRequest(**defaults)  # type: ignore[arg-type]

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def run_web() -> Iterator[Callable[..., str]]:
    """Start a web command from a built app directory with $PORT; return its page's text."""
    procs: list[subprocess.Popen[bytes]] = []

    def run(app_dir: Path, command: str, path: str = "/") -> str:
        port = free_port()
        env = {"PATH": HOST_PATH, "HOME": str(app_dir), "PORT": str(port), "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            launch_argv(command), cwd=app_dir, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        procs.append(proc)
        give_up = time.monotonic() + 60
        url = f"http://127.0.0.1:{port}{path}"
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"the web process exited with {proc.returncode}: {err}")
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return resp.read().decode()
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > give_up:
                    raise AssertionError(f"nothing answered on {url}") from None
                time.sleep(0.2)

    yield run
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def pid_gone(pid: int, wait: float = 10.0) -> bool:
    """Return True once `pid` no longer exists (or is a zombie), waiting up to `wait` s."""
    give_up = time.monotonic() + wait
    while time.monotonic() < give_up:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


BUILD_USER = (65534, 65534)  # nobody:nogroup on Debian


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A scratch directory every user can traverse (pytest's own is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="paas-builder-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
