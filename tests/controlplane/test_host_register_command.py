"""`manage.py host_register`, which provisioning runs on the controller for each app host."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from core import actions
from core.models import Host
from core.models.api_token import token_digest


def _register(*args: str) -> str:
    out, err = StringIO(), StringIO()
    call_command("host_register", *args, stdout=out, stderr=err)
    return out.getvalue().strip()


@pytest.mark.django_db
def test_it_registers_a_host_and_prints_only_its_token() -> None:
    actions.user_create(actor=None, username="ops", is_staff=True)
    token = _register("paas-2", "--address", "192.0.2.11", "--memory-mb", "8192", "--cpus", "4",
                      "--label", "region=eu", "--label", "disk=ssd")
    host = Host.objects.get(name="paas-2")
    assert token.startswith("paashost_") and "\n" not in token
    assert host.token_digest == token_digest(token)
    assert (host.address, host.memory_mb, host.cpus) == ("192.0.2.11", 8192, 4)
    assert host.labels == {"region": "eu", "disk": "ssd"}


@pytest.mark.django_db
def test_it_refuses_a_second_registration_without_showing_a_token() -> None:
    actions.user_create(actor=None, username="ops", is_staff=True)
    _register("paas-2", "--address", "192.0.2.11", "--memory-mb", "512", "--cpus", "1")
    with pytest.raises(CommandError, match="already registered"):
        _register("paas-2", "--address", "192.0.2.11", "--memory-mb", "512", "--cpus", "1")
    assert Host.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("args, message", [
    (["--address", "not-an-ip", "--memory-mb", "512", "--cpus", "1"], "address"),
    (["--address", "192.0.2.11", "--memory-mb", "0", "--cpus", "1"], "memory_mb"),
    (["--address", "192.0.2.11", "--memory-mb", "512", "--cpus", "1", "--label", "oops"], "key=value"),
])
def test_it_explains_bad_input_and_writes_nothing(args: list[str], message: str) -> None:
    actions.user_create(actor=None, username="ops", is_staff=True)
    with pytest.raises(CommandError, match=message):
        _register("paas-2", *args)
    assert not Host.objects.exists()


@pytest.mark.django_db
def test_it_needs_a_staff_user_first() -> None:
    with pytest.raises(CommandError, match="no staff user"):
        _register("paas-2", "--address", "192.0.2.11", "--memory-mb", "512", "--cpus", "1")
