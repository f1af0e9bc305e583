"""The image store: references, resolving, the tiny image, OCI archives and garbage collection."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from runtime.images import (
    MEDIA_LAYER,
    CorruptImage,
    ImageNotFound,
    ImageStore,
    InvalidReference,
    normalize_reference,
)
from runtime.tinyimage import build_tiny_image


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def _layer(entries: list[tuple[str, bytes | None]]) -> bytes:
    """A layer tarball of regular files (bytes) and directories (None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _image(store: ImageStore, ref: str, layers: list[bytes]) -> str:
    blobs = []
    for data in layers:
        digest, size = store.put_blob_bytes(data)
        blobs.append((digest, size, MEDIA_LAYER))
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": [d for d, _s, _m in blobs]}}
    return store.add_image(ref, blobs, config)


def test_it_writes_an_oci_image_layout(store: ImageStore) -> None:
    build_tiny_image(store)
    assert json.loads((store.root / "oci" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((store.root / "oci" / "index.json").read_text())
    assert index["schemaVersion"] == 2
    [desc] = index["manifests"]
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "tiny:latest"
    manifest = json.loads((store.root / "oci" / "blobs" / "sha256" / desc["digest"][7:]).read_bytes())
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"


def test_it_resolves_the_tiny_image_to_unpacked_layers_and_its_config(store: ImageStore) -> None:
    ref = build_tiny_image(store)
    assert ref == "tiny:latest"
    image = store.resolve("tiny")
    assert image.digest.startswith("sha256:")
    [layer] = image.layers
    assert (layer / "bin" / "busybox").is_file()
    assert os.readlink(layer / "bin" / "sh") == "busybox"
    assert (layer / "etc" / "passwd").read_text().startswith("root:")
    assert stat.S_IMODE((layer / "tmp").stat().st_mode) == 0o1777
    assert image.config["config"]["Cmd"] == ["/bin/sh"]
    assert image.config["rootfs"]["diff_ids"] == image.layer_digests


def test_it_builds_the_tiny_image_deterministically(store: ImageStore, tmp_path: Path) -> None:
    build_tiny_image(store)
    other = ImageStore(tmp_path / "other")
    build_tiny_image(other, name="tiny:again")
    assert store.resolve("tiny").digest == other.resolve("tiny:again").digest


def test_it_resolves_by_manifest_digest_and_by_name_at_digest(store: ImageStore) -> None:
    build_tiny_image(store)
    digest = store.resolve("tiny:latest").digest
    assert store.resolve(digest).digest == digest
    assert store.resolve(f"tiny@{digest}").digest == digest


def test_it_refuses_an_image_that_does_not_exist(store: ImageStore) -> None:
    with pytest.raises(ImageNotFound, match="'nope' not found"):
        store.resolve("nope")
    with pytest.raises(ImageNotFound):
        store.resolve("sha256:" + "0" * 64)


@pytest.mark.parametrize("ref", ["", "UPPER", "a b", "tiny:", "x@sha256:123", "sha256:xyz", ":tag"])
def test_it_refuses_a_malformed_reference(store: ImageStore, ref: str) -> None:
    with pytest.raises(InvalidReference):
        store.resolve(ref)


def test_it_defaults_the_tag_to_latest() -> None:
    assert normalize_reference("stack") == "stack:latest"
    assert normalize_reference("stack:debian-13") == "stack:debian-13"
    assert normalize_reference("localhost/x/y:1") == "localhost/x/y:1"


def test_it_unpacks_a_layer_shared_by_two_images_once(store: ImageStore) -> None:
    base = _layer([("etc", None), ("etc/os-release", b"base\n")])
    _image(store, "one", [base, _layer([("a", b"1")])])
    _image(store, "two", [base, _layer([("b", b"2")])])
    one, two = store.resolve("one"), store.resolve("two")
    assert one.layers[0] == two.layers[0]
    assert one.layers[1] != two.layers[1]
    assert len(list(store.layers_dir.iterdir())) == 3


def test_it_moves_a_tag_to_the_newest_image(store: ImageStore) -> None:
    first = _image(store, "app:v", [_layer([("a", b"1")])])
    second = _image(store, "app:v", [_layer([("a", b"2")])])
    assert first != second
    assert store.resolve("app:v").digest == second
    assert store.images() == [("app:v", second)]


def test_it_collects_blobs_and_layers_no_image_references(store: ImageStore) -> None:
    shared = _layer([("shared", b"s")])
    keep = _image(store, "keep", [shared])
    gone = _image(store, "gone", [shared, _layer([("only-gone", b"g")])])
    gone_image = store.resolve("gone")
    store.remove("gone")
    deleted = store.gc(grace_s=0)
    assert gone in deleted
    assert gone_image.layer_digests[1] in deleted
    assert not gone_image.layers[1].exists()
    assert store.resolve("keep").digest == keep
    assert gone_image.layers[0].exists()  # shared with keep


def test_it_keeps_blobs_of_digests_still_in_use(store: ImageStore) -> None:
    digest = _image(store, "busy", [_layer([("x", b"x")])])
    store.remove("busy")
    assert store.gc(keep=[digest], grace_s=0) == []
    assert store.resolve(digest).digest == digest


def test_it_refuses_to_remove_an_unknown_image(store: ImageStore) -> None:
    with pytest.raises(ImageNotFound):
        store.remove("ghost")


def test_it_exports_and_imports_an_oci_archive(store: ImageStore, tmp_path: Path) -> None:
    build_tiny_image(store)
    archive = tmp_path / "tiny.tar"
    digest = store.export_archive("tiny", archive)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"oci-layout", "index.json", f"blobs/sha256/{digest[7:]}"} <= names
    other = ImageStore(tmp_path / "other")
    assert other.import_archive(archive) == ["tiny:latest"]
    assert other.resolve("tiny").digest == digest
    assert other.import_archive(archive, reference="renamed:1") == ["renamed:1"]
    assert (other.resolve("renamed:1").layers[0] / "bin" / "busybox").is_file()


def test_it_refuses_an_archive_whose_blob_does_not_match_its_digest(
    store: ImageStore, tmp_path: Path
) -> None:
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in [("oci-layout", b"{}"), ("blobs/sha256/" + "a" * 64, b"not it")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(CorruptImage, match="expected sha256:aaaa"):
        store.import_archive(archive)


def test_it_refuses_an_archive_with_entries_outside_a_layout(store: ImageStore, tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../../etc/evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(CorruptImage, match="not part of a layout"):
        store.import_archive(archive)
    assert not (tmp_path / "etc").exists()


def test_it_refuses_a_file_that_is_not_an_archive(store: ImageStore, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(CorruptImage, match="cannot read OCI archive"):
        store.import_archive(junk)


def test_it_unpacks_gzip_compressed_layers(store: ImageStore) -> None:
    import gzip

    data = gzip.compress(_layer([("hello", b"world")]))
    digest, size = store.put_blob_bytes(data)
    store.add_image("gz", [(digest, size, "application/vnd.oci.image.layer.v1.tar+gzip")], {})
    assert (store.resolve("gz").layers[0] / "hello").read_bytes() == b"world"


def test_it_refuses_an_unsupported_layer_media_type(store: ImageStore) -> None:
    digest, size = store.put_blob_bytes(b"zstd?")
    with pytest.raises(CorruptImage, match="unsupported layer media type"):
        store.add_image("z", [(digest, size, "application/vnd.oci.image.layer.v1.tar+zstd")], {})


def test_it_keeps_unreferenced_blobs_younger_than_the_grace_period(store: ImageStore) -> None:
    digest, _size = store.put_blob_bytes(b"an import in progress")
    assert store.gc() == []
    assert store.has_blob(digest)
    assert store.gc(grace_s=0) == [digest]


def test_its_command_builds_lists_exports_and_imports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.images import main

    root = ["--root", str(tmp_path / "rt")]
    assert main([*root, "tiny"]) == 0
    assert main([*root, "list"]) == 0
    assert "tiny:latest" in capsys.readouterr().out
    assert main([*root, "export", "tiny", str(tmp_path / "t.tar")]) == 0
    other = ["--root", str(tmp_path / "rt2")]
    assert main([*other, "import", str(tmp_path / "t.tar"), "--name", "copy:1"]) == 0
    assert main([*other, "inspect", "copy:1"]) == 0
    assert '"Cmd"' in capsys.readouterr().out


def test_its_command_reports_a_missing_image_without_a_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "runtime.images", "--root", str(tmp_path), "inspect", "nope"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: image 'nope' not found in the image store"
