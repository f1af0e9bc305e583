"""Image pulls by digest: verified while streaming, coalesced, all-or-nothing; and the agent
pulling what its store lacks before it runs a container.

The controller's registry is stood in for by a small HTTP server over an image store (it can be
slowed down, made to lie and to hang up); tests/registry runs the same puller against the real
web process.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from runtime.agent.config import AgentSettings
from runtime.agent.core import Agent
from runtime.agent.reports import EVENTS_STREAM, Reporter
from runtime.images import CorruptImage, ImagePuller, ImageStore, InvalidReference, PullError
from runtime.tinyimage import build_tiny_image
from tests.runtime.agent_fakes import FakeDaemon

TOKEN = "paashost_" + "t" * 40


class FakeRegistry:
    """`/v2/<app>/manifests|blobs/<digest>` over `store`, for one app, with the host token."""

    def __init__(self, store: ImageStore, app: str) -> None:
        self.store, self.app = store, app
        self.gets: Counter[str] = Counter()
        self.delay_s = 0.0
        self.corrupt: set[str] = set()  # digests served with one byte changed
        self.hang_up: set[str] = set()  # digests whose body stops halfway
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                m = re.fullmatch(r"/v2/([^/]+)/(manifests|blobs)/(sha256:[0-9a-f]{64})", self.path)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._json(401, {"errors": [{"code": "UNAUTHORIZED", "message": "no"}]})
                if not m or m.group(1) != registry.app or not registry.store.has_blob(m.group(3)):
                    return self._json(404, {"errors": [{"code": "BLOB_UNKNOWN", "message": "none"}]})
                digest = m.group(3)
                registry.gets[digest] += 1
                data = registry.store.blob_path(digest).read_bytes()
                if digest in registry.corrupt:
                    data = data[:-1] + bytes([data[-1] ^ 1])
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if digest in registry.hang_up:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                time.sleep(registry.delay_s)
                self.wfile.write(data)

            def _json(self, status: int, body: object) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pp-"))  # short: the agent's daemon socket lives here
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def source(work: Path) -> tuple[ImageStore, str]:
    store = ImageStore(work / "controller")
    return store, store.manifest(build_tiny_image(store))[0]


@pytest.fixture
def registry(source: tuple[ImageStore, str]) -> Iterator[FakeRegistry]:
    fake = FakeRegistry(source[0], "web1")
    try:
        yield fake
    finally:
        fake.close()


def blobs_of(store: ImageStore, digest: str) -> list[str]:
    m = store.read_json_blob(digest)
    return [digest, m["config"]["digest"], *[layer["digest"] for layer in m["layers"]]]


def test_it_pulls_an_image_with_its_layers_unpacked(
        source: tuple[ImageStore, str], registry: FakeRegistry, work: Path) -> None:
    src, digest = source
    store = ImageStore(work / "host")
    with ImagePuller(store, registry.url, TOKEN) as puller:
        assert puller.pull("web1", digest) == digest
    image = store.resolve(digest)
    assert image.config == src.resolve(digest).config
    assert (image.layers[0] / "bin" / "busybox").exists()


def test_it_fetches_each_blob_once_when_pulls_of_one_image_run_at_once(
        source: tuple[ImageStore, str], registry: FakeRegistry, work: Path) -> None:
    src, digest = source
    registry.delay_s = 0.3  # long enough for every thread to ask before the first is done
    store = ImageStore(work / "host")
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            with ImagePuller(store, registry.url, TOKEN) as puller:
                puller.pull("web1", digest)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=pull) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    layers_and_config = blobs_of(src, digest)[1:]
    assert {d: registry.gets[d] for d in layers_and_config} == dict.fromkeys(layers_and_config, 1)
    assert store.exists(digest)


def test_it_keeps_nothing_of_a_layer_whose_bytes_do_not_match_its_digest(
        source: tuple[ImageStore, str], registry: FakeRegistry, work: Path) -> None:
    src, digest = source
    layer = blobs_of(src, digest)[2]
    registry.corrupt.add(layer)
    store = ImageStore(work / "host")
    with ImagePuller(store, registry.url, TOKEN) as puller, pytest.raises(
            CorruptImage, match=f"expected {layer}"):
        puller.pull("web1", digest)
    assert not store.has_blob(layer) and not store.exists(digest)
    assert list(store.tmp.iterdir()) == []


def test_it_keeps_nothing_of_a_blob_whose_download_breaks_off(
        source: tuple[ImageStore, str], registry: FakeRegistry, work: Path) -> None:
    src, digest = source
    layer = blobs_of(src, digest)[2]
    registry.hang_up.add(layer)
    store = ImageStore(work / "host")
    with ImagePuller(store, registry.url, TOKEN) as puller, pytest.raises(PullError):
        puller.pull("web1", digest)
    assert not store.has_blob(layer) and not store.exists(digest)
    assert list(store.tmp.iterdir()) == []
    registry.hang_up.clear()
    with ImagePuller(store, registry.url, TOKEN) as puller:  # the next pull completes it
        puller.pull("web1", digest)
    assert store.exists(digest)


def test_it_refuses_a_manifest_that_is_not_the_one_asked_for(
        source: tuple[ImageStore, str], registry: FakeRegistry, work: Path) -> None:
    _src, digest = source
    registry.corrupt.add(digest)
    store = ImageStore(work / "host")
    with ImagePuller(store, registry.url, TOKEN) as puller, pytest.raises(
            CorruptImage, match="the manifest has digest"):
        puller.pull("web1", digest)
    assert not store.exists(digest)


def test_it_says_which_image_and_why_when_the_controller_cannot_help(
        source: tuple[ImageStore, str], registry: FakeRegistry, work: Path) -> None:
    _src, digest = source
    store = ImageStore(work / "host")
    with ImagePuller(store, registry.url, "paashost_wrong") as puller, pytest.raises(
            PullError, match="refused the host token"):
        puller.pull("web1", digest)
    with ImagePuller(store, registry.url, TOKEN) as puller, pytest.raises(
            PullError, match="does not have it"):
        puller.pull("web1", "sha256:" + "0" * 64)
    with ImagePuller(store, "http://127.0.0.1:1", TOKEN) as puller, pytest.raises(
            PullError, match="cannot reach the controller"):
        puller.pull("web1", digest)
    with ImagePuller(store, registry.url, TOKEN) as puller, pytest.raises(InvalidReference):
        puller.pull("web1", "tiny:latest")
    with pytest.raises(PullError, match="must start with http"):
        ImagePuller(store, "ftp://x", TOKEN)


# -- the agent ----------------------------------------------------------------------------------


@pytest.fixture
def rdb() -> redis.Redis[bytes]:
    url = os.environ.get("REDIS_URL")
    assert url, "REDIS_URL is not set: run the suite through scripts/with-test-services"
    return redis.Redis.from_url(url)


def make_agent(work: Path, rdb: redis.Redis[bytes], controller: str) -> tuple[Agent, FakeDaemon]:
    root = work / "rt"
    root.mkdir()
    daemon = FakeDaemon(root / "daemon.sock")
    settings = AgentSettings.from_env({
        "REDIS_URL": os.environ["REDIS_URL"],
        "PAAS_RUNTIME_DIR": str(root), "PAAS_CONTROLLER_URL": controller,
        "PAAS_HOST_TOKEN": TOKEN}, host=f"p-{secrets.token_hex(4)}")
    return Agent(settings, Reporter(rdb, settings.host)), daemon


def host_events(rdb: redis.Redis[bytes], host: str) -> list[dict[str, str]]:
    out = []
    for _id, fields in rdb.xrange(EVENTS_STREAM):
        data = {k.decode(): v.decode() for k, v in fields.items()}
        if data["host"] == host:
            out.append(data)
    return out


def spec(digest: str) -> dict[str, Any]:
    return {"id": f"web1.web.1.{secrets.token_hex(3)}", "app": "web1", "release": 2,
            "process_type": "web", "image": digest, "command": ["/bin/sh", "-c", "sleep 60"],
            "env": {"PORT": "5000"}, "port": 5000, "memory_mb": 64}


def test_the_agent_pulls_an_image_it_lacks_then_runs_the_container(
        source: tuple[ImageStore, str], registry: FakeRegistry, work: Path,
        rdb: redis.Redis[bytes]) -> None:
    _src, digest = source
    agent, daemon = make_agent(work, rdb, registry.url)
    try:
        result = agent.run(spec(digest))
        assert result["ok"] is True and result["image"] == digest
        create = daemon.requests[0]
        image = ImageStore(agent.settings.image_root).resolve(digest)
        assert create["layers"] == [str(p) for p in image.layers]
        assert [e["state"] for e in host_events(rdb, agent.settings.host)] == ["starting", "running"]
    finally:
        daemon.close()


def test_the_agent_reports_a_failed_pull_as_a_failed_event_and_runs_nothing(
        source: tuple[ImageStore, str], registry: FakeRegistry, work: Path,
        rdb: redis.Redis[bytes]) -> None:
    src, digest = source
    registry.corrupt.add(blobs_of(src, digest)[2])
    agent, daemon = make_agent(work, rdb, registry.url)
    try:
        result = agent.run(spec(digest))
        assert result["ok"] is False
        (event,) = host_events(rdb, agent.settings.host)
        assert event["state"] == "failed" and "expected sha256:" in event["message"]
        assert daemon.ops() == []
        store = ImageStore(agent.settings.image_root)
        assert not store.exists(digest) and list(store.tmp.iterdir()) == []
    finally:
        daemon.close()


def test_the_agents_settings_refuse_a_controller_url_or_address_it_cannot_use() -> None:
    from runtime.agent.config import ConfigError

    base = {"REDIS_URL": "redis://127.0.0.1:6379/0", "PAAS_RUNTIME_DIR": "/nonexistent"}
    with pytest.raises(ConfigError, match="PAAS_CONTROLLER_URL must be the controller's http"):
        AgentSettings.from_env({**base, "PAAS_CONTROLLER_URL": "controller:8000"}, host="h1")
    with pytest.raises(ConfigError, match="PAAS_HOST_ADDRESS must be an IPv4 address"):
        AgentSettings.from_env({**base, "PAAS_HOST_ADDRESS": "host-a"}, host="h1")
    with pytest.raises(ConfigError, match="PAAS_HOST_SUBNET must be an IPv4 subnet"):
        AgentSettings.from_env({**base, "PAAS_HOST_SUBNET": "10.1.2.3/33"}, host="h1")
    ok = AgentSettings.from_env({**base, "PAAS_CONTROLLER_URL": "http://c:8000/",
                                 "PAAS_HOST_ADDRESS": "127.0.0.1"}, host="h1")
    assert ok.controller_url == "http://c:8000" and ok.host_address == ""  # loopback: no routes
