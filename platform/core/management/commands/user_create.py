"""`manage.py user_create NAME`: create a user (and their personal team) from the shell."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from core.actions import token_create, user_create
from core.errors import ActionError


class Command(BaseCommand):
    help = "Create a user with their personal team; optionally print a new API token for them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--password-stdin", action="store_true",
            help="Read the password from the first line of stdin (else: token login only).",
        )
        parser.add_argument("--staff", action="store_true", help="Make the user staff.")
        parser.add_argument(
            "--token", action="store_true",
            help="Create an API token for the user and print it (alone on the last line).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        password: str | None = None
        if options["password_stdin"]:
            password = sys.stdin.readline().rstrip("\r\n")
            if not password:
                raise CommandError("--password-stdin: stdin had no password on its first line.")
        try:
            with transaction.atomic():
                user = user_create(
                    actor=None, username=options["username"], email=options["email"],
                    password=password, is_staff=options["staff"],
                )
                token = None
                if options["token"]:
                    _row, token = token_create(actor=user, description="created by user_create")
        except ActionError as exc:
            details = [f"{field}: {' '.join(problems)}" for field, problems in exc.fields.items()]
            message = exc.message if not details or exc.message in details[0] else (
                f"{exc.message} ({'; '.join(details)})"
            )
            raise CommandError(message) from None
        self.stderr.write(f"Created user {user.get_username()}.")
        if token is not None:
            self.stdout.write(token)
