"""The dashboard shows crash-looping containers, how the last one ended, and why a release failed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from core.models import Container, ContainerState
from tests.web.conftest import Acme, login, make_host, place_containers

pytestmark = pytest.mark.django_db


def test_it_shows_a_crash_looping_container_as_crashing_with_its_last_exit(
        client: Client, deployed: Acme) -> None:
    host = make_host("node-2", token_digest="digest-node-2")
    (looping,) = place_containers(deployed.app, host, [ContainerState.STARTING])
    Container.objects.filter(pk=looping.pk).update(
        number=3, restarts=4, last_exit_state="exited", last_exit_code=3)
    stable = deployed.app.containers.get(number=2, host__name="node-1")
    Container.objects.filter(pk=stable.pk).update(
        restarts=5, ready_at=timezone.now() - timedelta(minutes=10), last_exit_state="oom")
    page = login(client, deployed.viewer).get("/apps/shop/").content.decode()
    row = page[page.index('<span class="mono">web.3</span>'):]
    row = row[:row.index("</tr>")]
    assert "crashing" in row and "last exit: code 3" in row
    row2 = page[page.index('<span class="mono">web.2</span>'):]
    row2 = row2[:row2.index("</tr>")]
    assert ">up<" in row2 and "last exit: oom" in row2


def test_it_shows_why_a_release_failed_and_its_last_output(client: Client, deployed: Acme) -> None:
    release = deployed.app.current_release()
    release.status, release.status_reason = "failed", "web.1 exited with code 1 (3 times in a row)"
    release.status_log = "booting\n<script>alert(1)</script>"
    release.save(update_fields=["status", "status_reason", "status_log"])
    page = login(client, deployed.viewer).get("/apps/shop/releases/").content.decode()
    assert "web.1 exited with code 1 (3 times in a row)" in page
    assert "Last output" in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page
