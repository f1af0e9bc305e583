"""Assemble the app's OCI image: the stack image's layers, then the slug's layers, then config.

A layer blob the store already holds (the dependency layer of the last build, unchanged) is not
copied in again, and the store does not unpack it again either.

The store is the runtime's image store (`runtime.images.ImageStore`); the builder only needs the
few methods in `Store`, so it does not import the runtime.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Protocol

from builder.errors import BuildError
from builder.slug import SlugLayer


class Store(Protocol):
    """The part of the image store the builder uses."""

    def put_blob_file(self, path: Path) -> tuple[str, int]: ...

    def has_blob(self, digest: str) -> bool: ...

    def manifest(self, ref: str) -> tuple[str, dict[str, Any]]: ...

    def read_json_blob(self, digest: str) -> dict[str, Any]: ...

    def add_image(
        self,
        reference: str,
        layer_blobs: list[tuple[str, int, str]],
        config: dict[str, Any],
        annotations: dict[str, str] | None = None,
    ) -> str: ...


def assemble_image(
    store: Store, *, stack: str, slug: SlugLayer, fragment: dict[str, Any], reference: str
) -> str:
    """Add the image `stack` + `slug` to `store` under `reference`; return its manifest digest.

    `fragment` is the config from `builder.slug.image_config`: its Env entries override the
    stack's by name, its labels are added, and the slug's diff_ids go on top of the stack's.
    """
    try:
        _digest, manifest = store.manifest(stack)
    except Exception as e:  # the store's errors carry a user-fit message
        raise BuildError(f"The stack image {stack!r} is not available: {e}") from None
    stack_config = store.read_json_blob(manifest["config"]["digest"])
    layers = [(str(ly["digest"]), int(ly["size"]), str(ly["mediaType"])) for ly in manifest["layers"]]
    for layer in slug.layers:
        if not store.has_blob(layer.digest):
            digest, _size = store.put_blob_file(layer.path)
            if digest != layer.digest:
                raise BuildError(f"the slug changed after it was packed ({layer.digest} became {digest})")
        layers.append((layer.digest, layer.layer_size, layer.media_type))
    config = merge_config(stack_config, fragment)
    return store.add_image(reference, layers, config)


def merge_config(stack: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    """Return the image config of the stack with the slug's fragment laid over it."""
    merged = copy.deepcopy(stack)
    ours = fragment["config"]
    conf = merged.setdefault("config", {})
    env: dict[str, str] = {}
    for entry in list(conf.get("Env") or []) + list(ours.get("Env") or []):
        name, _, value = entry.partition("=")
        env[name] = value
    conf["Env"] = [f"{k}={v}" for k, v in env.items()]
    for key in ("WorkingDir", "Entrypoint"):
        conf[key] = ours[key]
    if "Cmd" in ours:
        conf["Cmd"] = ours["Cmd"]
    else:
        conf.pop("Cmd", None)
    conf["Labels"] = {**(conf.get("Labels") or {}), **ours["Labels"]}
    rootfs = merged.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs["diff_ids"] = list(rootfs.get("diff_ids") or []) + list(fragment["rootfs"]["diff_ids"])
    merged.setdefault("architecture", fragment["architecture"])
    merged.setdefault("os", fragment["os"])
    return merged
