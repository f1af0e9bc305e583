#!/usr/bin/env python3
"""Django's command-line utility for the paas control plane."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    # platform/ is a source root: appended after the standard library, never in front of it.
    platform_root = str(Path(__file__).resolve().parent / "platform")
    if platform_root not in sys.path:
        sys.path.append(platform_root)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    from django.core.management import execute_from_command_line

    from controlplane.env import ConfigError

    try:
        execute_from_command_line(sys.argv)
    except ConfigError as error:  # a setting the operator gave: say which and stop, no traceback
        sys.stderr.write(f"paas: configuration error: {error}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
