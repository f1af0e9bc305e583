from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from builder.procfile import resolve_process_types
from builder.slug import FIXED_MTIME, MEDIA_LAYER_TAR, image_config, layer_cache_dir, pack_slug


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


# -- dependency directories as layers of their own -------------------------------------------


@pytest.fixture
def app_with_deps(app_dir: Path) -> Path:
    site = app_dir / ".venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (site / "flask.py").write_text("app = None\n")
    (app_dir / ".venv" / "bin").mkdir()
    (app_dir / ".venv" / "bin" / "python").symlink_to("/usr/bin/python3.11")
    (app_dir / "node_modules" / "left-pad").mkdir(parents=True)
    (app_dir / "node_modules" / "left-pad" / "index.js").write_text("module.exports = 1\n")
    return app_dir


def _names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return [m.name for m in tar.getmembers()]


def test_it_packs_each_dependency_dir_as_a_plain_tar_layer_below_the_app(
    app_with_deps: Path, tmp_path: Path
) -> None:
    slug = pack_slug(app_with_deps, tmp_path / "slug.tar.gz")
    venv, modules, app = slug.layers
    assert (venv.media_type, modules.media_type) == (MEDIA_LAYER_TAR, MEDIA_LAYER_TAR)
    assert app.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert _names(venv.path) == [
        "app", "app/.venv", "app/.venv/bin", "app/.venv/bin/python", "app/.venv/lib",
        "app/.venv/lib/python3.11", "app/.venv/lib/python3.11/site-packages",
        "app/.venv/lib/python3.11/site-packages/flask.py",
    ]
    assert _names(modules.path) == [
        "app", "app/node_modules", "app/node_modules/left-pad", "app/node_modules/left-pad/index.js",
    ]
    assert _names(app.path) == [
        "app", "app/a.txt", "app/b", "app/b/deep", "app/b/deep/run.sh", "app/link", "app/z.txt",
    ]
    for layer in slug.layers:
        blob = layer.path.read_bytes()
        assert layer.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
        assert layer.size == layer.layer_size == len(blob)
    assert venv.diff_id == venv.digest  # uncompressed: the blob is the tar
    assert slug.size == sum(layer.size for layer in slug.layers)
    fragment = image_config(slug=slug, process_types=resolve_process_types({}, {}), env={},
                            app="shop", build="b1", commit="abc")
    assert fragment["rootfs"]["diff_ids"] == [venv.diff_id, modules.diff_id, app.diff_id]


def test_it_keeps_a_symlinked_dependency_dir_in_the_app_layer(app_dir: Path, tmp_path: Path) -> None:
    (app_dir / "node_modules").symlink_to("b")
    slug = pack_slug(app_dir, tmp_path / "slug.tar.gz")
    assert slug.lower == ()
    assert "app/node_modules" in _names(slug.path)


def test_it_reuses_an_unchanged_dependency_layer_from_the_layer_cache(
    app_with_deps: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "layers"
    first = pack_slug(app_with_deps, tmp_path / "one.tar.gz", layer_cache=cache)
    # A warm build restores the virtualenv as a copy that keeps the times.
    copy = tmp_path / "copy"
    shutil.copytree(app_with_deps, copy, symlinks=True)
    (copy / "a.txt").write_text("the app changed, its dependencies did not")
    second = pack_slug(copy, tmp_path / "two.tar.gz", layer_cache=cache)
    assert [layer.reused for layer in first.lower] == [False, False]
    assert [layer.reused for layer in second.lower] == [True, True]
    assert [layer.digest for layer in second.lower] == [layer.digest for layer in first.lower]
    assert second.lower[0].path.read_bytes() == first.lower[0].path.read_bytes()
    assert second.digest != first.digest


def test_it_packs_a_dependency_layer_again_once_a_file_in_it_changes(
    app_with_deps: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "layers"
    first = pack_slug(app_with_deps, tmp_path / "one.tar.gz", layer_cache=cache)
    module = app_with_deps / ".venv" / "lib" / "python3.11" / "site-packages" / "flask.py"
    module.write_text("app = 'new'\n")
    second = pack_slug(app_with_deps, tmp_path / "two.tar.gz", layer_cache=cache)
    assert not second.lower[0].reused and second.lower[1].reused
    assert second.lower[0].digest != first.lower[0].digest
    assert "app = 'new'" in second.lower[0].path.read_text(errors="replace")
    # Only the newest layer of each kind stays in the cache.
    assert sorted(p.name for p in cache.glob("venv-*.tar")) == [
        f"venv-{second.lower[0].digest.split(':')[1]}.tar"
    ]


def test_it_packs_again_when_the_cached_layer_is_missing_or_its_record_is_garbled(
    app_with_deps: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "layers"
    first = pack_slug(app_with_deps, tmp_path / "one.tar.gz", layer_cache=cache)
    for f in cache.glob("venv-*.tar"):
        f.unlink()
    second = pack_slug(app_with_deps, tmp_path / "two.tar.gz", layer_cache=cache)
    assert not second.lower[0].reused
    assert second.lower[0].digest == first.lower[0].digest
    (cache / "venv.json").write_text("{not json")
    third = pack_slug(app_with_deps, tmp_path / "three.tar.gz", layer_cache=cache)
    assert not third.lower[0].reused
    assert third.lower[0].digest == first.lower[0].digest


def test_it_keeps_the_layer_cache_next_to_the_build_cache_not_in_it(tmp_path: Path) -> None:
    assert layer_cache_dir(tmp_path / "cache" / "shop") == tmp_path / "cache" / "shop.layers"
