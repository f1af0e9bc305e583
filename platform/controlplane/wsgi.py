"""WSGI entry point for gunicorn (`gunicorn controlplane.wsgi`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# platform/ is a source root: appended, never put in front of the standard library.
_platform = str(Path(__file__).resolve().parents[1])
if _platform not in sys.path:
    sys.path.append(_platform)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

from controlplane.env import ConfigError  # noqa: E402

try:
    application = get_wsgi_application()
except ConfigError as error:  # a setting the operator gave: say which and stop, no traceback
    sys.stderr.write(f"paas: configuration error: {error}\n")
    raise SystemExit(2) from None
