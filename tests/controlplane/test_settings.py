from __future__ import annotations

import os

from django.conf import settings


def test_it_keeps_its_data_under_the_data_dir() -> None:
    assert str(settings.DATA_DIR) == os.path.realpath(os.environ["PAAS_DATA_DIR"])


def test_it_shows_app_urls_by_the_configured_template(settings) -> None:
    from core.models import App

    settings.PAAS_DOMAIN = "apps.example.com"
    settings.PAAS_APP_URL = "https://{app}.{domain}:8443"
    assert App(name="demo").url == "https://demo.apps.example.com:8443"
