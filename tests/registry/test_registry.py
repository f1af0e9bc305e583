"""The registry's read endpoints, served by the real web process (gunicorn), and the agent's
puller against them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from runtime.images import CorruptImage, ImagePuller, ImageStore, PullError
from tests.registry.conftest import Registry

pytestmark = pytest.mark.slow


def get(reg: Registry, path: str, token: str | None, method: str = "GET") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, reg.url + path, headers=headers, timeout=30)


def code(resp: httpx.Response) -> str:
    return str(resp.json()["errors"][0]["code"])


def test_it_answers_the_api_probe_to_a_host_token_and_asks_anyone_else_to_log_in(registry: Registry) -> None:
    assert get(registry, "/v2/", registry.host_token).status_code == 200
    anonymous = get(registry, "/v2/", None)
    assert anonymous.status_code == 401 and code(anonymous) == "UNAUTHORIZED"
    assert "WWW-Authenticate" in anonymous.headers
    wrong = get(registry, "/v2/", "paashost_not-a-real-token")
    assert wrong.status_code == 401 and "wrong or has been revoked" in wrong.json()["errors"][0]["message"]


def test_it_serves_a_manifest_by_digest_whose_bytes_hash_to_that_digest(registry: Registry) -> None:
    resp = get(registry, f"/v2/{registry.app}/manifests/{registry.image}", registry.host_token)
    assert resp.status_code == 200
    assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == registry.image
    assert resp.headers["Docker-Content-Digest"] == registry.image
    assert resp.headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"


def test_it_answers_head_with_the_size_and_digest_only(registry: Registry) -> None:
    resp = get(registry, f"/v2/{registry.app}/manifests/{registry.image}", registry.host_token, "HEAD")
    assert resp.status_code == 200 and resp.content == b""
    assert int(resp.headers["Content-Length"]) == registry.store.blob_path(registry.image).stat().st_size


def test_it_resolves_the_latest_and_version_tags_to_the_releases_image(registry: Registry) -> None:
    for tag in ("latest", "v2"):  # v1 is the app's initial release, with no build
        resp = get(registry, f"/v2/{registry.app}/manifests/{tag}", registry.owner_token)
        assert resp.status_code == 200, resp.text
        assert resp.headers["Docker-Content-Digest"] == registry.image
    assert code(get(registry, f"/v2/{registry.app}/manifests/v99", registry.owner_token)) == "MANIFEST_UNKNOWN"


def test_it_streams_every_blob_of_the_image_with_the_bytes_of_its_digest(registry: Registry) -> None:
    manifest = get(registry, f"/v2/{registry.app}/manifests/{registry.image}", registry.host_token).json()
    for desc in [manifest["config"], *manifest["layers"]]:
        resp = get(registry, f"/v2/{registry.app}/blobs/{desc['digest']}", registry.host_token)
        assert resp.status_code == 200
        assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == desc["digest"]
        assert len(resp.content) == desc["size"]


def test_it_hides_an_app_from_a_user_who_may_not_read_it(registry: Registry) -> None:
    resp = get(registry, f"/v2/{registry.app}/manifests/{registry.image}", registry.stranger_token)
    assert resp.status_code == 404 and code(resp) == "NAME_UNKNOWN"
    assert get(registry, f"/v2/{registry.other_app}/manifests/{registry.other_image}",
               registry.stranger_token).status_code == 200


def test_it_serves_an_apps_blobs_only_under_that_app(registry: Registry) -> None:
    # The other app's image exists in the store, but is not this app's.
    resp = get(registry, f"/v2/{registry.app}/manifests/{registry.other_image}", registry.host_token)
    assert resp.status_code == 404 and code(resp) == "MANIFEST_UNKNOWN"
    resp = get(registry, f"/v2/{registry.app}/blobs/{registry.other_image}", registry.host_token)
    assert resp.status_code == 404 and code(resp) == "BLOB_UNKNOWN"


def test_it_refuses_malformed_digests_unknown_paths_and_writes(registry: Registry) -> None:
    bad = get(registry, f"/v2/{registry.app}/blobs/sha256:nothex", registry.host_token)
    assert bad.status_code == 400 and code(bad) == "DIGEST_INVALID"
    assert code(get(registry, "/v2/_catalog/x", registry.host_token)) == "NAME_UNKNOWN"
    post = get(registry, f"/v2/{registry.app}/blobs/{registry.image}", registry.host_token, "POST")
    assert post.status_code == 405 and code(post) == "UNSUPPORTED"


def test_it_lets_an_agent_pull_an_image_by_digest_into_an_empty_store(
        registry: Registry, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    with ImagePuller(store, registry.url, registry.host_token) as puller:
        assert puller.pull(registry.app, registry.image) == registry.image
    image = store.resolve(registry.image)
    assert image.layers and all(p.is_dir() for p in image.layers)
    assert (image.layers[0] / "bin" / "busybox").exists()


def test_it_tells_an_agent_with_a_wrong_token_that_the_controller_refused_it(
        registry: Registry, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    with ImagePuller(store, registry.url, "paashost_wrong") as puller, pytest.raises(
            PullError, match="refused the host token"):
        puller.pull(registry.app, registry.image)
    assert not store.has_blob(registry.image)


def test_it_cuts_a_corrupt_blob_short_so_the_puller_keeps_nothing_of_it(
        registry: Registry, tmp_path: Path) -> None:
    manifest = registry.store.read_json_blob(registry.other_image)
    config = registry.store.blob_path(manifest["config"]["digest"])
    good = config.read_bytes()
    config.write_bytes(good[:-1] + b"!")  # same size, other bytes
    try:
        store = ImageStore(tmp_path / "images")
        with ImagePuller(store, registry.url, registry.host_token) as puller, pytest.raises(
                (CorruptImage, PullError)):
            puller.pull(registry.other_app, registry.other_image)
        assert not store.has_blob(manifest["config"]["digest"])
        assert not store.has_blob(registry.other_image)
        assert list(store.tmp.iterdir()) == []
    finally:
        config.write_bytes(good)
