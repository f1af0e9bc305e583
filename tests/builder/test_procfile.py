from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import ProcfileError
from builder.procfile import parse_procfile, read_procfile, resolve_process_types


def test_it_reads_types_in_file_order_skipping_comments_and_blank_lines() -> None:
    text = "# comment\n\nweb: gunicorn app:app --bind 0.0.0.0:$PORT\nworker:  celery -A x worker \n"
    assert parse_procfile(text) == {
        "web": "gunicorn app:app --bind 0.0.0.0:$PORT",
        "worker": "celery -A x worker",
    }


def test_it_keeps_colons_inside_the_command() -> None:
    assert parse_procfile("web: python -c 'print(1)' --opt=a:b\n") == {
        "web": "python -c 'print(1)' --opt=a:b"
    }


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("web: ok\nthis line has no colon\n", 2, "expected `type: command`"),
        ("web: ok\n: echo hi\n", 2, "name is missing"),
        ("Web: echo hi\n", 1, "bad process type name 'Web'"),
        ("web.1: echo hi\n", 1, "bad process type name 'web.1'"),
        ("9web: echo hi\n", 1, "bad process type name '9web'"),
        ("web:\n", 1, "process type 'web' has no command"),
        ("web: a\n\nworker: b\nweb: c\n", 4, "process type 'web' is declared twice"),
    ],
)
def test_it_names_the_line_and_the_problem(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ProcfileError) as err:
        parse_procfile(text)
    assert err.value.line == line
    assert str(err.value).startswith(f"Procfile line {line}: ")
    assert fragment in str(err.value)


def test_it_reports_the_line_of_bad_utf8(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_bytes(b"web: ok\nworker: caf\xe9\n")
    with pytest.raises(ProcfileError, match=r"^Procfile line 2: the Procfile is not valid UTF-8"):
        read_procfile(tmp_path)


def test_it_returns_none_without_a_procfile(tmp_path: Path) -> None:
    assert read_procfile(tmp_path) is None


def test_it_lets_the_procfile_override_buildpack_defaults_per_type() -> None:
    types = resolve_process_types(
        {"web": "gunicorn app:app", "worker": "python worker.py"},
        {"web": "npm start", "console": "node"},
    )
    assert types.types == {"web": "gunicorn app:app", "console": "node", "worker": "python worker.py"}


def test_it_recognises_the_release_type_as_not_scalable() -> None:
    types = resolve_process_types({"web": "run $PORT", "release": "python manage.py migrate"}, {})
    assert types.types == {"web": "run $PORT"}
    assert types.release == "python manage.py migrate"
    assert types.as_label() == {"release": "python manage.py migrate", "web": "run $PORT"}


def test_it_gives_web_and_only_web_a_port() -> None:
    types = resolve_process_types({"web": "serve --port $PORT", "worker": "work"}, {})
    assert types.environment("web", 5000) == {"PORT": "5000"}
    assert types.environment("worker", 5000) == {}
    with pytest.raises(KeyError):
        types.environment("clock", 5000)


def test_it_warns_when_the_procfile_web_command_ignores_port() -> None:
    assert resolve_process_types({"web": "serve --port 80"}, {}).warnings[0].startswith(
        "The web command does not mention $PORT"
    )
    assert resolve_process_types({"web": "serve --port ${PORT}"}, {}).warnings == ()


def test_it_warns_when_there_is_no_web_type() -> None:
    assert "No web process type" in resolve_process_types({"worker": "w"}, {}).warnings[0]


def test_it_refuses_a_procfile_that_is_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("web: ok\n")
    (tmp_path / "Procfile").symlink_to("real")
    with pytest.raises(ProcfileError, match=r"^Procfile: the Procfile must be a regular file"):
        read_procfile(tmp_path)
