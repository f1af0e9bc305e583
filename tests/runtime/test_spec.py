from __future__ import annotations

from typing import Any

import pytest

from runtime.spec import ContainerSpec, Network, Readiness, SpecError


def minimal(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": "web1-v3-web-1",
        "app": "web1",
        "release": 3,
        "process_type": "web",
        "image": "sha256:" + "a" * 64,
    }
    d.update(over)
    return d


def test_it_builds_a_spec_with_defaults_from_the_required_fields() -> None:
    spec = ContainerSpec.from_dict(minimal())
    assert spec.memory_mb == 512 and spec.pids_limit == 512 and spec.cpu_quota is None
    assert spec.network == Network(mode="bridge", nat=True)
    assert spec.command == () and spec.readiness is None


def test_it_round_trips_through_a_dict() -> None:
    spec = ContainerSpec.from_dict(
        minimal(
            command=["python", "app.py"],
            env={"PORT": "5000", "DEBUG": ""},
            port=5000,
            memory_mb=64,
            cpu_shares=512,
            cpu_quota=0.5,
            pids_limit=64,
            labels={"paas/app": "web1"},
            readiness={"type": "http", "path": "/health", "timeout_s": 5},
            network={"mode": "none", "nat": False},
        )
    )
    assert ContainerSpec.from_dict(spec.to_dict()) == spec
    assert spec.readiness == Readiness(type="http", path="/health", timeout_s=5.0)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"colour": "red"}, "unknown field(s): colour"),
        ({"readiness": {"type": "tcp", "retries": 3}}, "readiness: unknown field(s): retries"),
        ({"network": {"nat": True, "vlan": 3}}, "network: unknown field(s): vlan"),
        ({"memory_mb": 0}, "memory_mb: 0 is out of range"),
        ({"memory_mb": 10**9}, "memory_mb: 1000000000 is out of range"),
        ({"memory_mb": "64"}, "memory_mb: must be an integer"),
        ({"memory_mb": True}, "memory_mb: must be an integer"),
        ({"pids_limit": -1}, "pids_limit: -1 is out of range"),
        ({"port": 70000}, "port: 70000 is out of range"),
        ({"cpu_quota": 0}, "cpu_quota: 0 is out of range"),
        ({"cpu_quota": float("nan")}, "cpu_quota: nan is out of range"),
        ({"cpu_shares": 1}, "cpu_shares: 1 is out of range"),
        ({"release": 0}, "release: 0 is out of range"),
        ({"id": "../../etc"}, "id: '../../etc' is not valid"),
        ({"id": "A" * 80}, "id:"),
        ({"app": "Web"}, "app: 'Web' is not valid"),
        ({"image": "has space"}, "image: 'has space' is not valid"),
        ({"command": "python app.py"}, "command: must be a list of strings"),
        ({"command": ["python", 3]}, "command[1]: must be a string"),
        ({"command": ["sh", "-c", "a\0b"]}, "command[2]: must not contain a NUL"),
        ({"env": {"1BAD": "x"}}, "env: '1BAD' is not a valid variable name"),
        ({"env": {"A=B": "x"}}, "env: 'A=B' is not a valid variable name"),
        ({"env": {"A": 1}}, "env.A: must be a string"),
        ({"labels": {"Bad Key": "x"}}, "labels: 'Bad Key' is not a valid label key"),
        ({"readiness": {"type": "udp"}}, "readiness.type: must be 'tcp' or 'http'"),
        ({"readiness": {"type": "http", "path": "health"}}, "readiness.path"),
        ({"network": {"nat": "yes"}}, "network.nat: must be true or false"),
        ({"network": {"mode": "host"}}, "network.mode: must be 'bridge' or 'none'"),
    ],
)
def test_it_refuses_unknown_and_out_of_range_fields_with_a_clear_message(
    over: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError) as exc:
        ContainerSpec.from_dict(minimal(**over))
    assert message in str(exc.value)


def test_it_names_every_missing_required_field() -> None:
    with pytest.raises(SpecError, match="missing required field\\(s\\): app, image, release"):
        ContainerSpec.from_dict({"id": "c1", "process_type": "web"})


def test_it_refuses_something_that_is_not_an_object() -> None:
    with pytest.raises(SpecError, match="spec: must be an object, not list"):
        ContainerSpec.from_dict([1, 2])
