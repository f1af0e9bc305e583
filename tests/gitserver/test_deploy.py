"""`gitserver.deploy.run_build` in-process: what a push's build records, whatever happens."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from builder.executor import HostExecutor
from controlplane.env import data_dir
from core import actions
from core.models import App, Build
from gitserver.deploy import CancellableExecutor, ClientGone, run_build
from runtime.images import ImageStore
from runtime.tinyimage import build_tiny_image
from tests.gitserver.gitrepo import one_commit_repo


@pytest.fixture
def pushed(db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, App]:
    monkeypatch.setenv("PAAS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PAAS_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("PAAS_BUILD_STACK", "tiny")
    build_tiny_image(ImageStore(tmp_path / "runtime" / "images"))
    user = actions.user_create(actor=None, username="pusher", email="p@example.com")
    team = actions.team_create(actor=user, name="pushers")
    return user, actions.app_create(actor=user, name="pushed", team=team)


def test_it_records_a_good_build_and_its_release(pushed: tuple[Any, App], tmp_path: Path) -> None:
    user, app = pushed
    repo, commit = one_commit_repo(tmp_path, {"Procfile": "web: httpd -f -p $PORT\n"})
    said: list[str] = []

    outcome = run_build(app=app, user=user, commit=commit, repo=repo, say=said.append)

    assert outcome.ok
    build = Build.objects.get(app=app)
    assert build.status == "succeeded" and build.commit == commit
    assert build.image_digest.startswith("sha256:") and build.slug_size
    release = app.releases.order_by("-version").first()
    assert release is not None and release.build_id == build.pk
    assert said[-2:] == [f"-----> Released v{release.version}", f"       {app.url} deployed"]
    assert list((data_dir() / "builds").iterdir()) == []  # the scratch space is gone


def test_it_names_the_missing_stack_and_records_the_failure(
    pushed: tuple[Any, App], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    user, app = pushed
    monkeypatch.setenv("PAAS_BUILD_STACK", "stack:debian-13")
    repo, commit = one_commit_repo(tmp_path, {"Procfile": "web: httpd -f -p $PORT\n"})
    said: list[str] = []

    outcome = run_build(app=app, user=user, commit=commit, repo=repo, say=said.append)

    assert not outcome.ok and outcome.reason == "build failed"
    text = "\n".join(said)
    assert "'stack:debian-13' is not on this host" in text
    assert "python -m runtime.stacks build debian-13" in text
    build = Build.objects.get(app=app)
    assert build.status == "failed" and "is not on this host" in build.log


def test_it_stops_at_the_next_step_once_the_client_is_gone(
    pushed: tuple[Any, App], tmp_path: Path,
) -> None:
    user, app = pushed
    repo, commit = one_commit_repo(tmp_path, {"Procfile": "web: sleep 1\n"})
    cancelled = threading.Event()
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        if "Procfile app detected" in line:
            cancelled.set()  # as the response does when the client has hung up

    with pytest.raises(ClientGone):
        run_build(app=app, user=user, commit=commit, repo=repo, say=say, cancelled=cancelled)

    build = Build.objects.get(app=app)
    assert build.status == "failed"
    assert build.log.endswith("The git client disconnected; the build was cancelled.")
    assert not any("Released" in line for line in said)


def test_it_kills_a_silent_step_and_what_it_started(tmp_path: Path) -> None:
    cancelled = threading.Event()
    executor = CancellableExecutor(HostExecutor(), cancelled)
    marker = tmp_path / "child-pid"
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        cancelled.set()  # the step has started and is now silent

    code = executor.run(
        ["/bin/sh", "-c", f"sleep 600 & echo $! > {marker}; echo started; wait"],
        tmp_path, {"PATH": "/usr/bin:/bin"}, 600, on_line,
    )

    assert code < 0 and lines == ["started"]
    child = int(marker.read_text())
    try:  # gone, or dead and waiting to be reaped by whoever inherited it
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z")
