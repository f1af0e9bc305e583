from __future__ import annotations

from django.apps import AppConfig


class GitServerConfig(AppConfig):
    name = "gitserver"
    verbose_name = "Git receiver"

    def ready(self) -> None:
        # A wrong value fails at start-up with the variable's name, not in the middle of a push.
        from gitserver import deploy, repos

        repos.max_repo_bytes()
        deploy.build_settings()
        deploy.executor_setting()
        deploy.container_limits()
        deploy.build_ca_certs()
