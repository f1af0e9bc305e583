"""Host bind mounts in a container spec: only on the daemon's socket, strictly checked, and
bound below the container's root with nosuid, nodev and read-only where asked."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from runtime.client import DaemonError
from runtime.spec import ContainerSpec, SpecError
from tests.runtime.daemon_fixtures import Daemon, Image, daemon_fixture, rt_fixture, tiny_fixture  # noqa: F401

BASE: dict[str, Any] = {"id": "c1", "app": "web", "release": 1, "process_type": "web", "image": "sha256:ab"}


def with_mounts(*mounts: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, "mounts": list(mounts)}


def test_it_refuses_host_mounts_in_a_spec_from_the_control_plane() -> None:
    with pytest.raises(SpecError, match="mounts: host bind mounts are not allowed in this spec"):
        ContainerSpec.from_dict(with_mounts({"source": "/srv", "target": "/srv"}))


def test_it_reads_mounts_when_allowed_and_writes_them_back() -> None:
    spec = ContainerSpec.from_dict(
        with_mounts({"source": "/srv/a", "target": "/tmp/a", "readonly": False},
                    {"source": "/srv/b", "target": "/tmp/b"}),
        allow_mounts=True,
    )
    assert [(m.source, m.target, m.readonly) for m in spec.mounts] == [
        ("/srv/a", "/tmp/a", False), ("/srv/b", "/tmp/b", True)]
    assert ContainerSpec.from_dict(spec.to_dict(), allow_mounts=True) == spec


def test_it_leaves_mounts_out_of_a_plain_specs_dict() -> None:
    assert "mounts" not in ContainerSpec.from_dict(BASE).to_dict()


@pytest.mark.parametrize(("mount", "message"), [
    ({"source": "srv", "target": "/x"}, "mounts[0].source: must be an absolute path"),
    ({"source": "/srv/../etc", "target": "/x"}, "must be a clean path"),
    ({"source": "/srv", "target": "/tmp//x"}, "must be a clean path"),
    ({"source": "/srv", "target": "/tmp/x/"}, "must be a clean path"),
    ({"source": "/srv", "target": "/"}, "is reserved for the container's own file systems"),
    ({"source": "/srv", "target": "/proc/sys"}, "is reserved for the container's own file systems"),
    ({"source": "/srv", "target": "/dev"}, "is reserved for the container's own file systems"),
    ({"source": "/s:rv", "target": "/x"}, "must not contain ':'"),
    ({"source": "/srv", "target": "/x", "readonly": "yes"}, "mounts[0].readonly: must be true or false"),
    ({"source": "/srv", "target": "/x", "propagation": "shared"}, "unknown field(s): propagation"),
    ({"target": "/x"}, "missing required field source"),
])
def test_it_refuses_a_bad_mount_with_the_reason(mount: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as err:
        ContainerSpec.from_dict(with_mounts(mount), allow_mounts=True)
    assert message in str(err.value)


def test_it_refuses_two_mounts_on_one_target() -> None:
    with pytest.raises(SpecError, match="two mounts share one target"):
        ContainerSpec.from_dict(
            with_mounts({"source": "/a", "target": "/x"}, {"source": "/b", "target": "/x"}), allow_mounts=True)


# -- on a real daemon --------------------------------------------------------------------------


def host_dir(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    return d


@pytest.mark.root
def test_it_binds_a_read_write_and_a_read_only_directory(rt: Daemon, tiny: Image, tmp_path: Path) -> None:
    rw, ro = host_dir(tmp_path, "rw"), host_dir(tmp_path, "ro")
    rw.chmod(0o777)
    (ro / "given").write_text("from the host\n")
    script = (
        "echo made > /data/rw/made; cat /data/ro/given; "
        "echo x > /data/ro/nope 2>/dev/null || echo refused; "
        "grep ' /data/' /proc/self/mountinfo"
    )
    c = rt.run(tiny, ["sh", "-c", script], mounts=[
        {"source": str(rw), "target": "/data/rw", "readonly": False},
        {"source": str(ro), "target": "/data/ro", "readonly": True},
    ])
    assert rt.wait(c["id"])["exit_code"] == 0
    out = rt.output(c["id"]).splitlines()
    assert (rw / "made").read_text() == "made\n"
    assert not (ro / "nope").exists()
    assert out[:2] == ["from the host", "refused"]
    [rw_line] = [line for line in out if " /data/rw " in line]
    [ro_line] = [line for line in out if " /data/ro " in line]
    for line in (rw_line, ro_line):
        options = line.split()[5].split(",")
        assert "nosuid" in options and "nodev" in options
    assert "ro" in ro_line.split()[5].split(",")
    assert "rw" in rw_line.split()[5].split(",")


@pytest.mark.root
def test_it_never_follows_a_symlink_in_the_image_out_of_the_root(
    rt: Daemon, tiny: Image, tmp_path: Path
) -> None:
    target = host_dir(tmp_path, "victim")
    source = host_dir(tmp_path, "source")
    layer = host_dir(tmp_path, "evil-layer")
    (layer / "evil").symlink_to(target)  # an image whose /evil points at a host path
    spec = rt.spec(tiny, ["true"], mounts=[{"source": str(source), "target": "/evil/sub"}])
    c = rt.client.create(spec, [*tiny.layers, layer], tiny.config)
    with pytest.raises(DaemonError) as err:
        rt.client.start(c["id"])
    assert "/evil/sub: evil is not a directory in the container" in str(err.value)
    assert list(target.iterdir()) == []


@pytest.mark.root
def test_it_refuses_a_source_that_is_a_symlink_or_missing(rt: Daemon, tiny: Image, tmp_path: Path) -> None:
    real = host_dir(tmp_path, "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    for source in (link, tmp_path / f"missing-{secrets.token_hex(3)}"):
        with pytest.raises(DaemonError) as err:
            rt.client.create(rt.spec(tiny, ["true"], mounts=[{"source": str(source), "target": "/x"}]),
                             tiny.layers, tiny.config)
        assert f"the source {str(source)!r} is not a directory (without symlinks) on this host" in str(err.value)
