from __future__ import annotations

from django.urls import re_path

from gitserver import views

app_name = "gitserver"

urlpatterns = [
    re_path(r"^(?P<app>[^/]+)\.git/info/refs$", views.info_refs, name="info-refs"),
    re_path(r"^(?P<app>[^/]+)\.git/(?P<service>git-upload-pack|git-receive-pack)$",
            views.service, name="service"),
]
