"""A tiny busybox image for fast tests: one layer, the host's static busybox and its applets.

The layer is built deterministically (fixed owners and times), so the same busybox binary always
gives the same digests.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from runtime.images import MEDIA_LAYER, ImageError, ImageStore, normalize_reference

BUSYBOX = Path("/bin/busybox")
TINY_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_PASSWD += b"app:x:1000:1000:app:/app:/bin/sh\n"
_GROUP = b"root:x:0:\nnogroup:x:65534:\napp:x:1000:\n"


def _applets(busybox: Path) -> list[str]:
    try:
        out = subprocess.run(
            [str(busybox), "--list"], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ImageError(f"cannot list the applets of {busybox}: {e}") from None
    return sorted({a for a in out.split() if a and "/" not in a and a != "busybox"})


def _info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = 0
    info.mtime = 0
    return info


def build_layer(dest: Path, busybox: Path = BUSYBOX) -> None:
    """Write the tiny root file system as an uncompressed layer tarball to `dest`."""
    if not busybox.is_file():
        raise ImageError(f"{busybox} is missing; install Debian's busybox-static package")
    applets = _applets(busybox)
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for d, mode in [
            ("bin", 0o755),
            ("sbin", 0o755),
            ("usr", 0o755),
            ("usr/bin", 0o755),
            ("usr/sbin", 0o755),
            ("etc", 0o755),
            ("dev", 0o755),
            ("proc", 0o555),
            ("sys", 0o555),
            ("tmp", 0o1777),
            ("root", 0o700),
            ("app", 0o755),
            ("var", 0o755),
            ("run", 0o755),
        ]:
            tar.addfile(_info(d, tarfile.DIRTYPE, mode))
        info = _info("bin/busybox", tarfile.REGTYPE, 0o755)
        info.size = busybox.stat().st_size
        with busybox.open("rb") as f:
            tar.addfile(info, f)
        for applet in applets:
            link = _info(f"bin/{applet}", tarfile.SYMTYPE, 0o777)
            link.linkname = "busybox"
            tar.addfile(link)
        env = _info("usr/bin/env", tarfile.SYMTYPE, 0o777)
        env.linkname = "../../bin/busybox"
        tar.addfile(env)
        files = {
            "etc/passwd": _PASSWD,
            "etc/group": _GROUP,
            "etc/hostname": b"tiny\n",
            "etc/hosts": b"127.0.0.1 localhost\n",
        }
        for name, data in files.items():
            info = _info(name, tarfile.REGTYPE, 0o644)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def tiny_config(diff_id: str) -> dict[str, Any]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": [f"PATH={TINY_PATH}"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "paas tiny image: busybox-static", "created": "1970-01-01T00:00:00Z"}],
    }


def build_tiny_image(store: ImageStore, name: str = "tiny", busybox: Path = BUSYBOX) -> str:
    """Build (or rebuild; it is deterministic) the busybox image as `name`; return its reference."""
    fd, tmp = tempfile.mkstemp(dir=store.tmp, suffix=".tar")
    os.close(fd)
    try:
        build_layer(Path(tmp), busybox)
        digest, size = store.put_blob_file(Path(tmp))
    finally:
        os.unlink(tmp)
    # Uncompressed layer: the diff id is the blob digest.
    store.add_image(name, [(digest, size, MEDIA_LAYER)], tiny_config(digest))
    return normalize_reference(name)
