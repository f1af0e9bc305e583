"""The Celery app shared by the worker, beat and the control plane's enqueueing code."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("paas")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
