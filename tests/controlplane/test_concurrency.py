"""Concurrent writers against a real PostgreSQL server: release numbers stay gapless and unique."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection

from core import actions
from core.models import Release

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_it_numbers_concurrent_config_changes_without_gaps_or_clashes(acme: Any, web1: Any) -> None:
    assert connection.vendor == "postgresql"
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def change(i: int) -> None:
        try:
            start.wait()
            actions.config_set(actor=acme.member, app=web1, values={f"K{i}": str(i)})
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=change, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(Release.objects.filter(app=web1).values_list("version", flat=True)) == list(range(1, 8))
    assert web1.config() == {f"K{i}": str(i) for i in range(6)}
