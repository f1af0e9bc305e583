"""A real controller web process (gunicorn, SQLite in a throw-away data dir, its own
redis-server) holding the tiny busybox image as one app's build, and the tokens that read it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.images import ImageStore
from tests.liveprocs import free_port, isolated_env, start_redis, stop_groups, wait_until_answers

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Registry:
    url: str
    store: ImageStore  # the controller's image store
    app: str
    other_app: str
    image: str  # the app's image (manifest digest)
    other_image: str  # the other app's image, not the app's
    host_token: str
    owner_token: str
    stranger_token: str
    log: Path


def _shell(env: dict[str, str], code: str) -> object:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "--verbosity", "0", "-c",
         code + "\nimport json; print(json.dumps(out))"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    work = Path(tempfile.mkdtemp(prefix="paas-registry-"))
    port, redis_port = free_port(), free_port()
    env = isolated_env(work, redis_port, "reg")
    redis = start_redis(work, redis_port)
    web: subprocess.Popen[bytes] | None = None
    log_path = work / "gunicorn.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed in the finally below
    try:
        subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--verbosity", "0"],
                       cwd=ROOT, env=env, check=True, timeout=120)
        from runtime.tinyimage import build_tiny_image

        store = ImageStore(work / "data" / "runtime" / "images")
        image = store.manifest(build_tiny_image(store))[0]
        other = store.add_image("other:1", [], {"config": {"Cmd": ["true"]}})
        app, other_app = f"reg-{uuid.uuid4().hex[:8]}", f"oth-{uuid.uuid4().hex[:8]}"
        out = _shell(env, (
            "from core.actions import token_create, user_create, team_create, app_create, "
            "build_create, build_finish, host_register\n"
            f"o = user_create(actor=None, username='o-{app}')\n"
            f"s = user_create(actor=None, username='s-{app}')\n"
            f"staff = user_create(actor=None, username='st-{app}', is_staff=True)\n"
            f"t = team_create(actor=o, name='t-{app}')\n"
            f"t2 = team_create(actor=s, name='t2-{app}')\n"
            "def ship(actor, team, name, digest):\n"
            "    a = app_create(actor=actor, name=name, team=team)\n"
            "    b = build_create(actor=actor, app=a, commit='ab' * 20)\n"
            "    build_finish(actor=actor, build=b, succeeded=True, image_digest=digest,\n"
            "                 process_types={'web': 'httpd -f -p $PORT'})\n"
            f"ship(o, t, {app!r}, {image!r})\n"
            f"ship(s, t2, {other_app!r}, {other!r})\n"
            "h, host_token = host_register(actor=staff, name='reg-host', address='10.1.2.3',\n"
            "                              memory_mb=1024, cpus=1)\n"
            "out = [host_token, token_create(actor=o)[1], token_create(actor=s)[1]]\n"
        ))
        assert isinstance(out, list)
        web = subprocess.Popen(
            [str(BIN / "gunicorn"), "controlplane.wsgi", "--bind", f"127.0.0.1:{port}",
             "--workers", "1", "--worker-class", "gthread", "--threads", "4", "--timeout", "60"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        wait_until_answers(web, url + "/v2/", log_path)
        yield Registry(url=url, store=store, app=app, other_app=other_app, image=image,
                       other_image=other, host_token=out[0], owner_token=out[1],
                       stranger_token=out[2], log=log_path)
    finally:
        stop_groups(web, redis)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
