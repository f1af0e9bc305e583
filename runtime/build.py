"""Compile the container init (`runtime/init.c`) with gcc, once per version of its source.

The binary is static so that it needs nothing from the container's root filesystem, and it is
cached as `<root>/bin/paas-init-<hash of the source>`: a changed source gets a new binary while
running containers keep the old one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("init.c")


class BuildError(RuntimeError):
    """The init could not be compiled."""


def init_binary(root: Path, source: Path = SOURCE) -> Path:
    """Return the path of the compiled init under `root`, compiling it first if needed."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    target = root / "bin" / f"paas-init-{digest}"
    if target.exists():
        return target
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BuildError("gcc is needed to build the container init (Debian package gcc)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    cmd = [gcc, "-static", "-O2", "-Wall", "-o", str(tmp), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"cannot compile the container init:\n{proc.stderr.strip()}")
    tmp.chmod(0o755)
    os.replace(tmp, target)
    return target
