"""The ansible/ playbooks: they parse, and the units and settings they write are what the
platform's processes need (the same programs as the Procfile, accepted by systemd-analyze)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
ROLES = ("controller", "apphost", "router")


def _ansible_env() -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": "/tmp",
        "ANSIBLE_HOME": "/tmp/.paas-test-ansible",
    }


def test_it_passes_the_syntax_check() -> None:
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), "--syntax-check", "-i", "inventory.example.ini", "site.yml"],
        cwd=ANSIBLE, env=_ansible_env(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the roles' unit and settings templates against this machine into a temp dir."""
    tmp = tmp_path_factory.mktemp("ansible")
    (tmp / "inventory.ini").write_text(
        "[controllers]\n"
        f"paas-1 ansible_connection=local ansible_python_interpreter={sys.executable}"
        " paas_host_address=192.0.2.10\n"
        "[apphosts]\npaas-1 paas_host_subnet=10.88.7.0/24\n"
        "[paas:children]\ncontrollers\napphosts\n"
    )
    overrides = {
        "paas_systemd_dir": str(tmp / "units"),
        "paas_etc_dir": str(tmp / "etc"),
        "paas_credentials_dir": str(tmp / "credentials"),
        "paas_units_start": False,
        "paas_venv": sys.prefix,
        "paas_current": str(REPO),
    }
    (tmp / "overrides.json").write_text(json.dumps(overrides))
    vars_files = [str(ANSIBLE / "group_vars" / "all.yml")] + [
        str(ANSIBLE / "roles" / role / "defaults" / "main.yml") for role in ROLES
    ]
    (tmp / "render.yml").write_text(json.dumps([{
        "hosts": "paas",
        "gather_facts": False,
        "vars_files": vars_files,
        "tasks": [
            {"ansible.builtin.file": {"path": "{{ item }}", "state": "directory", "mode": "0755"},
             "loop": ["{{ paas_systemd_dir }}", "{{ paas_etc_dir }}"]},
            {"ansible.builtin.template": {
                "src": str(ANSIBLE / "roles/common/templates/paas.env.j2"),
                "dest": "{{ paas_etc_dir }}/paas.env", "mode": "0600"}},
            {"ansible.builtin.include_role": {"name": "common", "tasks_from": "units"},
             "vars": {"paas_units":
                      "{{ paas_controller_units + paas_apphost_units + paas_router_units }}"}},
        ],
    }]))
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "inventory.ini", "-e", "@overrides.json", "render.yml"],
        cwd=tmp, env=_ansible_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp


def _exec_start(unit: Path) -> list[str]:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_it_writes_units_that_systemd_accepts(rendered: Path) -> None:
    units = sorted((rendered / "units").glob("*.service"))
    assert [u.stem for u in units] == [
        "paas-agent", "paas-beat", "paas-router", "paas-runtime", "paas-scheduler", "paas-web",
        "paas-worker",
    ]
    done = subprocess.run(["systemd-analyze", "verify", *map(str, units)],
                          capture_output=True, text=True, timeout=120)
    problems = [line for line in done.stderr.splitlines() if "paas-" in line]
    assert done.returncode == 0 and not problems, done.stderr


def test_it_runs_the_same_programs_as_the_procfile(rendered: Path) -> None:
    """Every Procfile process but redis (the controller's Debian service) has a unit starting
    the same program with the same leading arguments."""
    procfile = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        m = re.match(r"^([a-z]+): (.*)$", line)
        if m:
            procfile[m.group(1)] = m.group(2)
    procfile.pop("redis")
    for name, command in procfile.items():
        tail = command.split("exec ", 1)[1]
        want = shlex.split(tail)[:3]
        got = _exec_start(rendered / "units" / f"paas-{name}.service")
        assert Path(got[0]).name == want[0] and got[1:3] == want[1:3], (name, got, want)
        assert Path(got[0]).is_file()


def test_it_runs_root_only_what_needs_root(rendered: Path) -> None:
    users = {
        u.stem: re.search(r"^User=(.*)$", u.read_text(), re.M).group(1)  # type: ignore[union-attr]
        for u in (rendered / "units").glob("*.service")
    }
    assert {name for name, user in users.items() if user == "root"} == {"paas-runtime", "paas-agent"}
    agent = (rendered / "units" / "paas-agent.service").read_text()
    assert "host.env" in agent
    assert "KillMode=process" in (rendered / "units" / "paas-runtime.service").read_text()


def test_it_writes_settings_every_documented_variable(rendered: Path) -> None:
    env = dict(
        line.split("=", 1) for line in (rendered / "etc" / "paas.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env["REDIS_URL"].startswith("redis://:") and env["REDIS_URL"].endswith("@192.0.2.10:6379/0")
    assert env["DATABASE_URL"].startswith("postgres://paas:")
    assert env["PAAS_HOST_NAME"] == "paas-1" and env["PAAS_HOST_SUBNET"] == "10.88.7.0/24"
    assert len(env["PAAS_SECRET_KEY"]) == 50
    # The secrets are generated once and kept: a second read gives the same ones.
    assert (rendered / "credentials" / "secret_key").read_text().strip() == env["PAAS_SECRET_KEY"]
    readme = (REPO / "README.md").read_text()
    undocumented = [k for k in env if k.startswith("PAAS_") and f"`{k}`" not in readme]
    assert undocumented == []
