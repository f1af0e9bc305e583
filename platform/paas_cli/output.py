"""How the CLI shows things: rich tables on a terminal, plain aligned columns in a pipe."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def console() -> Console:
    """A rich console for the terminal (rich is imported only when there is one to draw on)."""
    from rich.console import Console

    return Console(highlight=False)


def text(value: Any) -> str:
    """One cell: None as empty, releases as `vN`, dicts as `k=v` pairs, lists joined."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        if "name" in value and isinstance(value["name"], str):
            return value["name"]
        return ", ".join(f"{k}={text(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(text(v) for v in value)
    return str(value)


def when(value: Any) -> str:
    """An ISO timestamp shortened to the second, in the server's zone (UTC)."""
    if not isinstance(value, str) or len(value) < 19 or value[10] != "T":
        return text(value)
    suffix = " UTC" if value.endswith(("Z", "+00:00")) else ""
    return value[:10] + " " + value[11:19] + suffix


def release_name(value: Any) -> str:
    if isinstance(value, dict):
        if isinstance(value.get("name"), str):
            return str(value["name"])
        if isinstance(value.get("version"), int):
            return f"v{value['version']}"
    if isinstance(value, int):
        return f"v{value}"
    return text(value)


def print_table(
    rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, str]],
    *, empty: str, formatters: dict[str, Any] | None = None,
) -> None:
    """Print rows as a table of the given (key, heading) columns, or `empty` when none."""
    rows = list(rows)
    if not rows:
        say(empty)
        return
    formatters = formatters or {}
    cells = [[formatters.get(key, text)(row.get(key)) for key, _heading in columns] for row in rows]
    if not sys.stdout.isatty():
        # In a pipe: plain aligned columns, no box drawing, no trailing blanks (grep/awk-able).
        headings = [heading for _key, heading in columns]
        widths = [max(len(c) for c in col) for col in zip(headings, *cells, strict=True)]
        for line in [headings, *cells]:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        return
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, highlight=False)
    for _key, heading in columns:
        table.add_column(heading, overflow="fold")
    for line in cells:
        table.add_row(*line)
    console().print(table)


def print_pairs(pairs: Sequence[tuple[str, str]]) -> None:
    """Print `label: value` lines with the values aligned."""
    width = max((len(label) for label, _ in pairs), default=0)
    for label, value in pairs:
        print(f"{label + ':':<{width + 1}} {value}".rstrip())


def say(message: str) -> None:
    print(message)


def error(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
