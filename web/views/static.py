"""Serve the dashboard's own static files (CSS, JS, vendored htmx) from the platform itself.

Django's `staticfiles` app serves files only with DEBUG on. The dashboard must work without any
CDN or front web server, so this view looks a file up with the static finders (or in STATIC_ROOT
after `collectstatic`) and hands it to `django.views.static.serve`, which answers conditional
requests (If-Modified-Since) with 304.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from django.conf import settings
from django.contrib.staticfiles import finders
from django.http import Http404, HttpRequest, HttpResponseBase
from django.views.decorators.http import require_safe
from django.views.static import serve

# Browsers may keep assets an hour; a new version of the platform changes them rarely.
CACHE_SECONDS = 3600


def _locate(path: str) -> Path | None:
    collected = Path(settings.STATIC_ROOT) / path
    if collected.is_file():
        return collected
    found = finders.find(path)
    if isinstance(found, list):
        found = found[0] if found else None
    return Path(found) if found else None


@require_safe
def static_file(request: HttpRequest, path: str) -> HttpResponseBase:
    normalized = posixpath.normpath(path).lstrip("/")
    if normalized != path or normalized.startswith("..") or not normalized:
        raise Http404("No such file.")
    located = _locate(normalized)
    if located is None:
        raise Http404("No such file.")
    response = serve(request, located.name, document_root=str(located.parent))
    response["Cache-Control"] = f"public, max-age={CACHE_SECONDS}"
    response["X-Content-Type-Options"] = "nosniff"
    return response
