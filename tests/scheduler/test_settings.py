"""The scheduler's settings: PAAS_STOP_DRAIN_S, the pause between a route change and a stop."""

from __future__ import annotations

import base64
import json
from datetime import datetime

import pytest
import redis

from controlplane.env import ConfigError
from scheduler import dispatch
from scheduler.conf import SchedulerSettings


def test_it_drains_two_seconds_before_a_stop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAAS_STOP_DRAIN_S", raising=False)
    assert SchedulerSettings.from_env().stop_drain_s == 2.0


@pytest.mark.parametrize(("raw", "seconds"), [("5", 5.0), ("0.25", 0.25), ("0", 0.0), (" 3 ", 3.0), ("", 2.0)])
def test_it_reads_the_drain_from_PAAS_STOP_DRAIN_S(monkeypatch: pytest.MonkeyPatch, raw: str, seconds: float) -> None:
    monkeypatch.setenv("PAAS_STOP_DRAIN_S", raw)
    assert SchedulerSettings.from_env().stop_drain_s == seconds


@pytest.mark.parametrize(("raw", "message"), [
    ("-1", "PAAS_STOP_DRAIN_S must be 0 or more seconds, not '-1'"),
    ("soon", "PAAS_STOP_DRAIN_S must be a number of seconds, like 2 or 0.5, not 'soon'"),
    ("2s", "PAAS_STOP_DRAIN_S must be a number of seconds, like 2 or 0.5, not '2s'"),
    ("nan", "PAAS_STOP_DRAIN_S must be 0 or more seconds, not 'nan'"),
    ("inf", "PAAS_STOP_DRAIN_S must be 0 or more seconds, not 'inf'"),
])
def test_it_refuses_a_drain_that_is_negative_or_not_a_number(
        monkeypatch: pytest.MonkeyPatch, raw: str, message: str) -> None:
    monkeypatch.setenv("PAAS_STOP_DRAIN_S", raw)
    with pytest.raises(ConfigError) as caught:
        SchedulerSettings.from_env()
    assert str(caught.value) == message


def _stop_eta(r: redis.Redis, queue: str) -> datetime:
    (raw,) = r.lrange(queue, 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == "agent.container_stop"
    assert json.loads(base64.b64decode(message["body"]))[1] == {"container_id": "x", "timeout_s": 5}
    return datetime.fromisoformat(message["headers"]["eta"])


@pytest.mark.parametrize("drain", ["30", "0.5"])
def test_it_holds_a_stop_on_the_real_broker_for_the_drain(
        r: redis.Redis, monkeypatch: pytest.MonkeyPatch, drain: str) -> None:
    queue = "host.h-test-drain"
    r.delete(queue)
    monkeypatch.setenv("PAAS_STOP_DRAIN_S", drain)
    try:
        before = datetime.now().astimezone()
        dispatch.CeleryDispatcher().stop("h-test-drain", "x", 5)
        after = datetime.now().astimezone()
        eta = _stop_eta(r, queue)
        held = float(drain)
        assert before.timestamp() + held <= eta.timestamp() <= after.timestamp() + held
    finally:
        r.delete(queue)
