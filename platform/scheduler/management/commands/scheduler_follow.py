"""`manage.py scheduler_follow`: follow the agents' reports (Procfile process `scheduler`)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand

from scheduler.follow import follow


class Command(BaseCommand):
    help = "Follow the agents' heartbeats and container events; route and reconcile as they come."

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.stdout.write("following agent reports")
        follow(stop)
