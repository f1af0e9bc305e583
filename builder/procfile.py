"""Parse Procfiles and work out an app's process types.

A Procfile has one `type: command` per line; blank lines and lines starting with `#` are
ignored. The `release` type is special: it runs once per release before the release goes live
and is never scaled. `web` is the only type that receives connections: it gets `$PORT`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import ProcfileError

RELEASE = "release"
WEB = "web"
MAX_PROCFILE_BYTES = 64 * 1024
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,29}$")
_PORT_RE = re.compile(r"\$\{?PORT\b")


@dataclass(frozen=True)
class ProcessTypes:
    """What an app can run: scalable process types, plus an optional release command."""

    types: dict[str, str] = field(default_factory=dict)
    release: str | None = None
    warnings: tuple[str, ...] = ()

    def environment(self, name: str, port: int) -> dict[str, str]:
        """Return the extra environment the process type `name` starts with."""
        if name not in self.types:
            raise KeyError(f"no process type {name!r}")
        return {"PORT": str(port)} if name == WEB else {}

    def as_label(self) -> dict[str, str]:
        """Return every type, `release` included, as one mapping (for the image label)."""
        out = dict(sorted(self.types.items()))
        if self.release is not None:
            out[RELEASE] = self.release
        return out


def parse_procfile(text: str) -> dict[str, str]:
    """Return the process types a Procfile declares, in file order.

    Raise ProcfileError naming the line and what is wrong with it.
    """
    types: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, command = line.partition(":")
        name = name.strip()
        command = command.strip()
        if not colon:
            raise ProcfileError(number, f"expected `type: command`, got {_show(line)}")
        if not name:
            raise ProcfileError(number, "the process type name is missing before the colon")
        if not _NAME_RE.match(name):
            raise ProcfileError(
                number,
                f"bad process type name {_show(name)}: use 1 to 30 lower-case letters, digits, "
                "'-' or '_', starting with a letter",
            )
        if not command:
            raise ProcfileError(number, f"process type {name!r} has no command")
        if name in types:
            raise ProcfileError(number, f"process type {name!r} is declared twice")
        types[name] = command
    return types


def read_procfile(app_dir: Path) -> dict[str, str] | None:
    """Return the process types of `app_dir/Procfile`, or None when there is none."""
    path = app_dir / "Procfile"
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ProcfileError(None, "the Procfile must be a regular file, not a symlink or directory")
    if not path.exists():
        return None
    data = path.read_bytes()
    if len(data) > MAX_PROCFILE_BYTES:
        raise ProcfileError(None, f"the Procfile is larger than {MAX_PROCFILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ProcfileError(line, "the Procfile is not valid UTF-8") from None
    if "\x00" in text:
        raise ProcfileError(text[: text.index("\x00")].count("\n") + 1, "NUL byte in the Procfile")
    return parse_procfile(text)


def resolve_process_types(
    procfile: Mapping[str, str] | None, default_process_types: Mapping[str, str]
) -> ProcessTypes:
    """Merge the buildpacks' default process types with the Procfile (which wins per type)."""
    merged: dict[str, str] = dict(default_process_types)
    if procfile:
        merged.update(procfile)
    release = merged.pop(RELEASE, None)
    warnings: list[str] = []
    if WEB not in merged:
        warnings.append("No web process type: the app will not receive HTTP requests.")
    elif procfile and WEB in procfile and not _PORT_RE.search(procfile[WEB]):
        warnings.append(
            "The web command does not mention $PORT: the app must listen on the port given "
            "in the PORT environment variable."
        )
    return ProcessTypes(types=merged, release=release, warnings=tuple(warnings))


def _show(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")
