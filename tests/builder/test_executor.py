from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from builder.errors import BuildError
from builder.executor import HostExecutor, Limits, StepTimeout, executor_mode

from .conftest import BUILD_USER, pid_gone

ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def run(argv: list[str], tmp_path: Path, timeout: float = 30, **kwargs: object) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = HostExecutor(**kwargs).run(argv, tmp_path, ENV, timeout, lines.append)  # type: ignore[arg-type]
    return code, lines


def test_it_returns_the_exit_code_and_merges_stderr_into_the_lines(tmp_path: Path) -> None:
    code, lines = run(["/bin/bash", "-c", "echo out; echo err >&2; exit 7"], tmp_path)
    assert code == 7
    assert sorted(lines) == ["err", "out"]


def test_it_streams_each_line_while_the_command_still_runs(tmp_path: Path) -> None:
    # The command waits until the test has seen its first line: if lines were only passed on
    # at the end, the command would never finish and the step would time out.
    flag = tmp_path / "seen"
    script = f"echo ready; while [ ! -e {flag} ]; do sleep 0.05; done; echo finished"

    def on_line(line: str) -> None:
        lines.append(line)
        if line == "ready":
            flag.touch()

    lines: list[str] = []
    code = HostExecutor().run(["/bin/bash", "-c", script], tmp_path, ENV, 30, on_line)
    assert (code, lines) == (0, ["ready", "finished"])


def test_it_passes_exactly_the_given_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAAS_SECRET_IN_BUILDER", "leak")
    _code, lines = run(["/usr/bin/env"], tmp_path)
    assert sorted(lines) == ["LANG=C.UTF-8", "PATH=/usr/bin:/bin"]


def test_it_runs_the_command_in_a_new_session_in_cwd(tmp_path: Path) -> None:
    code, lines = run(
        [sys.executable, "-c", "import os; print(os.getsid(0) == os.getpid(), os.getcwd())"], tmp_path
    )
    assert (code, lines) == (0, [f"True {tmp_path}"])


def test_it_applies_resource_limits_in_the_child(tmp_path: Path) -> None:
    limits = Limits(max_file_bytes=1024 * 1024, max_open_files=64, core_bytes=0)
    _code, lines = run(["/bin/bash", "-c", "ulimit -f; ulimit -n; ulimit -c"], tmp_path, limits=limits)
    assert lines == ["1024", "64", "0"]


def test_it_stops_a_write_past_the_file_size_limit(tmp_path: Path) -> None:
    limits = Limits(max_file_bytes=64 * 1024)
    code, _lines = run(
        ["/bin/bash", "-c", "head -c 1000000 /dev/zero > big"], tmp_path, limits=limits
    )
    assert code != 0
    assert (tmp_path / "big").stat().st_size <= 64 * 1024


def test_it_kills_the_whole_process_group_on_timeout(tmp_path: Path) -> None:
    lines: list[str] = []
    with pytest.raises(StepTimeout, match=r"did not finish within 3 s and was stopped"):
        HostExecutor(kill_grace=1).run(
            ["/bin/bash", "-c", "sleep 300 & echo $!; wait"], tmp_path, ENV, 3, lines.append
        )
    child = int(lines[0])
    assert pid_gone(child)


def test_it_kills_what_the_command_left_running_after_it_exits(tmp_path: Path) -> None:
    # The background sleep keeps the output pipe open; the step still ends with its leader.
    code, lines = run(["/bin/bash", "-c", "sleep 300 & echo $!"], tmp_path, kill_grace=1)
    assert code == 0
    assert pid_gone(int(lines[0]))


def test_it_ends_the_step_with_its_command_even_if_a_leftover_keeps_writing(tmp_path: Path) -> None:
    script = "(while true; do echo spam; sleep 0.01; done) & echo leftover $!; echo last words"
    code, lines = run(["/bin/bash", "-c", script], tmp_path, timeout=60, kill_grace=1)
    assert code == 0
    assert "last words" in lines
    leftover = next(line for line in lines if line.startswith("leftover "))
    assert pid_gone(int(leftover.split()[1]))


def test_it_passes_on_a_last_line_without_newline_and_splits_endless_lines(tmp_path: Path) -> None:
    _code, lines = run(["/bin/bash", "-c", "head -c 20000 /dev/zero | tr '\\0' x; echo; printf tail"], tmp_path)
    assert "".join(lines[:-1]) == "x" * 20000
    assert all(len(line) <= 8192 for line in lines)
    assert lines[-1] == "tail"


def test_it_reports_a_missing_program_clearly(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"cannot run /nonexistent/prog: No such file"):
        run(["/nonexistent/prog"], tmp_path)


def test_it_leaves_no_descriptor_open_in_the_builder(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        run(["/bin/true"], tmp_path)
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.root
def test_it_runs_the_command_as_the_build_user_without_extra_groups(tmp_path: Path) -> None:
    code, lines = run(["/usr/bin/id", "-u"], tmp_path, owner=BUILD_USER)
    assert (code, lines) == (0, [str(BUILD_USER[0])])
    _code, lines = run(["/usr/bin/id", "-G"], tmp_path, owner=BUILD_USER)
    assert lines == [str(BUILD_USER[1])]


def test_it_refuses_a_build_user_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ValueError, match=r"running build steps as another user needs root"):
        HostExecutor(owner=BUILD_USER)


def test_it_builds_on_the_runtime_when_root_and_the_daemon_answers() -> None:
    assert executor_mode("", lambda: True, is_root=True) == "runtime"
    assert executor_mode("auto", lambda: True, is_root=True) == "runtime"


def test_it_builds_on_the_host_without_root_or_without_a_daemon() -> None:
    assert executor_mode("", lambda: True, is_root=False) == "host"
    assert executor_mode("", lambda: False, is_root=True) == "host"


def test_it_builds_on_the_host_when_told_to_even_with_a_daemon() -> None:
    asked: list[bool] = []
    assert executor_mode("host", lambda: asked.append(True) or True, is_root=True) == "host"
    assert asked == []


def test_it_says_what_to_do_when_the_runtime_is_asked_for_but_absent() -> None:
    with pytest.raises(BuildError) as err:
        executor_mode("runtime", lambda: False, is_root=True)
    assert str(err.value) == (
        "PAAS_BUILD_EXECUTOR=runtime, but the runtime daemon does not answer; start it "
        "(as root, `make up`) or set PAAS_BUILD_EXECUTOR=host."
    )


def test_it_refuses_an_unknown_executor_setting() -> None:
    with pytest.raises(BuildError, match="PAAS_BUILD_EXECUTOR must be host, runtime or auto, not 'docker'"):
        executor_mode("docker", lambda: True, is_root=True)
