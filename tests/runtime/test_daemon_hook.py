"""The daemon's core in-process, with a network hook that is not the host's own HostNetwork."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from runtime import cgroups
from runtime.daemon import Runtime
from runtime.images import ImageStore
from runtime.tinyimage import build_tiny_image

pytestmark = pytest.mark.root


class RecordingHook:
    """Attach by looking: record which network namespace the daemon hands over."""

    def __init__(self) -> None:
        self.attached: list[tuple[str, str, bool]] = []
        self.detached: list[str] = []

    def attach(self, container_id: str, pid: int, nat: bool) -> Any:
        self.attached.append((container_id, os.readlink(f"/proc/{pid}/ns/net"), nat))

        class Att:
            ip = "192.0.2.7"

        return Att()

    def detach(self, container_id: str) -> None:
        self.detached.append(container_id)


def test_it_hands_a_network_hook_the_containers_namespace_before_the_app_starts(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    image = store.resolve(build_tiny_image(store))
    hook = RecordingHook()
    cid = f"t{secrets.token_hex(4)}-hook"

    async def scenario() -> dict[str, Any]:
        rt = Runtime(tmp_path / "rt", network=hook)
        spec = {
            "id": cid, "app": "test", "release": 1, "process_type": "web", "image": image.digest,
            "command": ["sh", "-c", "readlink /proc/self/ns/net"], "memory_mb": 32, "pids_limit": 16,
            "network": {"mode": "bridge", "nat": True},
        }
        await rt.create(spec, [str(p) for p in image.layers], image.config)
        rec = await rt.start(cid)
        assert rec.ip == "192.0.2.7"
        await rt.wait(cid)
        await asyncio.sleep(0.2)  # the release runs off the event loop
        out = [item["line"] async for item in rt.logs(cid, 10, False)]
        rt.close()
        return {"state": rec.state, "exit_code": rec.exit_code, "out": out}

    try:
        result = asyncio.run(scenario())
    finally:
        cg = cgroups.for_container(cid)
        if cg.procs_files()[0].exists():  # only if the test failed before the daemon's cleanup
            cgroups.kill_all(cg)
            cg.remove()
    assert result["state"] == "exited" and result["exit_code"] == 0
    assert len(hook.attached) == 1
    attached_id, netns, nat = hook.attached[0]
    assert (attached_id, nat) == (cid, True)
    assert netns != os.readlink("/proc/self/ns/net")
    assert result["out"] == [netns]  # the app ran in the namespace the hook was given
    assert hook.detached == [cid]
