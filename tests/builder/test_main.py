from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import APPS


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, check=False)


def test_it_builds_a_directory_and_prints_a_json_summary(tmp_path: Path) -> None:
    proc = run(str(APPS / "static"), "--app", "site", "--cache", str(tmp_path / "cache"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "-----> Static site app detected"
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["kinds"] == ["Static site"]
    assert summary["slug"]["digest"].startswith("sha256:")
    assert "web" in summary["process_types"]


def test_it_prints_a_build_error_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("web\n")
    proc = run(str(tmp_path), "--cache", str(tmp_path / "cache"))
    assert proc.returncode == 1
    assert proc.stderr == " !     Procfile line 1: expected `type: command`, got 'web'\n"


def test_it_says_when_a_build_container_is_asked_for_but_no_daemon_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "builder", str(APPS / "static"), "--executor", "runtime"],
        capture_output=True, text=True, check=False, env={"PATH": "/usr/bin:/bin", "PAAS_DATA_DIR": str(tmp_path)},
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        " !     --executor runtime needs the runtime daemon: the runtime daemon is not running "
        f"(no answer on {tmp_path}/runtime/daemon.sock)\n"
    )
