"""The container lifecycle through the daemon's socket: stop, kill, exec, logs, bad input."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runtime.client import DaemonError
from tests.runtime.daemon_fixtures import (  # noqa: F401  (fixtures)
    LOG_MAX_BYTES,
    REPO,
    Daemon,
    Image,
    daemon_fixture,
    rt_fixture,
    tiny_fixture,
)

pytestmark = pytest.mark.root


def wait_for_line(rt: Daemon, cid: str, text: str) -> None:
    for _ in range(500):
        if text in rt.output(cid):
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never appeared in the logs of {cid}")


def test_it_stops_with_sigterm_which_the_init_forwards_to_the_app(rt: Daemon, tiny: Image) -> None:
    c = rt.run(tiny, ["sh", "-c", "trap 'echo got TERM; exit 0' TERM; echo up; while true; do sleep 0.05; done"])
    wait_for_line(rt, c["id"], "up")
    stopped = rt.client.stop(c["id"], timeout_s=10)
    assert stopped["state"] == "exited" and stopped["exit_code"] == 0
    assert rt.output(c["id"]).splitlines()[-1] == "got TERM"


def test_it_kills_an_app_that_ignores_sigterm_after_the_grace_period(rt: Daemon, tiny: Image) -> None:
    c = rt.run(tiny, ["sh", "-c", "trap '' TERM; echo up; while true; do sleep 0.05; done"])
    wait_for_line(rt, c["id"], "up")
    stopped = rt.client.stop(c["id"], timeout_s=0.3)
    assert stopped["state"] == "exited" and stopped["exit_code"] == 137
    assert not Path(f"/proc/{c['pid']}").exists()


def test_it_sends_a_named_signal_with_kill(rt: Daemon, tiny: Image) -> None:
    c = rt.run(tiny, ["sh", "-c", "trap 'echo got USR1; exit 5' USR1; echo up; while true; do sleep 0.05; done"])
    wait_for_line(rt, c["id"], "up")
    rt.client.kill(c["id"], "SIGUSR1")
    done = rt.wait(c["id"])
    assert done["exit_code"] == 5 and "got USR1" in rt.output(c["id"])


def test_it_runs_a_command_inside_a_running_container_with_exec(rt: Daemon, tiny: Image) -> None:
    c = rt.run(tiny, ["sh", "-c", "echo inside > /tmp/mark; sleep 30"])
    time.sleep(0.1)
    out = rt.client.exec(c["id"], ["sh", "-c", "cat /tmp/mark; hostname; id -u; echo $EXTRA; echo oops >&2; exit 4"], env={"EXTRA": "yes"})
    assert out["stdout"].split() == ["inside", c["id"], "1000", "yes"]
    assert out["stderr"] == "oops\n" and out["exit_code"] == 4
    status = rt.client.exec(c["id"], ["grep", "-E", "^(NoNewPrivs|Seccomp|CapEff):", "/proc/self/status"])["stdout"]
    assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status and "CapEff:\t0000000000000000" in status
    missing = rt.client.exec(c["id"], ["no-such-tool"])
    assert missing["exit_code"] == 127 and "cannot run no-such-tool" in missing["stderr"]
    rt.client.stop(c["id"], timeout_s=1)


def test_it_keeps_stdout_and_stderr_as_timestamped_lines(rt: Daemon, tiny: Image) -> None:
    c = rt.run(tiny, ["sh", "-c", "echo one; echo two >&2; printf 'no newline'"])
    rt.wait(c["id"])
    items = list(rt.client.logs(c["id"]))
    assert [(i["stream"], i["line"]) for i in items] == [
        ("stdout", "one"), ("stderr", "two"), ("stdout", "no newline")
    ]
    for i in items:
        assert i["time"].endswith("Z") and i["time"][:4].isdigit() and "T" in i["time"]
    assert [i["line"] for i in rt.client.logs(c["id"], tail=1)] == ["no newline"]


def test_it_rotates_a_log_that_outgrows_its_limit(rt: Daemon, tiny: Image) -> None:
    lines = 3 * LOG_MAX_BYTES // 100
    c = rt.run(tiny, ["sh", "-c", f"i=0; while [ $i -lt {lines} ]; do printf '%090d\\n' $i; i=$((i+1)); done"])
    rt.wait(c["id"])
    d = rt.root / "containers" / c["id"]
    assert (d / "container.log.1").exists()
    assert (d / "container.log").stat().st_size < LOG_MAX_BYTES + 200
    assert (d / "container.log.1").stat().st_size < LOG_MAX_BYTES + 200
    last = list(rt.client.logs(c["id"], tail=1))
    assert int(last[0]["line"]) == lines - 1


def test_it_follows_the_logs_until_the_container_exits(rt: Daemon, tiny: Image) -> None:
    c = rt.run(tiny, ["sh", "-c", "sleep 0.3; for i in 1 2 3; do echo $i; sleep 0.1; done"])
    got = [i["line"] for i in rt.client.logs(c["id"], tail=0, follow=True)]
    assert got == ["1", "2", "3"]


def test_it_streams_events_of_state_changes(rt: Daemon, tiny: Image) -> None:
    seen: list[dict[str, Any]] = []
    stream = rt.client.events()

    def collect() -> None:
        for e in stream:
            seen.append(e)
            if e["state"] in ("exited", "oom"):
                return

    t = threading.Thread(target=collect, daemon=True)
    t.start()
    time.sleep(0.2)
    c = rt.run(tiny, ["sh", "-c", "exit 2"])
    t.join(timeout=30)
    mine = [(e["state"], e["exit_code"]) for e in seen if e["id"] == c["id"]]
    assert mine == [("created", None), ("running", None), ("exited", 2)]


def test_it_refuses_a_spec_with_unknown_or_out_of_range_fields(rt: Daemon, tiny: Image) -> None:
    with pytest.raises(DaemonError, match="unknown field\\(s\\): privileged") as exc:
        rt.client.create(rt.spec(tiny, ["true"], privileged=True), tiny.layers, tiny.config)
    assert exc.value.kind == "invalid"
    with pytest.raises(DaemonError, match="memory_mb: 0 is out of range"):
        rt.client.create(rt.spec(tiny, ["true"], memory_mb=0), tiny.layers, tiny.config)


def test_it_refuses_layers_that_are_not_directories(rt: Daemon, tiny: Image) -> None:
    with pytest.raises(DaemonError, match="is not an absolute path to a directory"):
        rt.client.create(rt.spec(tiny, ["true"]), ["relative/dir"], tiny.config)
    with pytest.raises(DaemonError, match="non-empty list"):
        rt.client.create(rt.spec(tiny, ["true"]), [], tiny.config)


def test_it_refuses_an_image_that_wants_to_run_as_root(rt: Daemon, tiny: Image) -> None:
    config = {"config": {**tiny.config["config"], "User": "0"}}
    with pytest.raises(DaemonError, match="run as root"):
        rt.client.create(rt.spec(tiny, ["true"]), tiny.layers, config)


def test_it_answers_unknown_ids_states_and_operations_clearly(rt: Daemon, tiny: Image) -> None:
    with pytest.raises(DaemonError, match="no such container: nope") as exc:
        rt.client.start("nope")
    assert exc.value.kind == "not_found"
    c = rt.run(tiny, ["true"])
    rt.wait(c["id"])
    with pytest.raises(DaemonError, match="only a created container starts") as exc:
        rt.client.start(c["id"])
    assert exc.value.kind == "conflict"
    with pytest.raises(DaemonError, match="already exists"):
        rt.client.create(dict(rt.client.inspect(c["id"])["spec"]), tiny.layers, tiny.config)
    with pytest.raises(DaemonError, match="is not a signal name"):
        rt.client.kill(c["id"], "SIGNOPE")
    with pytest.raises(DaemonError, match="unknown operation 'fly'"):
        rt.client._call({"op": "fly"})


def test_it_answers_a_malformed_request_without_dying(rt: Daemon) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(rt.root / "daemon.sock"))
        s.sendall(b"{not json\n")
        reply = json.loads(s.makefile().readline())
    assert reply == {"ok": False, "error": "a request is one JSON object with an 'op'", "kind": "invalid"}
    assert rt.client.ping()["version"] == 1


def test_it_removes_a_container_and_everything_it_had_on_disk(rt: Daemon, tiny: Image) -> None:
    c = rt.run(tiny, ["sleep", "30"])
    with pytest.raises(DaemonError, match="is running; stop it first or force"):
        rt.client.remove(c["id"])
    rt.client.remove(c["id"], force=True)
    assert not (rt.root / "containers" / c["id"]).exists()
    assert c["id"] not in [x["id"] for x in rt.client.list()]


def test_the_debug_cli_lists_and_execs_and_explains_errors(rt: Daemon, tiny: Image) -> None:
    c = rt.run(tiny, ["sleep", "30"])
    cli = [sys.executable, "-m", "runtime", "--root", str(rt.root)]
    ps = subprocess.run([*cli, "ps"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert c["id"] in ps and "running" in ps
    ex = subprocess.run([*cli, "exec", c["id"], "--", "echo", "hi"], cwd=REPO, capture_output=True, text=True)
    assert ex.returncode == 0 and ex.stdout == "hi\n"
    bad = subprocess.run([*cli, "stop", "no-such"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr == "error: no such container: no-such\n"
    gone = subprocess.run(
        [sys.executable, "-m", "runtime", "--root", str(rt.root / "nowhere"), "ps"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert gone.returncode == 1 and "the runtime daemon is not running" in gone.stderr
    assert "Traceback" not in gone.stderr + bad.stderr


def test_the_debug_cli_runs_an_image_from_the_store_and_returns_its_exit_code(rt: Daemon) -> None:
    from runtime.images import ImageStore
    from runtime.tinyimage import build_tiny_image

    build_tiny_image(ImageStore(rt.root / "images"))
    cli = [sys.executable, "-m", "runtime", "--root", str(rt.root)]
    images = subprocess.run([*cli, "images"], cwd=REPO, capture_output=True, text=True, check=True)
    assert images.stdout.startswith("tiny:latest")
    name = rt.new_id("cli")
    run = subprocess.run(
        [*cli, "run", "--name", name, "-e", "WHO=cli", "tiny", "--", "sh", "-c", "echo hi $WHO; echo warn >&2; exit 3"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert (run.returncode, run.stdout, run.stderr) == (3, "hi cli\n", "warn\n")
    stacks = subprocess.run([*cli, "stacks"], cwd=REPO, capture_output=True, text=True, check=True)
    assert [line.split()[0] for line in stacks.stdout.splitlines()] == ["debian-12", "debian-13"]
    missing = subprocess.run([*cli, "run", "nosuch"], cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr
