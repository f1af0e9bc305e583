from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings

from tests.liveprocs import free_port, isolated_env

ROOT = Path(__file__).resolve().parents[2]


def test_it_keeps_its_data_under_the_data_dir() -> None:
    assert str(settings.DATA_DIR) == os.path.realpath(os.environ["PAAS_DATA_DIR"])


def test_it_shows_app_urls_by_the_configured_template(settings) -> None:
    from core.models import App

    settings.PAAS_DOMAIN = "apps.example.com"
    settings.PAAS_APP_URL = "https://{app}.{domain}:8443"
    assert App(name="demo").url == "https://demo.apps.example.com:8443"


def _with_bad_setting(tmp_path: Path, name: str, value: str) -> dict[str, str]:
    return isolated_env(tmp_path, free_port(), "bad-setting", **{name: value})


def test_a_bad_setting_stops_manage_py_with_one_clear_line(tmp_path: Path) -> None:
    for name, value, message in (("PAAS_STOP_DRAIN_S", "soon", "PAAS_STOP_DRAIN_S must be a number of seconds"),
                                 ("PAAS_APP_URL", "https://x", "PAAS_APP_URL must contain {app}")):
        proc = subprocess.run([sys.executable, str(ROOT / "manage.py"), "check"], cwd=ROOT, capture_output=True,
                              text=True, env=_with_bad_setting(tmp_path, name, value), timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"paas: configuration error: {message}") and "Traceback" not in proc.stderr


def test_a_bad_setting_stops_the_web_process_with_one_clear_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "import controlplane.wsgi"], cwd=ROOT / "platform",
                          capture_output=True, text=True, timeout=120,
                          env=_with_bad_setting(tmp_path, "PAAS_STOP_DRAIN_S", "-1"))
    assert proc.returncode == 2, proc.stderr
    assert "paas: configuration error: PAAS_STOP_DRAIN_S must be 0 or more" in proc.stderr
    assert "Traceback" not in proc.stderr
