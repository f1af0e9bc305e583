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
