from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from builder.errors import BuildError
from builder.image import assemble_image
from builder.procfile import resolve_process_types
from builder.slug import image_config, pack_slug
from runtime.images import MEDIA_LAYER, ImageStore


def _stack(store: ImageStore) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"ID=debian\n"
        info = tarfile.TarInfo("etc/os-release")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    digest, size = store.put_blob_bytes(buf.getvalue())
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"], "Cmd": ["/bin/sh"], "Labels": {"stack": "test"}},
        "rootfs": {"type": "layers", "diff_ids": [digest]},
    }
    store.add_image("stack:test", [(digest, size, MEDIA_LAYER)], config)
    return digest


def test_it_adds_the_app_image_as_stack_layers_plus_the_slug(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    stack_layer = _stack(store)
    app = tmp_path / "app"
    app.mkdir()
    (app / "server.sh").write_text("echo hi\n")
    slug = pack_slug(app, tmp_path / "slug.tar.gz")
    types = resolve_process_types({"web": "./server.sh $PORT"}, {})
    fragment = image_config(slug=slug, process_types=types, env={"LANG": "en_US.UTF-8"},
                            app="shop", build="b1", commit="abc")

    assemble_image(store, stack="stack:test", slug=slug, fragment=fragment, reference="shop:b1")

    image = store.resolve("shop:b1")
    assert image.layer_digests == [stack_layer, slug.digest]
    assert (image.layers[0] / "etc" / "os-release").read_text() == "ID=debian\n"
    assert (image.layers[1] / "app" / "server.sh").read_text() == "echo hi\n"
    conf = image.config["config"]
    assert "LANG=en_US.UTF-8" in conf["Env"] and "LANG=C.UTF-8" not in conf["Env"]
    assert conf["WorkingDir"] == "/app"
    assert conf["Cmd"] == ["./server.sh $PORT"]
    assert conf["Labels"]["stack"] == "test"
    assert json.loads(conf["Labels"]["paas.process-types"]) == {"web": "./server.sh $PORT"}
    assert image.config["rootfs"]["diff_ids"] == [stack_layer, slug.diff_id]


def test_it_names_a_missing_stack_image(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    app = tmp_path / "app"
    app.mkdir()
    slug = pack_slug(app, tmp_path / "slug.tar.gz")
    fragment = image_config(slug=slug, process_types=resolve_process_types({}, {}), env={},
                            app="shop", build="b1", commit="abc")
    with pytest.raises(BuildError, match=r"^The stack image 'stack:none' is not available"):
        assemble_image(store, stack="stack:none", slug=slug, fragment=fragment, reference="shop:b1")


def _app_with_venv(root: Path) -> Path:
    (root / ".venv" / "lib").mkdir(parents=True)
    (root / ".venv" / "lib" / "dep.py").write_text("X = 1\n")
    (root / "app.py").write_text("import dep\n")
    return root


def test_it_puts_the_dependency_layers_between_the_stack_and_the_app(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    stack_layer = _stack(store)
    slug = pack_slug(_app_with_venv(tmp_path / "app"), tmp_path / "slug.tar.gz")
    fragment = image_config(slug=slug, process_types=resolve_process_types({}, {}), env={},
                            app="shop", build="b1", commit="abc")

    assemble_image(store, stack="stack:test", slug=slug, fragment=fragment, reference="shop:b1")

    image = store.resolve("shop:b1")
    venv, app = slug.layers
    assert image.layer_digests == [stack_layer, venv.digest, app.digest]
    assert (image.layers[1] / "app" / ".venv" / "lib" / "dep.py").read_text() == "X = 1\n"
    assert (image.layers[2] / "app" / "app.py").read_text() == "import dep\n"
    assert not (image.layers[2] / "app" / ".venv").exists()
    _digest, manifest = store.manifest("shop:b1")
    assert [(ly["mediaType"], ly["size"]) for ly in manifest["layers"][1:]] == [
        (venv.media_type, venv.path.stat().st_size), (app.media_type, app.path.stat().st_size),
    ]
    assert image.config["rootfs"]["diff_ids"] == [stack_layer, venv.diff_id, app.diff_id]


def test_it_does_not_copy_a_layer_the_store_already_holds(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    _stack(store)
    app_dir = _app_with_venv(tmp_path / "app")
    types = resolve_process_types({}, {})
    first = pack_slug(app_dir, tmp_path / "one.tar.gz")
    assemble_image(store, stack="stack:test", slug=first,
                   fragment=image_config(slug=first, process_types=types, env={}, app="shop",
                                         build="b1", commit="abc"), reference="shop:b1")
    (app_dir / "app.py").write_text("import dep  # changed\n")
    second = pack_slug(app_dir, tmp_path / "two.tar.gz")
    assert second.lower[0].digest == first.lower[0].digest
    second.lower[0].path.unlink()  # the store has that blob: the file is not read again
    assemble_image(store, stack="stack:test", slug=second,
                   fragment=image_config(slug=second, process_types=types, env={}, app="shop",
                                         build="b2", commit="def"), reference="shop:b2")
    assert store.resolve("shop:b2").layer_digests[1:] == [second.lower[0].digest, second.digest]


def test_it_refuses_a_layer_that_changed_after_it_was_packed(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    _stack(store)
    slug = pack_slug(_app_with_venv(tmp_path / "app"), tmp_path / "slug.tar.gz")
    slug.lower[0].path.write_bytes(b"something else")
    fragment = image_config(slug=slug, process_types=resolve_process_types({}, {}), env={},
                            app="shop", build="b1", commit="abc")
    with pytest.raises(BuildError, match=r"^the slug changed after it was packed"):
        assemble_image(store, stack="stack:test", slug=slug, fragment=fragment, reference="shop:b1")
