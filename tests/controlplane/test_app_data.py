"""A destroyed app leaves nothing behind: not on the controller's disk, not in Redis.

Real files under a throw-away PAAS_DATA_DIR (the repository made by the git receiver's own code),
the real redis-server of scripts/with-test-services, and the real build-cache lock of the builder.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from builder.buildpack import _locked, default_cache_dir
from builder.slug import layer_cache_dir
from controlplane.celery import app as celery_app
from core import actions, appdata, tasks
from core.models import App, Build
from gitserver.deploy import APP_DESTROYED, run_build
from gitserver.repos import PushLock, open_repo, repo_path
from router.metrics import logs_key, metrics_key
from runtime.agent.oneoff import run_stream
from runtime.agent.reports import RUNTIME_METRICS_KEY
from runtime.images import ImageStore
from runtime.tinyimage import build_tiny_image
from scheduler import oneoff
from tests.gitserver.gitrepo import one_commit_repo

pytestmark = pytest.mark.django_db


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("PAAS_DATA_DIR", str(root))
    return root


@pytest.fixture
def r() -> Iterator[redis.Redis[bytes]]:
    url = os.environ.get("REDIS_URL")
    assert url, "run under scripts/with-test-services (it starts redis-server)"
    client: redis.Redis[bytes] = redis.Redis.from_url(url)
    queue = celery_app.conf.task_default_queue
    before = client.lrange(queue, 0, -1)
    yield client
    for message in client.lrange(queue, 0, -1):  # only the messages this test added
        if message not in before:
            client.lrem(queue, 1, message)


def _messages(client: redis.Redis[bytes], task: str) -> list[dict[str, object]]:
    found = []
    for raw in client.lrange(celery_app.conf.task_default_queue, 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == task:
            found.append(json.loads(base64.b64decode(message["body"]))[1])
    return found


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def _fill(data: Path, client: redis.Redis[bytes], app: App, build_id: int) -> dict[str, list]:
    """Give `app` a repository, caches, a leftover build directory and every kind of Redis key."""
    name = app.name
    open_repo(name).close()
    PushLock(name).release()
    cache = default_cache_dir(name, data)
    cache.mkdir(parents=True)
    with _locked(cache):  # the builder's own lock file, as a build leaves it
        (cache / "pip").mkdir()
        (cache / "pip" / "wheel.whl").write_bytes(b"x" * 100)
    layers = layer_cache_dir(cache)
    layers.mkdir()
    (layers / "venv.tar").write_bytes(b"layer")
    scratch = data / "builds" / f"{name}-ab12cd_9"
    (scratch / "work").mkdir(parents=True)
    paths = [repo_path(name), repo_path(name).with_name(f"{name}.push-lock"), cache, layers, scratch]

    oneoff_id = f"{name}.run.3.a1b2c3"
    keys = [
        logs_key(name), metrics_key(name), f"{metrics_key(name)}:29512345",
        RUNTIME_METRICS_KEY.format(app=name, minute=29512345),
        f"paas:scheduler:readiness:{name}",  # written by older versions
        oneoff.ACTIVE_KEY.format(app=name), oneoff.COUNTER_KEY.format(app=name),
        oneoff.META_KEY.format(id=oneoff_id), run_stream(oneoff_id),
        oneoff.PHASE_KEY.format(app=name, release_id=7),
        f"paas:build-logs:{build_id}",
    ]
    for key in keys:
        client.set(key, "1")
    client.zadd(oneoff.PLACED_KEY, {oneoff_id: 2e9})
    return {"paths": paths, "keys": keys, "placed": [oneoff_id]}


def test_it_removes_a_destroyed_apps_repository_caches_and_keys(acme, data, r, django_capture_on_commit_callbacks) -> None:
    gone = actions.app_create(actor=acme.owner, name=_name("gone"), team=acme.team)
    kept = actions.app_create(actor=acme.owner, name=_name("kept"), team=acme.team)
    build = actions.build_create(actor=acme.member, app=gone, commit="a" * 40)
    mine, other = _fill(data, r, gone, build.pk), _fill(data, r, kept, build.pk + 1000)

    with django_capture_on_commit_callbacks(execute=True):
        actions.app_destroy(actor=acme.owner, app=gone)
    sent = _messages(r, "core.app_data_remove")
    assert {"app_name": gone.name, "build_ids": [build.pk]} in sent
    tasks.app_data_remove.run(app_name=gone.name, build_ids=[build.pk])

    assert [p for p in mine["paths"] if os.path.lexists(p)] == []
    assert [k for k in mine["keys"] if r.exists(k)] == []
    assert r.zscore(oneoff.PLACED_KEY, mine["placed"][0]) is None
    assert r.zscore(oneoff.PLACED_KEY, other["placed"][0]) is not None
    assert all(p.exists() for p in other["paths"])
    assert (default_cache_dir(kept.name, data) / "pip" / "wheel.whl").read_bytes() == b"x" * 100
    assert all(r.exists(k) for k in other["keys"])
    r.zrem(oneoff.PLACED_KEY, other["placed"][0])
    r.delete(*other["keys"])


def test_it_runs_twice_without_complaint(acme, data, r) -> None:
    app = actions.app_create(actor=acme.owner, name=_name("twice"), team=acme.team)
    filled = _fill(data, r, app, 424242)
    name = app.name
    actions.app_destroy(actor=acme.owner, app=app)
    tasks.app_data_remove.run(app_name=name, build_ids=[424242])
    again = appdata.remove_app_data(data, r, name, [424242])
    assert again.paths == [] and again.keys == 0
    assert [p for p in filled["paths"] if os.path.lexists(p)] == []


def test_it_never_follows_a_symlink_out_of_the_data_dir(acme, data, r, tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    app = actions.app_create(actor=acme.owner, name=_name("links"), team=acme.team)
    cache = default_cache_dir(app.name, data)
    cache.mkdir(parents=True)
    (cache / "escape").symlink_to(outside)
    (cache / "escape-file").symlink_to(outside / "precious")
    layer_cache_dir(cache).symlink_to(outside)  # the place itself is a link
    name = app.name
    actions.app_destroy(actor=acme.owner, app=app)

    tasks.app_data_remove.run(app_name=name)

    assert not os.path.lexists(cache) and not os.path.lexists(layer_cache_dir(cache))
    assert (outside / "precious").read_text() == "keep me"
    assert sorted(p.name for p in outside.iterdir()) == ["precious"]


def test_it_leaves_alone_a_place_whose_directory_leads_out_of_the_data_dir(acme, data, r, tmp_path, caplog) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (data / "repos").symlink_to(elsewhere)
    app = actions.app_create(actor=acme.owner, name=_name("moved"), team=acme.team)
    (elsewhere / f"{app.name}.git").mkdir()
    (elsewhere / f"{app.name}.git" / "HEAD").write_text("ref: refs/heads/main\n")
    name = app.name
    actions.app_destroy(actor=acme.owner, app=app)

    with caplog.at_level(logging.WARNING, logger="core"):
        tasks.app_data_remove.run(app_name=name)

    assert (elsewhere / f"{name}.git" / "HEAD").exists()
    assert "outside the data directory" in caplog.text


def test_it_waits_for_a_running_build_and_then_removes_what_it_wrote(acme, data, r) -> None:
    app = actions.app_create(actor=acme.owner, name=_name("busy"), team=acme.team)
    name = app.name
    cache = default_cache_dir(name, data)
    cache.mkdir(parents=True)
    actions.app_destroy(actor=acme.owner, app=app)

    with _locked(cache):  # a build of the app holds the cache, as the builder does
        (cache / "half-written").write_text("...")
        tasks.app_data_remove.run(app_name=name, build_ids=[])
        assert (cache / "half-written").exists()
        assert {"app_name": name, "build_ids": [], "attempt": 1} in _messages(r, "core.app_data_remove")
        (cache / "npm").mkdir()  # the build goes on writing
    tasks.app_data_remove.run(app_name=name, build_ids=[], attempt=1)

    assert not os.path.lexists(cache)


def test_it_removes_all_the_same_once_a_lock_outlasts_every_attempt(acme, data, r) -> None:
    app = actions.app_create(actor=acme.owner, name=_name("stuck"), team=acme.team)
    name = app.name
    cache = default_cache_dir(name, data)
    cache.mkdir(parents=True)
    actions.app_destroy(actor=acme.owner, app=app)
    with _locked(cache):
        tasks.app_data_remove.run(app_name=name, attempt=tasks.DATA_REMOVE_ATTEMPTS - 1)
        assert not (cache / ".lock").exists()


def test_it_sweeps_late_keys_but_not_those_of_a_new_app_of_the_same_name(acme, data, r) -> None:
    name = _name("again")
    app = actions.app_create(actor=acme.owner, name=name, team=acme.team)
    actions.app_destroy(actor=acme.owner, app=app)
    tasks.app_data_remove.run(app_name=name)
    assert {"app_name": name, "build_ids": [], "sweep": True} in _messages(r, "core.app_data_remove")

    r.hset(metrics_key(name), "requests", 3)  # a router's last flush, after the route went
    tasks.app_data_remove.run(app_name=name, sweep=True)
    assert not r.exists(metrics_key(name))

    actions.app_create(actor=acme.owner, name=name, team=acme.team)
    r.hset(metrics_key(name), "requests", 1)
    tasks.app_data_remove.run(app_name=name, sweep=True)
    assert r.hget(metrics_key(name), "requests") == b"1"
    r.delete(metrics_key(name))


def test_it_tells_apart_apps_whose_names_share_a_prefix(data, r) -> None:
    short, longer = _name("web"), None
    longer = f"{short}-api"
    for app in (short, longer):
        (data / "builds" / f"{app}-x1y2z3w4").mkdir(parents=True)
        r.set(f"paas:metrics:router:{app}:29512345", 1)
        r.set(run_stream(f"{app}.run.1.abcdef"), 1)
    appdata.remove_app_data(data, r, short)
    assert not (data / "builds" / f"{short}-x1y2z3w4").exists()
    assert (data / "builds" / f"{longer}-x1y2z3w4").exists()
    assert r.exists(f"paas:metrics:router:{longer}:29512345", run_stream(f"{longer}.run.1.abcdef")) == 2
    appdata.remove_app_data(data, r, longer)


@pytest.mark.parametrize("bad", ["../etc", "a*", "web/../../x", "", "Web1", "x" * 40])
def test_it_refuses_anything_but_an_app_name(data, r, bad) -> None:
    with pytest.raises(ValueError, match="not an app name"):
        appdata.remove_app_data(data, r, bad)


def test_it_stops_the_running_build_of_a_destroyed_app_and_then_removes_its_cache(
        acme, data, r, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PAAS_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("PAAS_BUILD_STACK", "tiny")
    build_tiny_image(ImageStore(tmp_path / "runtime" / "images"))
    app = actions.app_create(actor=acme.owner, name=_name("mid"), team=acme.team)
    name = app.name
    repo, commit = one_commit_repo(tmp_path, {"Procfile": "web: httpd -f -p $PORT\n"})
    cancelled = threading.Event()
    said: list[str] = []
    build_ids: list[int] = []
    seen: list[bool] = []

    def say(line: str) -> None:
        said.append(line)
        if "Procfile app detected" in line:  # the build holds the app's cache now
            build_ids.append(Build.objects.get(app=app).pk)
            actions.app_destroy(actor=acme.owner, app=app)
            tasks.app_data_remove.run(app_name=name, build_ids=build_ids)
            # (what `say` raises would end the build: note what was seen, check it after)
            seen.append(default_cache_dir(name, data).exists())  # not removed under the build
            seen.append(cancelled.wait(10))  # the build saw that its app was destroyed

    outcome = run_build(app=app, user=acme.owner, commit=commit, repo=repo, say=say,
                        cancelled=cancelled)

    assert seen == [True, True]
    assert not outcome.ok and outcome.reason == "app destroyed"
    assert said[-1] == f" !     {APP_DESTROYED}"
    assert not any("Released" in line for line in said)
    assert {"app_name": name, "build_ids": build_ids, "attempt": 1} in _messages(r, "core.app_data_remove")
    tasks.app_data_remove.run(app_name=name, build_ids=build_ids, attempt=1)
    assert not os.path.lexists(default_cache_dir(name, data))
    assert [p.name for p in (data / "builds").iterdir()] == []
    assert not r.exists(appdata.build_cancel_key(build_ids[0]))
