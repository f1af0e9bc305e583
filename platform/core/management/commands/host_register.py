"""`manage.py host_register NAME --address A`: register an app host and print its agent token.

Provisioning (ansible/roles/apphost) runs it on the controller once per host and keeps the
token on the host; a host already registered is refused, so a token is never shown twice.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.actions import host_register
from core.errors import ActionError


def _label(raw: str) -> tuple[str, str]:
    key, sep, value = raw.partition("=")
    if not sep or not key:
        raise CommandError(f"--label {raw!r}: write it as key=value")
    return key, value


class Command(BaseCommand):
    help = "Register an app host for its agent; print the host's token (alone on stdout)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--address", required=True, help="the host's IPv4 address")
        parser.add_argument("--memory-mb", type=int, required=True)
        parser.add_argument("--cpus", type=int, required=True)
        parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")

    def handle(self, *args: Any, **options: Any) -> None:
        admin = get_user_model().objects.filter(is_staff=True).order_by("pk").first()
        if admin is None:
            raise CommandError("no staff user to register the host with: create one first "
                               "(manage.py user_create NAME --staff)")
        labels = dict(_label(raw) for raw in options["label"])
        try:
            _host, token = host_register(
                actor=admin, name=options["name"], address=options["address"],
                memory_mb=options["memory_mb"], cpus=options["cpus"], labels=labels,
            )
        except ActionError as exc:
            raise CommandError(exc.message) from None
        self.stderr.write(f"Registered host {options['name']}.")
        self.stdout.write(token)
