"""A failed release's last output lines come from its own container: during a roll-out the old
release's `web.1` writes under the same tag, and the agent's log shipper (the real one, over log
files laid out as the runtime's init writes them, into the real redis-server) marks each line
with the release of the container that wrote it."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from core.models import Container, ReleaseStatus
from runtime.agent.logship import MARKER_KEY, LogShipper, LogShipSettings
from tests.scheduler.conftest import containers

pytestmark = pytest.mark.django_db


def lay_out(root: Path, c: Container) -> Path:
    """The container's directory as the runtime daemon keeps it (its spec in state.json)."""
    d = root / c.id
    d.mkdir(parents=True)
    spec = {"id": c.id, "app": c.app.name, "process_type": c.type, "release": c.release.version,
            "labels": {"paas.process": c.name}}
    (d / "state.json").write_text(json.dumps({"spec": spec, "state": "running"}))
    return d


def write(d: Path, line: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with open(d / "container.log", "ab") as f:
        f.write(f"{stamp} stdout {line}\n".encode())


def test_it_keeps_the_old_releases_lines_of_the_same_container_name_out_of_a_failed_releases_log(
        app, hosts, agents, run, deploy, r: redis.Redis, tmp_path: Path) -> None:
    host = f"logs-{secrets.token_hex(3)}"
    try:
        run(app)
        (old,) = containers(app)
        Container.objects.filter(pk=old.pk).update(state="ready", address="10.9.0.6:5000",
                                                   ready_at=old.created_at)
        run(app)
        v2 = deploy(app)
        run(app)
        (new,) = [c for c in containers(app) if c.release_id == v2.pk]
        assert (old.name, new.name) == ("web.1", "web.1")
        old_dir, new_dir = lay_out(tmp_path / "containers", old), lay_out(tmp_path / "containers", new)
        for i in range(3):
            write(old_dir, f"old release serving request {i}")
            write(new_dir, f"new release booting step {i}")
        write(new_dir, "KeyError: 'DATABASE_URL'")
        shipper = LogShipper(tmp_path / "containers", tmp_path / "logship.json", r, host,
                             LogShipSettings(poll_s=0.01))
        assert shipper.step() == 7
        Container.objects.filter(pk=new.pk).update(
            state="failed", message="not ready before its deadline",
            finished_at=datetime.now(UTC))
        run(app)
        v2.refresh_from_db()
        assert v2.status == ReleaseStatus.FAILED
        assert v2.status_log.splitlines() == [
            "new release booting step 0", "new release booting step 1",
            "new release booting step 2", "KeyError: 'DATABASE_URL'"]
        # The stream's other readers see the same lines as before: time, tag, line.
        entries = r.xrange(f"paas:logs:{app.name}")
        assert {f[b"tag"] for _id, f in entries if b"release" in f} == {b"app[web.1]"}
        assert {f[b"release"] for _id, f in entries if b"release" in f} == {
            str(old.release.version).encode(), str(v2.version).encode()}
    finally:
        r.delete(f"paas:logs:{app.name}", MARKER_KEY.format(host=host))
