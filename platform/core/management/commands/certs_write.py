"""`manage.py certs_write [--dir DIR]`: write the router's file of every certificate.

The control plane writes a certificate's file into its own data dir when the certificate is
added or replaced. Run this for a router on another host (with that host's data dir, or copy
the directory), or after restoring the database. Files of other names, `default.pem` among
them, are left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.actions.certs import certs_dir, router_files_write
from core.crypto import DecryptionError


class Command(BaseCommand):
    help = "Write every custom domain's certificate where the router reads it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dir", help="the certificates directory (default: "
                                          "PAAS_DATA_DIR/router/certs)")

    def handle(self, *args: Any, **options: Any) -> None:
        directory = Path(options["dir"]) if options["dir"] else certs_dir()
        try:
            written = router_files_write(directory)
        except OSError as exc:
            raise CommandError(f"cannot write certificates to {directory}: "
                               f"{exc.strerror or exc}") from None
        except DecryptionError:
            raise CommandError("the stored private keys do not decrypt with this SECRET_KEY: run "
                               "it with the control plane's PAAS_SECRET_KEY") from None
        self.stdout.write(f"Wrote {len(written)} certificate file(s) to {directory}.")
