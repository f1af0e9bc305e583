from __future__ import annotations

from django.apps import AppConfig


class GitServerConfig(AppConfig):
    name = "gitserver"
    verbose_name = "Git receiver"
