"""The container plan: a pure function of spec and image config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runtime.container import DEFAULT_PATH, Paths, PlanError, plan, read_passwd
from runtime.spec import ContainerSpec


def spec(**over: Any) -> ContainerSpec:
    d: dict[str, Any] = {"id": "web1-1", "app": "web1", "release": 2, "process_type": "web", "image": "x"}
    d.update(over)
    return ContainerSpec.from_dict(d)


IMAGE = {
    "config": {
        "Env": ["PATH=/app/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
        "Entrypoint": ["/cnb/launcher"],
        "Cmd": ["web"],
        "WorkingDir": "/app",
        "User": "1001:1002",
    }
}


def test_it_runs_the_images_entrypoint_and_command_without_a_spec_command() -> None:
    p = plan(spec(), IMAGE)
    assert p.argv == ("/cnb/launcher", "web")
    assert (p.uid, p.gid, p.cwd, p.hostname) == (1001, 1002, "/app", "web1-1")


def test_the_spec_command_replaces_entrypoint_and_command() -> None:
    assert plan(spec(command=["python", "worker.py"]), IMAGE).argv == ("python", "worker.py")


def test_the_spec_env_overrides_the_images_and_port_is_set() -> None:
    p = plan(spec(env={"LANG": "en_US.UTF-8", "SECRET": "s"}, port=5000), IMAGE)
    assert p.env["LANG"] == "en_US.UTF-8" and p.env["SECRET"] == "s"
    assert p.env["PORT"] == "5000" and p.env["PATH"] == "/app/bin:/usr/bin:/bin"
    assert p.env["HOME"] == "/app"


def test_it_accepts_the_bare_config_part_and_fills_in_defaults() -> None:
    p = plan(spec(command=["sh"]), {"Env": []})
    assert p.env["PATH"] == DEFAULT_PATH and (p.uid, p.gid, p.cwd) == (1000, 1000, "/")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"User": "0"}, "run as root"),
        ({"User": "root"}, "is not in its /etc/passwd"),
        ({"User": "1000:0"}, "run as root"),
        ({"User": "1000:staff"}, "must be numeric"),
        ({"WorkingDir": "app"}, "not a clean absolute path"),
        ({"WorkingDir": "/app/../etc"}, "not a clean absolute path"),
        ({"Cmd": "python app.py"}, "list of strings"),
        ({"Cmd": []}, "nothing to run"),
    ],
)
def test_it_refuses_what_cannot_run_safely(config: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan(spec(), {"config": {"Cmd": ["run"], **config}})


def test_it_finds_a_named_user_in_the_topmost_layers_passwd(tmp_path: Path) -> None:
    low, high = tmp_path / "low", tmp_path / "high"
    for layer, uid in ((low, 2000), (high, 3000)):
        (layer / "etc").mkdir(parents=True)
        (layer / "etc" / "passwd").write_text(f"root:x:0:0::/root:/bin/sh\napp:x:{uid}:{uid}::/app:/bin/sh\n")
    users = read_passwd([low, high])
    assert users["app"] == (3000, 3000)
    p = plan(spec(), {"config": {"User": "app", "Cmd": ["run"]}}, users)
    assert (p.uid, p.gid) == (3000, 3000)
    with pytest.raises(PlanError, match="run as root"):
        plan(spec(), {"config": {"User": "root", "Cmd": ["run"]}}, users)


def test_it_tells_the_init_every_layer_bottom_first_and_every_cgroup(tmp_path: Path) -> None:
    p = plan(spec(command=["true"]), IMAGE)
    args = p.init_args(Path("/bin/init"), Paths(tmp_path / "c"), [Path("/l/1"), Path("/l/2")],
                       [Path("/cg/a/cgroup.procs")], 1024)
    assert args[:2] == ["/bin/init", "run"]
    assert args[args.index("--lower") + 1] == "/l/1"
    assert args.count("--lower") == 2 and args.count("--cgroup") == 1
    assert args[-2:] == ["--", "true"]
    assert args[args.index("--uid") + 1] == "1001"
