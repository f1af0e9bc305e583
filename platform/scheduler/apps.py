from __future__ import annotations

from django.apps import AppConfig


class SchedulerConfig(AppConfig):
    name = "scheduler"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Put the scheduler's periodic tasks on Celery beat's schedule."""
        from controlplane.celery import app
        from scheduler.conf import SchedulerSettings

        conf = SchedulerSettings.from_env()
        schedule = dict(app.conf.beat_schedule or {})
        schedule["scheduler.ingest"] = {"task": "scheduler.ingest", "schedule": float(conf.tick_s)}
        schedule["scheduler.tick"] = {"task": "scheduler.tick", "schedule": 30.0}
        app.conf.beat_schedule = schedule
