"""The OCI image store: content-addressed blobs, manifests, an index, and unpacked layers.

On disk, under the store's root::

    oci/                  an OCI image layout (image-layout spec v1.0): any OCI tool reads it
      oci-layout
      index.json          one manifest descriptor per named image
      blobs/sha256/<hex>  manifests, configs and layer tarballs, by digest
    layers/sha256/<hex>/  each layer blob unpacked once, shared read-only by every image using it
    tmp/                  partial writes, renamed into place when complete
    lock                  an flock serialising writers (index updates, unpacking, GC)

An image's name is kept in the manifest descriptor's `org.opencontainers.image.ref.name`
annotation as the full reference (`tiny:latest`, `stack:debian-13`). Unpacked layers are in the
format overlayfs reads as lower directories: whiteouts become 0/0 character devices and opaque
directories carry the `trusted.overlay.opaque` extended attribute.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_MEDIA_TYPES = {MEDIA_LAYER, MEDIA_LAYER_GZIP, DOCKER_LAYER_GZIP}
MANIFEST_MEDIA_TYPES = {MEDIA_MANIFEST, DOCKER_MANIFEST}
REF_ANNOTATION = "org.opencontainers.image.ref.name"

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,127}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_CHUNK = 1 << 20


class ImageError(Exception):
    """Base class: every error the image store raises carries a message fit for a user."""


class ImageNotFound(ImageError):
    """No image in the store answers to this reference."""


class InvalidReference(ImageError):
    """The reference is not `name[:tag]`, `sha256:<hex>` or `name@sha256:<hex>`."""


class UnsafeLayer(ImageError):
    """A layer tarball tries to write outside its directory or holds what a layer must not."""


class CorruptImage(ImageError):
    """A blob's content does not match its digest, or a manifest or archive is malformed."""


@dataclass(frozen=True)
class Image:
    """A resolved image: its manifest digest, unpacked layers (bottom first) and OCI config."""

    reference: str
    digest: str
    layers: list[Path]
    config: dict[str, Any]
    layer_digests: list[str]


