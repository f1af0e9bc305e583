from __future__ import annotations

from django.urls import URLPattern, URLResolver, include, path, re_path

from restapi import errors
from restapi.views import ApiNotFoundView

# JSON for errors under /api/ that Django answers itself; its usual pages elsewhere.
handler400 = errors.handler400
handler403 = errors.handler403
handler404 = errors.handler404
handler500 = errors.handler500

urlpatterns: list[URLPattern | URLResolver] = [
    path("api/v1/", include("restapi.urls")),
    path("git/", include("gitserver.urls")),
    path("v2/", include("registry.urls")),  # image pulls (OCI distribution, read-only)
    # Anything else under /api/ answers a JSON 404, never an HTML page.
    re_path(r"^api/", ApiNotFoundView.as_view()),
]

# The dashboard, at the site root (last, so the API and git prefixes above win).
urlpatterns.append(path("", include("web.urls")))
