"""Pack a built app directory as deterministic OCI layers, and describe the image around it.

The app goes under `app/`. Entries are sorted, every mtime is the same fixed value, owners are
one uid:gid with no names, and the gzip header carries no time or file name, so the same app
directory always gives the same digests.

Dependency directories at the app's root (`.venv`, `node_modules`) each become a layer of their
own under the app's layer, written as plain tar (no compression to wait for). With a layer cache
directory, such a layer is reused without reading the directory again while its fingerprint
stays the same: every entry's path, type, mode, size, modification time and link target. A
warm build that restores the virtualenv from its cache (the copy keeps the times) thus packs
only the app's own files, and its image shares the dependency layer with the last one.

Files carry the fixed mtime, so bytecode compiled against the build's times would be stale at
run time; the Python buildpack compiles hash-checked `.pyc` files (`SOURCE_DATE_EPOCH`), which
do not depend on mtimes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, cast

from builder.errors import BuildError
from builder.procfile import ProcessTypes

MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
FIXED_MTIME = 315532800  # 1980-01-01: the earliest time every archive format can hold
PROCESS_TYPES_LABEL = "paas.process-types"
APP_DIR = "/app"
# Directories at the app's root that become layers of their own, below the app's layer.
DEPENDENCY_DIRS = (".venv", "node_modules")
_LAYER_FORMAT = "paas-dependency-layer 1"
# Source .profile and .profile.d/*.sh of the app, then run the command given as $1.
LAUNCH_SCRIPT = (
    'cd "$HOME" || exit 1; '
    'for f in "$HOME"/.profile.d/*.sh; do [ -r "$f" ] && . "$f"; done; '
    '[ -r "$HOME/.profile" ] && . "$HOME/.profile"; '
    'eval "$1"'
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class SlugLayer:
    """A packed slug: the app's layer (its blob, digest and uncompressed diff_id) on top of
    `lower`, the layers of its dependency directories, bottom first.

    `size` is the whole slug's bytes, every layer's blob together; `layer_size` this layer's
    blob alone. `reused` says the layer was taken from the layer cache, not packed again.
    """

    path: Path
    digest: str
    size: int
    diff_id: str
    media_type: str = MEDIA_LAYER_GZIP
    lower: tuple[SlugLayer, ...] = ()
    reused: bool = False
    layer_size: int = -1  # -1: the same as size

    def __post_init__(self) -> None:
        if self.layer_size < 0:
            object.__setattr__(self, "layer_size", self.size)

    @property
    def layers(self) -> tuple[SlugLayer, ...]:
        """Every layer of the slug on its own, bottom first (the dependency layers, the app's)."""
        top = replace(self, lower=(), size=self.layer_size, layer_size=self.layer_size)
        return (*self.lower, top)


def layer_cache_dir(cache_dir: Path) -> Path:
    """Where the dependency layers of the app whose build cache is `cache_dir` are kept.

    Next to the build cache, not in it: buildpacks write the build cache, never this.
    """
    return cache_dir.with_name(cache_dir.name + ".layers")


def launch_argv(command: str) -> list[str]:
    """Return the argv that starts a process type's `command` the way the platform does.

    Run with `HOME` set to the app directory (`/app` in a container).
    """
    return ["/bin/bash", "-c", LAUNCH_SCRIPT, "paas-launch", command]


def pack_slug(
    app_dir: Path, dest: Path, uid: int = 0, gid: int = 0, layer_cache: Path | None = None
) -> SlugLayer:
    """Pack `app_dir` into layers and return the description of the slug.

    The app's own files go to the gzip layer `dest`; each dependency directory to a plain tar
    layer next to it, or, with `layer_cache`, reused from there while it is unchanged.
    """
    lower: list[SlugLayer] = []
    separate: set[str] = set()
    for name in DEPENDENCY_DIRS:
        path = app_dir / name
        if path.is_dir() and not path.is_symlink():
            lower.append(_dependency_layer(app_dir, name, dest, uid, gid, layer_cache))
            separate.add(name)
    raw = hashlib.sha256()
    blob = hashlib.sha256()
    with dest.open("wb") as out:
        hashed_out = _HashingWriter(out, blob)
        with (
            gzip.GzipFile(
                filename="", mode="wb", fileobj=cast(IO[bytes], hashed_out), mtime=0, compresslevel=1
            ) as gz,
            tarfile.open(
                fileobj=cast(IO[bytes], _HashingWriter(gz, raw)), mode="w|", format=tarfile.PAX_FORMAT
            ) as tar,
        ):
            tar.addfile(_dir_info("app", uid, gid, 0o755))
            for rel, path, st in _walk_sorted(app_dir, skip=separate):
                _add(tar, "app/" + rel, path, st, uid, gid)
        size = out.tell()
    return SlugLayer(
        path=dest,
        digest="sha256:" + blob.hexdigest(),
        size=size + sum(layer.size for layer in lower),
        diff_id="sha256:" + raw.hexdigest(),
        lower=tuple(lower),
        layer_size=size,
    )


def _dependency_layer(
    app_dir: Path, name: str, dest: Path, uid: int, gid: int, cache: Path | None
) -> SlugLayer:
    """The plain tar layer of `app_dir/name`, from `cache` when its fingerprint matches."""
    entries = _walk_sorted(app_dir / name)
    fingerprint = _fingerprint(name, entries, uid, gid)
    key = name.lstrip(".")
    here = dest.with_name(f"{dest.name.split('.')[0]}-{key}.tar")
    record_path = cache / f"{key}.json" if cache is not None else None
    if record_path is not None and cache is not None:
        found = _cached_layer(record_path, cache, fingerprint)
        if found is not None:
            _link_or_copy(found.path, here)
            return replace(found, path=here, reused=True)
    h = hashlib.sha256()
    with here.open("wb") as out:
        with tarfile.open(
            fileobj=cast(IO[bytes], _HashingWriter(out, h)), mode="w|", format=tarfile.PAX_FORMAT
        ) as tar:
            tar.addfile(_dir_info("app", uid, gid, 0o755))
            st = (app_dir / name).lstat()
            tar.addfile(_dir_info("app/" + name, uid, gid, stat.S_IMODE(st.st_mode) & 0o777))
            for rel, path, entry_st in entries:
                _add(tar, f"app/{name}/{rel}", path, entry_st, uid, gid)
        size = out.tell()
    digest = "sha256:" + h.hexdigest()
    layer = SlugLayer(path=here, digest=digest, size=size, diff_id=digest, media_type=MEDIA_LAYER_TAR)
    if record_path is not None and cache is not None:
        _remember_layer(layer, record_path, cache, fingerprint)
    return layer


def _fingerprint(name: str, entries: list[tuple[str, Path, os.stat_result]], uid: int, gid: int) -> str:
    h = hashlib.sha256(f"{_LAYER_FORMAT}\0{name}\0{uid}:{gid}\0".encode())
    for rel, path, st in entries:
        link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
        h.update(f"{rel}\0{st.st_mode:o}\0{st.st_size}\0{st.st_mtime_ns}\0{link}\0".encode(
            errors="surrogateescape"))
    return h.hexdigest()


def _cached_layer(record_path: Path, cache: Path, fingerprint: str) -> SlugLayer | None:
    try:
        record = json.loads(record_path.read_text())
        if record.get("fingerprint") != fingerprint:
            return None
        path = cache / str(record["file"])
        if path.parent != cache or path.stat().st_size != int(record["size"]):
            return None
        return SlugLayer(
            path=path, digest=str(record["digest"]), size=int(record["size"]),
            diff_id=str(record["diff_id"]), media_type=MEDIA_LAYER_TAR,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no record, or one that cannot be trusted: pack again


def _remember_layer(layer: SlugLayer, record_path: Path, cache: Path, fingerprint: str) -> None:
    """Keep `layer` in `cache` as the only one of its kind, with the record that finds it."""
    cache.mkdir(parents=True, exist_ok=True)
    key = record_path.stem
    file = f"{key}-{layer.digest.split(':', 1)[1]}.tar"
    _link_or_copy(layer.path, cache / file)
    record = {"fingerprint": fingerprint, "file": file, "digest": layer.digest,
              "size": layer.size, "diff_id": layer.diff_id}
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".record-")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(tmp, record_path)
    for old in cache.glob(f"{key}-*.tar"):
        if old.name != file:
            old.unlink(missing_ok=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Give `dst` the content of `src`: a hard link where the file system allows one."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        with src.open("rb") as fin, tmp.open("wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
    os.replace(tmp, dst)


def image_config(
    *,
    slug: SlugLayer,
    process_types: ProcessTypes,
    env: Mapping[str, str],
    app: str,
    build: str,
    commit: str,
) -> dict[str, Any]:
    """Return the OCI image config fragment for the slug layer.

    The assembler puts the stack's layers' diff_ids in front of `rootfs.diff_ids`.
    """
    full_env = {"HOME": APP_DIR, "PATH": DEFAULT_PATH, **env}
    config: dict[str, Any] = {
        "Env": [f"{k}={v}" for k, v in sorted(full_env.items())],
        "WorkingDir": APP_DIR,
        "Entrypoint": ["/bin/bash", "-c", LAUNCH_SCRIPT, "paas-launch"],
        "Labels": {
            PROCESS_TYPES_LABEL: json.dumps(process_types.as_label(), sort_keys=True),
            "paas.app": app,
            "paas.build": build,
            "paas.commit": commit,
        },
    }
    if "web" in process_types.types:
        config["Cmd"] = [process_types.types["web"]]
    return {
        "architecture": _oci_arch(),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in slug.layers]},
    }


