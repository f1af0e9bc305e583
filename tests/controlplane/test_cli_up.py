"""`manage.py up` (what `make up` runs) brings the platform up and takes all of it down again."""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controlplane.env import ConfigError
from core.management.commands.up import parse_bind, plan_redis, processes_to_run

ROOT = Path(__file__).resolve().parents[2]
TOKEN_LINE = re.compile(r"^\s+token:\s+(paas_\S+)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_it_reads_the_bind_address() -> None:
    assert parse_bind("127.0.0.1:8000").url == "http://127.0.0.1:8000"
    assert parse_bind("0.0.0.0:80").url == "http://127.0.0.1:80"
    assert parse_bind("[::1]:8080").url == "http://[::1]:8080"
    for bad in ["8000", "host:", ":8000", "host:99999", "host:http"]:
        with pytest.raises(ConfigError, match="PAAS_BIND must be host:port"):
            parse_bind(bad)


def test_it_runs_its_own_redis_only_for_a_local_port_nobody_serves() -> None:
    nobody = plan_redis(None, lambda host, port: False)
    assert (nobody.url, nobody.port) == ("redis://127.0.0.1:6379/0", 6379)
    local = plan_redis("redis://localhost:7000/2", lambda host, port: False)
    assert local.port == 7000
    served = plan_redis(None, lambda host, port: True)
    assert served.port is None and "already listening" in served.reason
    external = plan_redis("redis://redis.internal:6379/0", lambda host, port: False)
    assert external.port is None and "redis.internal" in external.reason
    with pytest.raises(ConfigError, match="REDIS_URL"):
        plan_redis("http://127.0.0.1:6379", lambda host, port: False)


def _proc_start(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rpartition(")")[2].split()
    if fields[0] == "Z":
        return None  # a zombie has exited; only its parent's wait is missing
    return fields[19]


def _descendants(root: int) -> dict[int, tuple[str, str]]:
    """Every live descendant of `root`: pid -> (start time, command line)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, tuple[str, str]] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        start = _proc_start(pid)
        if start is None:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError):
            continue
        found[pid] = (start, cmdline)
        todo.extend(children.get(pid, []))
    return found


def _reader(stream: object, lines: queue.Queue[str], log: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        log.append(line)
        lines.put(line)


@pytest.fixture
def up_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PAAS_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({
        "PAAS_DATA_DIR": str(tmp_path / "data"),
        "PAAS_BIND": f"127.0.0.1:{free_port()}",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "PAAS_ROUTER_BIND": f"127.0.0.1:{free_port()}",
        "PAAS_ROUTER_WORKERS": "1",
        # The runtime daemon and agent change the host's network; tests/runtime covers them.
        "PAAS_UP_SKIP": "runtime,agent",
        "PYTHONUNBUFFERED": "1",
    })
    yield env


@pytest.mark.slow
def test_it_brings_the_platform_up_and_stops_every_process_on_ctrl_c(
    up_env: dict[str, str],
) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "up"], cwd=ROOT, env=up_env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []
    threading.Thread(target=_reader, args=(proc.stdout, lines, log), daemon=True).start()
    seen: dict[int, tuple[str, str]] = {}
    try:
        token = None
        deadline = time.monotonic() + 120
        while token is None and time.monotonic() < deadline:
            try:
                match = TOKEN_LINE.match(lines.get(timeout=1).rstrip("\n"))
            except queue.Empty:
                assert proc.poll() is None, "".join(log)
                continue
            token = match.group(1) if match else None
        assert token is not None, "".join(log)
        login = f"paas login --server http://{up_env['PAAS_BIND']} --token {token}"
        while login not in "".join(log) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert login in "".join(log)

        account = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, "".join(log)
            try:
                response = httpx.get(
                    f"http://{up_env['PAAS_BIND']}/api/v1/account",
                    headers={"Authorization": f"Bearer {token}"}, timeout=5,
                )
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            account = response.json() if response.status_code == 200 else None
            break
        assert account is not None and account["username"] == "admin", "".join(log)
        assert account["is_staff"] is True

        wanted = ["gunicorn", "celery -A controlplane worker", "celery -A controlplane beat",
                  "redis-server", "manage.py scheduler_follow", "-m router"]
        while time.monotonic() < deadline:
            seen.update(_descendants(proc.pid))
            running = " | ".join(cmd for _start, cmd in seen.values())
            if all(name in running for name in wanted):
                break
            time.sleep(0.5)
        assert all(name in running for name in wanted), running
        redis_port = up_env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
        assert subprocess.run(["redis-cli", "-p", redis_port, "ping"], capture_output=True,
                              text=True).stdout.strip() == "PONG"
        assert (Path(up_env["PAAS_DATA_DIR"]) / "redis").is_dir()
        time.sleep(1)  # let gunicorn's and celery's own children appear too
        seen.update(_descendants(proc.pid))

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(log)
        left = [cmd for pid, (start, cmd) in seen.items() if _proc_start(pid) == start]
        assert left == []
        assert "paas: stopped." in "".join(log)
    finally:
        # On a failure, stop whatever is still running: the processes run in sessions of their
        # own, so they are found by walking the tree before `up` goes away.
        if proc.poll() is None:
            seen.update(_descendants(proc.pid))
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                seen.update(_descendants(proc.pid))
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid, (start, _cmd) in seen.items():
            if _proc_start(pid) == start:
                os.kill(pid, signal.SIGKILL)


def test_it_runs_every_procfile_process_it_can() -> None:
    names = ["web", "worker", "redis", "router", "runtime", "agent"]
    run, left_out = processes_to_run(names, own_redis=True, is_root=True, skip=set())
    assert run == names and left_out == []


def test_it_leaves_out_the_container_processes_without_root() -> None:
    run, left_out = processes_to_run(["web", "runtime", "agent"], own_redis=True, is_root=False,
                                     skip=set())
    assert run == ["web"]
    assert left_out == ["runtime (containers need root: run `make up` as root)",
                        "agent (containers need root: run `make up` as root)"]


def test_it_leaves_out_what_it_is_told_to_and_a_redis_it_does_not_own() -> None:
    run, left_out = processes_to_run(["web", "redis", "router"], own_redis=False, is_root=True,
                                     skip={"router"})
    assert run == ["web"] and left_out == ["router (PAAS_UP_SKIP)"]


@pytest.mark.root
def test_it_registers_this_host_for_its_agent_once(up_env: dict[str, str]) -> None:
    assert os.geteuid() == 0, "runs as root (CI does)"
    up_env["PAAS_UP_SKIP"] = ""
    up_env["PAAS_HOST_NAME"] = "uphost-1"
    run = [sys.executable, str(ROOT / "manage.py"), "up", "--no-run"]
    for _ in range(2):
        result = subprocess.run(run, cwd=ROOT, env=up_env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        assert "This host:  uphost-1 (apps are placed here)" in result.stdout
    hosts = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c",
         "from core.models import Host; print([h.name for h in Host.objects.all()])"],
        cwd=ROOT, env=up_env, capture_output=True, text=True, timeout=120,
    )
    assert hosts.stdout.strip().splitlines()[-1] == "['uphost-1']", hosts.stderr


def test_it_creates_the_first_admin_only_once(up_env: dict[str, str]) -> None:
    run = [sys.executable, str(ROOT / "manage.py"), "up", "--no-run"]
    first = subprocess.run(run, cwd=ROOT, env=up_env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert [line for line in first.stdout.splitlines() if TOKEN_LINE.match(line)]
    second = subprocess.run(run, cwd=ROOT, env=up_env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert not [line for line in second.stdout.splitlines() if TOKEN_LINE.match(line)]
    assert f"paas login --server http://{up_env['PAAS_BIND']}\n" in second.stdout


def test_it_refuses_a_bad_bind_address_with_a_message(up_env: dict[str, str]) -> None:
    up_env["PAAS_BIND"] = "everywhere"
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), "up", "--no-run"],
                            cwd=ROOT, env=up_env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "PAAS_BIND must be host:port" in result.stderr
    assert "Traceback" not in result.stderr


def test_it_creates_a_user_with_a_token_from_the_shell(
    db: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from core.models import ApiToken

    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long enough password\n"))
    call_command("user_create", "zoe", "--email", "zoe@example.com", "--password-stdin",
                 "--token", stdout=out, stderr=err)
    token = out.getvalue().strip()
    user = get_user_model().objects.get(username="zoe")
    assert user.check_password("a long enough password")
    assert not user.is_staff
    assert ApiToken.objects.get(user=user).prefix == token[:12]
    assert "Created user zoe." in err.getvalue()


def test_it_refuses_a_taken_user_name_with_the_actions_message(db: None) -> None:
    from django.core.management import CommandError, call_command

    call_command("user_create", "yan", stderr=io.StringIO())
    with pytest.raises(CommandError, match="The name 'yan' is taken"):
        call_command("user_create", "yan", stderr=io.StringIO())
    with pytest.raises(CommandError, match="Name must be 1 to 40 lowercase"):
        call_command("user_create", "Not A Name", stderr=io.StringIO())


def test_it_refuses_to_start_when_its_port_is_taken(up_env: dict[str, str]) -> None:
    host, port = up_env["PAAS_BIND"].split(":")
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        result = subprocess.run([sys.executable, str(ROOT / "manage.py"), "up"], cwd=ROOT,
                                env=up_env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"{up_env['PAAS_BIND']} is already in use" in result.stderr
    assert "set PAAS_BIND" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (Path(up_env["PAAS_DATA_DIR"]) / "paas.sqlite3").exists()
