"""Container: what an agent last reported about one container (observed state)."""

from __future__ import annotations

from django.db import models


class ContainerState(models.TextChoices):
    STARTING = "starting"
    RUNNING = "running"
    READY = "ready"
    EXITED = "exited"
    FAILED = "failed"
    OOM = "oom"


class Container(models.Model):
    id = models.CharField(max_length=64, primary_key=True)
    app = models.ForeignKey("core.App", on_delete=models.CASCADE, related_name="containers")
    release = models.ForeignKey("core.Release", on_delete=models.CASCADE, related_name="containers")
    type = models.CharField(max_length=30)
    number = models.PositiveSmallIntegerField()
    host = models.ForeignKey(
        "core.Host", on_delete=models.SET_NULL, null=True, blank=True, related_name="containers"
    )
    state = models.CharField(
        max_length=10, choices=ContainerState.choices, default=ContainerState.STARTING
    )
    address = models.CharField(max_length=64, blank=True, help_text="ip:port")
    exit_code = models.IntegerField(null=True, blank=True)
    restarts = models.PositiveIntegerField(
        default=0, help_text="Restarts after crashes in a row (back to 0 once it stays up)."
    )
    # How the container this one replaced ended (after a crash): its state and exit code.
    last_exit_state = models.CharField(max_length=10, blank=True)
    last_exit_code = models.IntegerField(null=True, blank=True)
    message = models.CharField(
        max_length=500, blank=True, help_text="The agent's word on why it failed, if any."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The host's last heartbeat: resident memory and CPU (% of one core) while it runs.
    memory_bytes = models.BigIntegerField(null=True, blank=True)
    cpu_percent = models.FloatField(null=True, blank=True)
    # The readiness check its spec was sent with (web containers). NULL: no check, or a row
    # from before these were recorded; then its formation's current check stands in.
    readiness_type = models.CharField(max_length=4, null=True, blank=True, help_text="tcp or http")
    readiness_path = models.CharField(max_length=200, null=True, blank=True)
    readiness_timeout_s = models.PositiveIntegerField(null=True, blank=True)
    readiness_asked_at = models.DateTimeField(
        null=True, blank=True, help_text="When the control plane sent its check to the agent again."
    )

    class Meta:
        ordering = ["app_id", "type", "number"]

    def __str__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        """`web.1`"""
        return f"{self.type}.{self.number}"
