"""pytest plugin (loaded with `-p` before pytest-django reads the settings).

Everything the platform writes during a test run goes to a throw-away data dir, never ./var.
"""

from __future__ import annotations

import os
import shutil
import tempfile

if "PAAS_DATA_DIR" not in os.environ:
    _dir = tempfile.mkdtemp(prefix="paas-test-data-")
    os.environ["PAAS_DATA_DIR"] = _dir

    def pytest_unconfigure() -> None:
        shutil.rmtree(_dir, ignore_errors=True)


os.environ.setdefault("PAAS_SECRET_KEY", "test-only-secret-key-not-for-production-use-0123456789")
