"""`paas run`'s own decisions, without a server: what it sends as the command, and its exit."""

from __future__ import annotations

import pytest

from paas_cli.main import main
from paas_cli.run import _exit_status, command_body


@pytest.mark.parametrize(("args", "body"), [
    (["python", "manage.py", "migrate"], ["python", "manage.py", "migrate"]),
    (["sh", "-c", "exit 3"], ["sh", "-c", "exit 3"]),
    (["bash"], ["bash"]),
    (["echo $PORT"], "echo $PORT"),  # one argument with shell syntax: /bin/sh -c
    (["ls -l | wc -l"], "ls -l | wc -l"),
])
def test_it_sends_arguments_as_they_are_and_a_shell_line_as_a_string(args, body) -> None:
    assert command_body(args) == body


def test_it_exits_with_the_commands_status(capsys) -> None:
    assert _exit_status({"exit": 3, "message": ""}, "run.1") == 3
    assert _exit_status({"exit": 0, "message": ""}, "run.1") == 0
    assert capsys.readouterr().err == ""


def test_it_says_why_a_one_off_did_not_run_to_its_end_and_exits_1(capsys) -> None:
    assert _exit_status({"exit": None, "message": "image 'sha256:00' not found"}, "run.2") == 1
    assert capsys.readouterr().err == "paas: run.2 did not run to its end: image 'sha256:00' not found.\n"
    assert _exit_status({"exit": 137, "message": "it was stopped after its time limit of 5 s"}, "run.3") == 137
    assert "time limit" in capsys.readouterr().err


def test_it_asks_for_a_command(capsys, monkeypatch) -> None:
    monkeypatch.setenv("PAAS_TOKEN", "paas_x")
    assert main(["run", "-a", "web1"]) == 2
    assert "Missing argument" in capsys.readouterr().err
