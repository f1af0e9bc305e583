from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest

from builder.procfile import resolve_process_types
from builder.slug import FIXED_MTIME, image_config, pack_slug


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "z.txt").write_text("z")
    (root / "a.txt").write_text("a")
    (root / "b" / "deep" / "run.sh").write_text("#!/bin/sh\n")
    (root / "b" / "deep" / "run.sh").chmod(0o4755)
    (root / "link").symlink_to("a.txt")
    return root


def test_it_packs_the_app_under_app_sorted_with_fixed_times_and_owner(app_dir: Path, tmp_path: Path) -> None:
    slug = pack_slug(app_dir, tmp_path / "slug.tar.gz", uid=1000, gid=1000)
    with tarfile.open(slug.path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == ["app", "app/a.txt", "app/b", "app/b/deep", "app/b/deep/run.sh", "app/link", "app/z.txt"]
    assert {m.mtime for m in members} == {FIXED_MTIME}
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(1000, 1000, "", "")}
    by_name = {m.name: m for m in members}
    assert by_name["app/link"].issym() and by_name["app/link"].linkname == "a.txt"
    assert by_name["app/b/deep/run.sh"].mode == 0o755  # setuid is dropped


def test_it_gives_the_same_digest_for_the_same_content(app_dir: Path, tmp_path: Path) -> None:
    first = pack_slug(app_dir, tmp_path / "one.tar.gz")
    os.utime(app_dir / "a.txt", (1, 1))
    second = pack_slug(app_dir, tmp_path / "two.tar.gz")
    assert (first.digest, first.diff_id, first.size) == (second.digest, second.diff_id, second.size)
    (app_dir / "a.txt").write_text("changed")
    assert pack_slug(app_dir, tmp_path / "three.tar.gz").digest != first.digest


def test_it_reports_the_blob_digest_size_and_uncompressed_diff_id(app_dir: Path, tmp_path: Path) -> None:
    slug = pack_slug(app_dir, tmp_path / "slug.tar.gz")
    blob = slug.path.read_bytes()
    assert slug.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert slug.size == len(blob)
    assert slug.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()
    assert slug.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"


def test_it_describes_the_image_config_with_env_workdir_and_labels(app_dir: Path, tmp_path: Path) -> None:
    slug = pack_slug(app_dir, tmp_path / "slug.tar.gz")
    types = resolve_process_types({"web": "gunicorn app:app", "release": "migrate"}, {"worker": "w"})
    config = image_config(
        slug=slug, process_types=types, env={"PYTHONUNBUFFERED": "1"},
        app="shop", build="b-42", commit="abc123",
    )
    conf = config["config"]
    assert conf["WorkingDir"] == "/app"
    assert "PYTHONUNBUFFERED=1" in conf["Env"] and "HOME=/app" in conf["Env"]
    assert conf["Cmd"] == ["gunicorn app:app"]
    assert json.loads(conf["Labels"]["paas.process-types"]) == {
        "web": "gunicorn app:app", "worker": "w", "release": "migrate",
    }
    assert (conf["Labels"]["paas.app"], conf["Labels"]["paas.build"], conf["Labels"]["paas.commit"]) == (
        "shop", "b-42", "abc123",
    )
    assert config["rootfs"] == {"type": "layers", "diff_ids": [slug.diff_id]}