def normalize_reference(ref: str) -> str:
    """Return `name:tag` for `name` or `name:tag`; digests are returned as they are.

    Raise InvalidReference for anything else.
    """
    if not isinstance(ref, str) or not ref:
        raise InvalidReference("an image reference must be a non-empty string")
    if _DIGEST_RE.match(ref):
        return ref
    if ref.startswith("sha256:"):
        raise InvalidReference(f"invalid digest {ref!r}: expected sha256:<64 hex>")
    if "@" in ref:
        name, _, digest = ref.partition("@")
        if not _NAME_RE.match(name) or not _DIGEST_RE.match(digest):
            raise InvalidReference(f"invalid image reference {ref!r}: expected name@sha256:<64 hex>")
        return ref
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        name, tag = ref, "latest"
    if not _NAME_RE.match(name) or not _TAG_RE.match(tag):
        raise InvalidReference(
            f"invalid image reference {ref!r}: expected name[:tag] (lower-case name; tag of "
            "letters, digits, '.', '_' or '-') or sha256:<64 hex>"
        )
    return f"{name}:{tag}"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class ImageStore:
    """An OCI image layout plus a cache of unpacked layers, under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.layout = self.root / "oci"
        self.blobs = self.layout / "blobs" / "sha256"
        self.layers_dir = self.root / "layers" / "sha256"
        self.tmp = self.root / "tmp"
        for d in (self.blobs, self.layers_dir, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        layout_file = self.layout / "oci-layout"
        if not layout_file.exists():
            self._write_atomic(layout_file, b'{"imageLayoutVersion":"1.0.0"}')
        if not (self.layout / "index.json").exists():
            self._write_index({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": []})

    # -- locking and small files ------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write_atomic(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _read_index(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.layout / "index.json").read_text())
        return data

    def _write_index(self, index: dict[str, Any]) -> None:
        self._write_atomic(self.layout / "index.json", json.dumps(index, indent=2).encode())

    # -- blobs ------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Return the path of the blob `digest` (which may not exist)."""
        if not _DIGEST_RE.match(digest):
            raise InvalidReference(f"invalid digest {digest!r}: expected sha256:<64 hex>")
        return self.blobs / digest.split(":", 1)[1]

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def put_blob_bytes(self, data: bytes) -> tuple[str, int]:
        """Store `data` as a blob; return its digest and size."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            self._write_atomic(path, data)
        return digest, len(data)

    def put_blob_stream(self, src: IO[bytes], expected: str | None = None) -> tuple[str, int]:
        """Copy `src` into the store as a blob, verifying `expected` if given."""
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
            digest = "sha256:" + h.hexdigest()
            if expected is not None and digest != expected:
                raise CorruptImage(f"blob content has digest {digest}, expected {expected}")
            os.replace(tmp, self.blob_path(digest))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return digest, size

    def put_blob_chunks(
        self, chunks: Iterable[bytes], expected: str, size: int | None = None
    ) -> tuple[str, int]:
        """Store the blob `expected` from `chunks`, verifying digest and size as they come.

        A mismatch (or more bytes than `size`) raises CorruptImage and leaves nothing behind:
        the bytes go to a temporary file, renamed into place only once verified.
        """
        self.blob_path(expected)  # validates the digest
        h = hashlib.sha256()
        got = 0
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="pull-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    got += len(chunk)
                    if size is not None and got > size:
                        raise CorruptImage(f"blob {expected} is longer than its {size} bytes")
                    h.update(chunk)
                    f.write(chunk)
            digest = "sha256:" + h.hexdigest()
            if size is not None and got != size:
                raise CorruptImage(f"blob {expected} ended after {got} of its {size} bytes")
            if digest != expected:
                raise CorruptImage(f"blob content has digest {digest}, expected {expected}")
            os.replace(tmp, self.blob_path(digest))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return expected, got

    def put_blob_file(self, path: Path) -> tuple[str, int]:
        with path.open("rb") as f:
            return self.put_blob_stream(f)

    def read_json_blob(self, digest: str) -> dict[str, Any]:
        path = self.blob_path(digest)
        if not path.is_file():
            raise CorruptImage(f"blob {digest} is missing from the store")
        try:
            data = json.loads(path.read_bytes())
        except ValueError as e:
            raise CorruptImage(f"blob {digest} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise CorruptImage(f"blob {digest} is not a JSON object")
        return data

    # -- images -----------------------------------------------------------------------------

    def add_image(
        self,
        reference: str,
        layer_blobs: list[tuple[str, int, str]],
        config: dict[str, Any],
        annotations: dict[str, str] | None = None,
    ) -> str:
        """Record an image from layer blobs already stored; return the manifest digest.

        `layer_blobs` is a list of (digest, size, media type), bottom first.
        """
        ref = normalize_reference(reference)
        for digest, _size, media in layer_blobs:
            if not self.has_blob(digest):
                raise CorruptImage(f"layer blob {digest} is not in the store")
            if media not in LAYER_MEDIA_TYPES:
                raise CorruptImage(f"unsupported layer media type {media!r}")
        config_digest, config_size = self.put_blob_bytes(_canonical_json(config))
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": m, "digest": d, "size": s} for d, s, m in layer_blobs],
        }
        if annotations:
            manifest["annotations"] = dict(annotations)
        for d, _s, _m in layer_blobs:
            self._ensure_unpacked(d)
        digest, size = self.put_blob_bytes(_canonical_json(manifest))
        self.tag(digest, ref, size=size)
        return digest

    def tag(self, manifest_digest: str, reference: str, size: int | None = None) -> None:
        """Point `reference` (name[:tag]) at the manifest `manifest_digest`."""
        ref = normalize_reference(reference)
        if _DIGEST_RE.match(ref) or "@" in ref:
            raise InvalidReference(f"cannot tag with a digest reference {reference!r}")
        path = self.blob_path(manifest_digest)
        if not path.is_file():
            raise ImageNotFound(f"no manifest {manifest_digest} in the image store")
        if size is None:
            size = path.stat().st_size
        with self._locked():
            index = self._read_index()
            manifests = [
                m for m in index["manifests"] if m.get("annotations", {}).get(REF_ANNOTATION) != ref
            ]
            manifests.append(
                {
                    "mediaType": MEDIA_MANIFEST,
                    "digest": manifest_digest,
                    "size": size,
                    "annotations": {REF_ANNOTATION: ref},
                }
            )
            index["manifests"] = manifests
            self._write_index(index)

    def images(self) -> list[tuple[str, str]]:
        """Return (reference, manifest digest) for every named image."""
        out = []
        for m in self._read_index()["manifests"]:
            name = m.get("annotations", {}).get(REF_ANNOTATION)
            if name:
                out.append((str(name), str(m["digest"])))
        return sorted(out)

    def exists(self, ref: str) -> bool:
        try:
            self._manifest_digest(ref)
        except ImageNotFound:
            return False
        return True

    def _manifest_digest(self, ref: str) -> str:
        norm = normalize_reference(ref)
        if _DIGEST_RE.match(norm):
            digest = norm
        elif "@" in norm:
            digest = norm.split("@", 1)[1]
        else:
            for name, d in self.images():
                if name == norm:
                    return d
            raise ImageNotFound(f"image {ref!r} not found in the image store")
        if not self.has_blob(digest):
            raise ImageNotFound(f"image {ref!r} not found in the image store")
        return digest

    def manifest(self, ref: str) -> tuple[str, dict[str, Any]]:
        """Return (digest, manifest) of the image `ref`."""
        digest = self._manifest_digest(ref)
        manifest = self.read_json_blob(digest)
        if manifest.get("mediaType", MEDIA_MANIFEST) not in MANIFEST_MEDIA_TYPES:
            raise ImageNotFound(f"{ref!r} names a {manifest.get('mediaType')}, not an image")
        if not isinstance(manifest.get("config"), dict) or not isinstance(
            manifest.get("layers"), list
        ):
            raise CorruptImage(f"manifest {digest} lacks its config or layers")
        return digest, manifest

    def resolve(self, ref: str) -> Image:
        """Return the image `ref` with its layers unpacked; raise ImageNotFound if unknown."""
        digest, manifest = self.manifest(ref)
        config = self.read_json_blob(manifest["config"]["digest"])
        layer_digests = [str(layer["digest"]) for layer in manifest["layers"]]
        layers = [self._ensure_unpacked(d) for d in layer_digests]
        return Image(
            reference=ref, digest=digest, layers=layers, config=config, layer_digests=layer_digests
        )

    def remove(self, ref: str) -> None:
        """Forget the name `ref`; its blobs stay until `gc()`."""
        norm = normalize_reference(ref)
        with self._locked():
            index = self._read_index()
            kept = [
                m
                for m in index["manifests"]
                if m.get("annotations", {}).get(REF_ANNOTATION) != norm and m["digest"] != norm
            ]
            if len(kept) == len(index["manifests"]):
                raise ImageNotFound(f"image {ref!r} not found in the image store")
            index["manifests"] = kept
            self._write_index(index)

    # -- layers -----------------------------------------------------------------------------

    def layer_dir(self, digest: str) -> Path:
        return self.layers_dir / self.blob_path(digest).name

    def unpack(self, digest: str) -> Path:
        """Unpack the layer blob `digest` (once); return its directory."""
        return self._ensure_unpacked(digest)

    def _ensure_unpacked(self, digest: str) -> Path:
        target = self.layer_dir(digest)
        if target.is_dir():
            return target
        blob = self.blob_path(digest)
        if not blob.is_file():
            raise CorruptImage(f"layer blob {digest} is missing from the store")
        with self._locked():
            if target.is_dir():
                return target
            work = Path(tempfile.mkdtemp(dir=self.tmp, prefix="layer-"))
            try:
                with _open_layer(blob) as stream:
                    unpack_layer(stream, work)
                os.chmod(work, 0o755)
                os.rename(work, target)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
        return target

    # -- garbage collection -----------------------------------------------------------------

    def gc(self, keep: Iterable[str] = (), grace_s: float = 600.0) -> list[str]:
        """Delete blobs and unpacked layers no named image (nor `keep`) references.

        `keep` holds manifest digests still in use (e.g. by running containers). Blobs written
        less than `grace_s` seconds ago are kept: an import in another process may not have
        named its image yet. Return the digests deleted.
        """
        with self._locked():
            live: set[str] = set()
            roots = [str(m["digest"]) for m in self._read_index()["manifests"]]
            roots += [k for k in keep if _DIGEST_RE.match(k)]
            for digest in roots:
                live.add(digest)
                if not self.has_blob(digest):
                    continue
                try:
                    manifest = self.read_json_blob(digest)
                except CorruptImage:
                    continue
                cfg = manifest.get("config", {})
                if isinstance(cfg, dict) and "digest" in cfg:
                    live.add(str(cfg["digest"]))
                for layer in manifest.get("layers", []):
                    live.add(str(layer["digest"]))
            deleted = []
            young = time.time() - grace_s
            for blob in self.blobs.iterdir():
                digest = "sha256:" + blob.name
                if digest not in live and blob.stat().st_mtime < young:
                    blob.unlink()
                    deleted.append(digest)
            for layer in self.layers_dir.iterdir():
                if "sha256:" + layer.name not in live and not self.blob_path(
                    "sha256:" + layer.name
                ).exists():
                    _rmtree_layer(layer)
            # Half-unpacked layers left by a crash (unpacking happens under this lock).
            for leftover in self.tmp.glob("layer-*"):
                _rmtree_layer(leftover)
            return sorted(deleted)

    # -- OCI archives -----------------------------------------------------------------------

    def export_archive(self, ref: str, dest: Path) -> str:
        """Write the image `ref` as an OCI archive (a tar of an OCI layout) to `dest`."""
        digest, manifest = self.manifest(ref)
        norm = normalize_reference(ref)
        blobs = [digest, manifest["config"]["digest"]] + [ly["digest"] for ly in manifest["layers"]]
        annotations = {} if _DIGEST_RE.match(norm) or "@" in norm else {REF_ANNOTATION: norm}
        index = {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [
                {
                    "mediaType": manifest.get("mediaType", MEDIA_MANIFEST),
                    "digest": digest,
                    "size": self.blob_path(digest).stat().st_size,
                    **({"annotations": annotations} if annotations else {}),
                }
            ],
        }
        tmp = dest.with_name(dest.name + ".part")
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            _add_bytes(tar, "index.json", json.dumps(index, indent=2).encode())
            for d in dict.fromkeys(blobs):
                info = tar.gettarinfo(str(self.blob_path(d)), arcname="blobs/sha256/" + d[7:])
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                with self.blob_path(d).open("rb") as f:
                    tar.addfile(info, f)
        os.replace(tmp, dest)
        return digest

    def import_archive(self, src: Path, reference: str | None = None) -> list[str]:
        """Import every image of the OCI archive `src`; return the references imported.

        Each image keeps the name its archive gives it, or takes `reference` (which then must
        fit an archive of exactly one image).
        """
        if reference is not None:
            reference = normalize_reference(reference)
        try:
            tar = tarfile.open(src, "r:*")  # noqa: SIM115 - closed by the `with` below
        except (OSError, tarfile.TarError) as e:
            raise CorruptImage(f"cannot read OCI archive {src}: {e}") from None
        with tar:
            index: dict[str, Any] | None = None
            seen_layout = False
            for member in tar:
                name = member.name.removeprefix("./")
                if member.isdir() or name in ("", "."):
                    continue
                if not member.isfile():
                    raise CorruptImage(f"OCI archive entry {member.name!r} is not a regular file")
                f = tar.extractfile(member)
                assert f is not None
                if name == "oci-layout":
                    seen_layout = True
                elif name == "index.json":
                    try:
                        index = json.loads(f.read(1 << 24))
                    except ValueError as e:
                        raise CorruptImage(f"index.json of {src} is not JSON: {e}") from None
                elif name.startswith("blobs/sha256/") and re.fullmatch(
                    r"[0-9a-f]{64}", name[len("blobs/sha256/") :]
                ):
                    self.put_blob_stream(f, expected="sha256:" + name[len("blobs/sha256/") :])
                else:
                    raise CorruptImage(f"OCI archive entry {member.name!r} is not part of a layout")
        if not seen_layout or not isinstance(index, dict):
            raise CorruptImage(f"{src} is not an OCI archive (no oci-layout or index.json)")
        descriptors = index.get("manifests")
        if not isinstance(descriptors, list) or not descriptors:
            raise CorruptImage(f"index.json of {src} lists no manifests")
        if reference is not None and len(descriptors) != 1:
            raise CorruptImage(f"{src} holds {len(descriptors)} images; cannot name them all {reference}")
        imported = []
        for desc in descriptors:
            digest = str(desc.get("digest", ""))
            _digest, manifest = self.manifest(digest)
            for blob in [manifest["config"], *manifest["layers"]]:
                if not self.has_blob(str(blob.get("digest", ""))):
                    raise CorruptImage(f"{src} lacks blob {blob.get('digest')}")
            for layer in manifest["layers"]:
                if layer.get("mediaType") not in LAYER_MEDIA_TYPES:
                    raise CorruptImage(f"unsupported layer media type {layer.get('mediaType')!r}")
            name = reference or desc.get("annotations", {}).get(REF_ANNOTATION)
            if not name:
                name = "imported:" + digest[7:19]
            name = normalize_reference(str(name))
            for layer in manifest["layers"]:
                self._ensure_unpacked(str(layer["digest"]))
            self.tag(digest, name)
            imported.append(name)
        return imported


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


@contextlib.contextmanager
def _open_layer(blob: Path) -> Iterator[IO[bytes]]:
    with blob.open("rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        if magic == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=raw) as gz:
                yield gz  # type: ignore[misc]
        else:
            yield raw


def _rmtree_layer(path: Path) -> None:
    # Layer trees may hold read-only directories; make them writable while removing.
    def onerror(func: Any, p: str, exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            func(p)

    shutil.rmtree(path, onerror=onerror)


# -- safe unpacking --------------------------------------------------------------------------

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


def _clean_member_name(name: str) -> list[str]:
    """Split a tar member name into path components, refusing escapes."""
    if name.startswith("/"):
        raise UnsafeLayer(f"layer entry {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(f"layer entry {name!r} climbs out of the layer with '..'")
    if "\x00" in name:
        raise UnsafeLayer(f"layer entry {name!r} holds a NUL byte")
    return parts


def _parent_fd(root_fd: int, parts: list[str], name: str) -> int:
    """Open the directory holding `parts[-1]`, creating missing parents, never via a symlink."""
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeLayer(f"layer entry {name!r} would be written through a symlink")
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeLayer(f"layer entry {name!r} has a parent that is not a directory")
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


class _ParentCache:
    """The open directory of the last entry's parent: entries come grouped by directory.

    One entry only, keyed by the exact parent path, so it is never stale: an entry can remove
    or replace the cached directory (or one above it) only from a different parent, which
    first moves the cache to that parent.
    """

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.key: tuple[str, ...] | None = None
        self.fd = -1

    def get(self, parts: list[str], name: str) -> int:
        """Return a borrowed fd of the directory holding `parts[-1]` (the caller keeps it open)."""
        key = tuple(parts[:-1])
        if key != self.key:
            self.close()
            self.fd = _parent_fd(self.root_fd, parts, name)
            self.key = key
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.key, self.fd = None, -1


def _remove_existing(dir_fd: int, leaf: str) -> None:
    try:
        st = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        sub = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            for child in os.listdir(sub):
                _remove_existing(sub, child)
        finally:
            os.close(sub)
        os.rmdir(leaf, dir_fd=dir_fd)
    else:
        os.unlink(leaf, dir_fd=dir_fd)


def unpack_layer(stream: IO[bytes], dest: Path) -> None:
    """Unpack the layer tarball `stream` into the empty directory `dest`, safely.

    Refuse (UnsafeLayer) absolute names, `..`, writing through symlinks, hard links to outside
    the layer or to non-files, and device nodes. Symlink targets are stored, never followed
    (absolute targets are normal in a root file system and resolve inside the container).
    Whiteouts become overlayfs whiteouts (a 0/0 character device) and opaque markers the
    `trusted.overlay.opaque` xattr, so the directory can serve as an overlayfs lower layer.
    """
    as_root = os.geteuid() == 0
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    dir_modes: list[tuple[list[str], int, int, int, float]] = []
    parents = _ParentCache(root_fd)
    try:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - closed below
        except tarfile.TarError as e:
            raise UnsafeLayer(f"layer is not a tar archive: {e}") from None
        try:
            members = iter(tar)
            while True:
                try:
                    member = next(members)
                except StopIteration:
                    break
                except tarfile.TarError as e:
                    raise UnsafeLayer(f"layer tar is malformed: {e}") from None
                try:
                    _unpack_member(tar, member, root_fd, parents, as_root, dir_modes)
                except (tarfile.TarError, EOFError) as e:
                    raise UnsafeLayer(f"layer tar is malformed at {member.name!r}: {e}") from None
        finally:
            tar.close()
            parents.close()
        # Directory modes last, deepest first, so a read-only directory is filled before.
        for parts, mode, uid, gid, mtime in sorted(dir_modes, key=lambda t: -len(t[0])):
            pfd = _parent_fd(root_fd, parts, "/".join(parts))
            try:
                if as_root:
                    os.chown(parts[-1], uid, gid, dir_fd=pfd, follow_symlinks=False)
                os.chmod(parts[-1], mode, dir_fd=pfd)
                os.utime(parts[-1], (mtime, mtime), dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(pfd)
    finally:
        os.close(root_fd)


def _unpack_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    root_fd: int,
    parents: _ParentCache,
    as_root: bool,
    dir_modes: list[tuple[list[str], int, int, int, float]],
) -> None:
    name = member.name
    parts = _clean_member_name(name)
    if not parts:
        return  # the layer root itself
    if member.ischr() or member.isblk():
        raise UnsafeLayer(f"layer entry {name!r} is a device node; layers may not hold devices")
    leaf = parts[-1]
    pfd = parents.get(parts, name)
    if leaf == OPAQUE_MARKER:
        if as_root:
            dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=pfd)
            try:
                os.setxattr(dfd, "trusted.overlay.opaque", b"y")
            finally:
                os.close(dfd)
        return
    if leaf.startswith(WHITEOUT_PREFIX):
        target = leaf[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", ".."):
            raise UnsafeLayer(f"layer entry {name!r} is a whiteout of nothing")
        _remove_existing(pfd, target)
        if as_root:
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
        return
    mode = member.mode & 0o7777
    if member.isdir():
        try:
            st = os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                _remove_existing(pfd, leaf)
                os.mkdir(leaf, 0o700, dir_fd=pfd)
        except FileNotFoundError:
            os.mkdir(leaf, 0o700, dir_fd=pfd)
        dir_modes.append((parts, mode, member.uid, member.gid, float(member.mtime)))
        return
    _remove_existing(pfd, leaf)
    if member.isfile():
        src = tar.extractfile(member)
        assert src is not None
        fd = os.open(
            leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=pfd
        )
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
    elif member.issym():
        if "\x00" in member.linkname:
            raise UnsafeLayer(f"layer entry {name!r} has a NUL byte in its link target")
        os.symlink(member.linkname, leaf, dir_fd=pfd)
    elif member.islnk():
        target_parts = _clean_member_name(member.linkname)
        if not target_parts:
            raise UnsafeLayer(f"layer entry {name!r} is a hard link to the layer root")
        tfd = _parent_fd(root_fd, target_parts, member.linkname)
        try:
            try:
                st = os.stat(target_parts[-1], dir_fd=tfd, follow_symlinks=False)
            except FileNotFoundError:
                raise UnsafeLayer(
                    f"layer entry {name!r} links to {member.linkname!r}, which the layer "
                    "does not hold"
                ) from None
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeLayer(
                    f"layer entry {name!r} is a hard link to {member.linkname!r}, "
                    "which is not a regular file"
                )
            os.link(
                target_parts[-1], leaf, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False
            )
        finally:
            os.close(tfd)
        return  # a hard link shares its target's owner and mode
    elif member.isfifo():
        os.mkfifo(leaf, 0o600, dir_fd=pfd)
    else:
        raise UnsafeLayer(f"layer entry {name!r} has an unsupported type {member.type!r}")
    if as_root:
        os.chown(leaf, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
    if not member.issym():
        os.chmod(leaf, mode, dir_fd=pfd)
    os.utime(leaf, (member.mtime, member.mtime), dir_fd=pfd, follow_symlinks=False)


# -- pulls from the controller ---------------------------------------------------------------


class PullError(ImageError):
    """Fetching an image from the controller failed (unreachable, refused, unknown, corrupt)."""


MAX_MANIFEST_BYTES = 4 << 20
_PULL_LOCKS: dict[str, threading.Lock] = {}
_PULL_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _pull_lock(store: ImageStore, digest: str) -> Iterator[None]:
    """Hold the pull of blob `digest`: one thread of this process, and one process, at a time."""
    with _PULL_LOCKS_GUARD:
        lock = _PULL_LOCKS.setdefault(f"{store.root}/{digest}", threading.Lock())
    with lock:
        locks = store.root / "locks"
        locks.mkdir(exist_ok=True)
        fd = os.open(locks / f"pull-{digest[7:]}", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class ImagePuller:
    """Fetch images by digest from the controller's registry endpoints (`/v2/...`) into a store.

    Every blob is verified against its digest while it streams into a temporary file, and only
    then renamed into place; the manifest is stored last, after its config and layers are in
    and unpacked, so an image is never half there. Pulls of the same blob, by threads of this
    process or by other processes on the store, coalesce: the second waits, then finds it.
    """

    def __init__(self, store: ImageStore, base_url: str, token: str = "",
                 timeout_s: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise PullError(f"the controller URL {base_url!r} must start with http:// or https://")
        self.store = store
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(headers=headers, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> ImagePuller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _url(self, repository: str, kind: str, ref: str) -> str:
        return f"{self.base_url}/v2/{repository}/{kind}/{ref}"

    def _refused(self, resp: httpx.Response, what: str) -> PullError:
        try:
            errors = resp.json().get("errors") or [{}]
            detail = str(errors[0].get("message") or "")
        except (ValueError, AttributeError, IndexError):
            detail = ""
        reason = {401: "refused the host token", 403: "refused the host token",
                  404: "does not have it"}.get(resp.status_code, f"answered {resp.status_code}")
        return PullError(f"pulling {what}: the controller {reason}" + (f" ({detail})" if detail else ""))

    def pull(self, repository: str, digest: str) -> str:
        """Make the image `digest` of `repository` (the app) present in the store; return it."""
        if not _DIGEST_RE.match(digest):
            raise InvalidReference(f"invalid digest {digest!r}: expected sha256:<64 hex>")
        if not _NAME_RE.match(repository) or "/" in repository:
            raise InvalidReference(f"invalid repository name {repository!r}")
        if self.store.has_blob(digest):
            return digest
        what = f"image {digest[:19]} of {repository}"
        try:
            resp = self.client.get(self._url(repository, "manifests", digest), headers={
                "Accept": ", ".join(sorted(MANIFEST_MEDIA_TYPES))})
            if resp.status_code != 200:
                raise self._refused(resp, what)
            data = resp.content
            if len(data) > MAX_MANIFEST_BYTES:
                raise PullError(f"pulling {what}: the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
            got = "sha256:" + hashlib.sha256(data).hexdigest()
            if got != digest:
                raise CorruptImage(f"pulling {what}: the manifest has digest {got}, expected {digest}")
            try:
                manifest = json.loads(data)
            except ValueError as e:
                raise CorruptImage(f"pulling {what}: the manifest is not JSON: {e}") from None
            config, layers = self._descriptors(manifest, what)
            for desc in [config, *layers]:
                self._fetch_blob(repository, desc)
            for layer in layers:
                self.store.unpack(str(layer["digest"]))
        except httpx.HTTPError as e:
            raise PullError(f"pulling {what}: cannot reach the controller at {self.base_url}: {e}") from None
        self.store.put_blob_bytes(data)
        self.store.tag(digest, f"{repository}:{digest[7:19]}", size=len(data))
        return digest

    @staticmethod
    def _descriptors(manifest: Any, what: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if not isinstance(manifest, dict) or manifest.get("mediaType", MEDIA_MANIFEST) not in MANIFEST_MEDIA_TYPES:
            raise CorruptImage(f"pulling {what}: the manifest is not an image manifest")
        config, layers = manifest.get("config"), manifest.get("layers")
        if not isinstance(config, dict) or not isinstance(layers, list):
            raise CorruptImage(f"pulling {what}: the manifest lacks its config or layers")
        for desc in [config, *layers]:
            if not isinstance(desc, dict) or not _DIGEST_RE.match(str(desc.get("digest", ""))):
                raise CorruptImage(f"pulling {what}: the manifest holds an invalid descriptor {desc!r}")
            size = desc.get("size")
            if not isinstance(size, int) or size < 0:
                raise CorruptImage(f"pulling {what}: descriptor {desc.get('digest')} has no valid size")
        for layer in layers:
            if layer.get("mediaType") not in LAYER_MEDIA_TYPES:
                raise CorruptImage(f"pulling {what}: unsupported layer media type {layer.get('mediaType')!r}")
        return config, layers

    def _fetch_blob(self, repository: str, desc: dict[str, Any]) -> None:
        digest, size = str(desc["digest"]), int(desc["size"])
        with _pull_lock(self.store, digest):
            if self.store.has_blob(digest):
                return
            with self.client.stream("GET", self._url(repository, "blobs", digest)) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise self._refused(resp, f"blob {digest[:19]} of {repository}")
                self.store.put_blob_chunks(resp.iter_bytes(_CHUNK), expected=digest, size=size)


# -- command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`python -m runtime.images`: list, inspect, import, export, remove and collect images."""
    import argparse
    import sys

    from runtime.client import runtime_root

    parser = argparse.ArgumentParser(prog="python -m runtime.images", description=main.__doc__)
    parser.add_argument("--root", type=Path, help="runtime root (default $PAAS_DATA_DIR/runtime)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="named images and their manifest digests")
    p = sub.add_parser("inspect", help="an image's digest, layers and config")
    p.add_argument("ref")
    p = sub.add_parser("import", help="import an OCI archive")
    p.add_argument("archive", type=Path)
    p.add_argument("--name", help="name the image (archives of one image)")
    p = sub.add_parser("export", help="write an image as an OCI archive")
    p.add_argument("ref")
    p.add_argument("archive", type=Path)
    p = sub.add_parser("rm", help="forget an image's name (gc frees its blobs)")
    p.add_argument("ref")
    p = sub.add_parser("gc", help="delete blobs and layers no image references")
    p.add_argument("--keep", action="append", default=[], help="a manifest digest still in use")
    p = sub.add_parser("tiny", help="build the busybox test image")
    p.add_argument("--name", default="tiny")
    args = parser.parse_args(argv)
    root: Path = args.root or runtime_root()
    try:
        store = ImageStore(root / "images")
        if args.command == "list":
            for ref, digest in store.images():
                print(f"{ref:<40} {digest}")
        elif args.command == "inspect":
            image = store.resolve(args.ref)
            print(json.dumps({"digest": image.digest, "layers": [str(p) for p in image.layers],
                              "config": image.config}, indent=2))
        elif args.command == "import":
            for ref in store.import_archive(args.archive, reference=args.name):
                print(f"{ref} {store.manifest(ref)[0]}")
        elif args.command == "export":
            print(store.export_archive(args.ref, args.archive))
        elif args.command == "rm":
            store.remove(args.ref)
        elif args.command == "gc":
            deleted = store.gc(keep=args.keep)
            print(f"deleted {len(deleted)} blob(s)")
        elif args.command == "tiny":
            from runtime.tinyimage import build_tiny_image

            ref = build_tiny_image(store, name=args.name)
            print(f"{ref} {store.manifest(ref)[0]}")
        return 0
    except (ImageError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
