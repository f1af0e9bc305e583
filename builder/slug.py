"""Pack a built app directory as a deterministic OCI layer, and describe the image around it.

The layer holds the app under `app/`. Entries are sorted, every mtime is the same fixed value,
owners are one uid:gid with no names, and the gzip header carries no time or file name, so the
same app directory always gives the same digest.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from builder.errors import BuildError
from builder.procfile import ProcessTypes

MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
FIXED_MTIME = 315532800  # 1980-01-01: the earliest time every archive format can hold
PROCESS_TYPES_LABEL = "paas.process-types"
APP_DIR = "/app"
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
    """A packed slug: the gzip blob, its digest and size, and the uncompressed diff_id."""

    path: Path
    digest: str
    size: int
    diff_id: str
    media_type: str = MEDIA_LAYER_GZIP


def launch_argv(command: str) -> list[str]:
    """Return the argv that starts a process type's `command` the way the platform does.

    Run with `HOME` set to the app directory (`/app` in a container).
    """
    return ["/bin/bash", "-c", LAUNCH_SCRIPT, "paas-launch", command]


def pack_slug(app_dir: Path, dest: Path, uid: int = 0, gid: int = 0) -> SlugLayer:
    """Pack `app_dir` into the gzip layer `dest` and return its description."""
    raw = hashlib.sha256()
    with (
        dest.open("wb") as out,
        gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz,
        tarfile.open(
            fileobj=cast(IO[bytes], _HashingWriter(gz, raw)), mode="w|", format=tarfile.PAX_FORMAT
        ) as tar,
    ):
        tar.addfile(_dir_info("app", uid, gid, 0o755))
        for rel, path in _walk_sorted(app_dir):
            _add(tar, "app/" + rel, path, uid, gid)
    blob = hashlib.sha256()
    with dest.open("rb") as f:
        while chunk := f.read(1 << 20):
            blob.update(chunk)
    return SlugLayer(
        path=dest,
        digest="sha256:" + blob.hexdigest(),
        size=dest.stat().st_size,
        diff_id="sha256:" + raw.hexdigest(),
    )


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
        "rootfs": {"type": "layers", "diff_ids": [slug.diff_id]},
    }


def _oci_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


class _HashingWriter:
    """A write-only file object that hashes what passes through it."""

    def __init__(self, inner: IO[bytes] | gzip.GzipFile, h: Any) -> None:
        self.inner = inner
        self.h = h

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.inner.write(data)
        return len(data)


def _walk_sorted(root: Path) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        for name in dirnames + filenames:
            path = here / name
            out.append((path.relative_to(root).as_posix(), path))
    out.sort(key=lambda item: item[0].encode())
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


def _add(tar: tarfile.TarFile, name: str, path: Path, uid: int, gid: int) -> None:
    st = path.lstat()
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
