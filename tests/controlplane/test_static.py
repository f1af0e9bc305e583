"""The web process serves its own static files (dashboard and API docs), with DEBUG off."""

from __future__ import annotations

import pytest
from django.test import Client


@pytest.mark.parametrize(
    "path",
    [
        "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js",
        "/static/web/vendor/htmx/htmx.min.js",
    ],
)
def test_it_serves_static_assets_itself(settings, path: str) -> None:
    settings.DEBUG = False
    response = Client().get(path)
    assert response.status_code == 200
    assert int(response["Content-Length"]) > 1000


def test_it_answers_404_for_a_missing_asset(settings) -> None:
    settings.DEBUG = False
    assert Client().get("/static/web/no-such-file.js").status_code == 404