def _oci_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


class _HashingWriter:
    """A write-only file object that hashes what passes through it."""

    def __init__(self, inner: IO[bytes] | gzip.GzipFile | _HashingWriter, h: Any) -> None:
        self.inner = inner
        self.h = h

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.inner.write(data)
        return len(data)

    def flush(self) -> None:
        self.inner.flush()


def _walk_sorted(
    root: Path, skip: Collection[str] = frozenset()
) -> list[tuple[str, Path, os.stat_result]]:
    """Every entry under `root` (but not the top-level names in `skip`), sorted by name bytes."""
    out: list[tuple[str, Path, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        if here == root and skip:
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in dirnames + filenames:
            path = here / name
            if here == root and name in skip:
                continue
            out.append((path.relative_to(root).as_posix(), path, path.lstat()))
    out.sort(key=lambda item: item[0].encode(errors="surrogateescape"))
    return out


def _dir_info(name: str, uid: int, gid: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name + "/")
    info.type = tarfile.DIRTYPE
    _normalise(info, uid, gid, mode)
    return info


def _normalise(info: tarfile.TarInfo, uid: int, gid: int, mode: int) -> None:
    info.mtime = FIXED_MTIME
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mode = mode


def _add(tar: tarfile.TarFile, name: str, path: Path, st: os.stat_result, uid: int, gid: int) -> None:
    # Keep the permission bits but never setuid, setgid or sticky bits from a build.
    mode = stat.S_IMODE(st.st_mode) & 0o777
    if stat.S_ISDIR(st.st_mode):
        tar.addfile(_dir_info(name, uid, gid, mode))
    elif stat.S_ISLNK(st.st_mode):
        info = tarfile.TarInfo(name)
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
        _normalise(info, uid, gid, 0o777)
        tar.addfile(info)
    elif stat.S_ISREG(st.st_mode):
        info = tarfile.TarInfo(name)
        info.size = st.st_size
        _normalise(info, uid, gid, mode)
        with path.open("rb") as f:
            tar.addfile(info, f)
    else:
        raise BuildError(f"the build left {name[4:]}, which is not a file, directory or symlink")
