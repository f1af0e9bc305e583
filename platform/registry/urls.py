from __future__ import annotations

from django.urls import re_path

from registry import views

app_name = "registry"

_NAME = r"(?P<app>[a-z0-9][a-z0-9-]{0,62})"

urlpatterns = [
    re_path(r"^$", views.base, name="base"),
    re_path(rf"^{_NAME}/manifests/(?P<reference>[^/]+)$", views.manifest, name="manifest"),
    re_path(rf"^{_NAME}/blobs/(?P<digest>[^/]+)$", views.blob, name="blob"),
    re_path(r"^.*$", views.unknown, name="unknown"),
]
