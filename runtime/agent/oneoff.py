"""One-off containers (`paas run`, the release phase): run once, ship the output, then remove.

The agent runs the spec like any other container (through the runtime daemon), on a thread of
its own (`start_oneoff`), follows its log and writes each line, then how it ended, to a Redis
stream of its own:

    paas:run:<container id>   a stream per one-off (MAXLEN ~RUN_MAXLEN), entries in order:
        {"state": "starting"}                      the agent has the spec
        {"state": "running"}                       the container runs
        {"stream": "stdout"|"stderr", "line", "time"}   one per output line
        {"exit": "<code>" or "", "message", "time"} the last entry: the exit status
                                                   ("" when it never ran or was removed), and
                                                   why it ended when it was not its own exit
    expiring RUN_TTL_S after the exit entry.

A one-off is never restarted and never checked for readiness. Past its `timeout_s` it is
stopped (SIGTERM, SIGKILL after the stop grace). After its exit the container is removed, and
an `exited` container event goes to the events stream after the exit entry, so whoever reacts to
the event (the scheduler's release phase) finds the exit status already written.

A runtime daemon restart leaves the one-off running and ends its log stream: the agent follows
it again, from the first line not yet shipped. An agent stopped while a one-off runs leaves it
running too; when the agent starts again, `resume_oneoffs` follows it again the same way
(one-offs carry their time limit in the label `paas.oneoff.timeout_s`). If no agent comes back,
the control plane gives up on it after its time limit, and once it no longer expects it,
ingestion stops and removes it when a heartbeat lists it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import redis

from runtime.client import DaemonError, DaemonUnavailable
from runtime.spec import ID_RE

if TYPE_CHECKING:
    from runtime.agent.core import Agent

log = logging.getLogger("paas.agent")

RUN_STREAM = "paas:run:{id}"
TIMEOUT_LABEL = "paas.oneoff.timeout_s"  # on every one-off's spec: its time limit, in seconds
RUN_MAXLEN = 10_000
RUN_TTL_S = 3600
STOP_GRACE_S = 10.0


def run_stream(container_id: str) -> str:
    return RUN_STREAM.format(id=container_id)


class RunOutput:
    """Append to one one-off's stream; a Redis outage drops entries, never the run."""

    def __init__(self, client: redis.Redis[bytes], container_id: str, ttl_s: int) -> None:
        self.redis = client
        self.key = run_stream(container_id)
        self.ttl_s = ttl_s

    def add(self, fields: dict[str, str]) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(self.key, fields, maxlen=RUN_MAXLEN, approximate=True)
            pipe.expire(self.key, self.ttl_s)
            pipe.execute()
        except redis.RedisError as e:
            log.warning("could not write the output of %s: %s", self.key, e)

    def finish(self, code: int | None, message: str = "") -> None:
        self.ttl_s = RUN_TTL_S
        self.add({"exit": "" if code is None else str(code), "message": message,
                  "time": f"{time.time():.6f}"})


def start_oneoff(agent: Agent, raw_spec: object, timeout_s: float) -> dict[str, Any]:
    """Run a one-off on a thread of its own and return at once.

    A one-off may last an hour: it must not hold one of the agent's few task threads, which the
    stop that Ctrl-C sends, and the other containers' tasks, need.
    """
    cid = raw_spec.get("id") if isinstance(raw_spec, dict) else None
    name = f"oneoff-{cid}" if isinstance(cid, str) else "oneoff"
    threading.Thread(target=_quietly, args=(agent, raw_spec, timeout_s), name=name,
                     daemon=True).start()
    return {"ok": True, "id": cid if isinstance(cid, str) else "", "following": True}


def _quietly(agent: Agent, raw_spec: object, timeout_s: float) -> None:
    try:
        run_oneoff(agent, raw_spec, timeout_s)
    except Exception:  # a thread's exception would only reach stderr; log it with the id
        log.exception("the one-off %s failed", raw_spec.get("id") if isinstance(raw_spec, dict) else "?")


def run_oneoff(agent: Agent, raw_spec: object, timeout_s: float) -> dict[str, Any]:
    """Run a one-off to its end (see the module docstring); return how it ended."""
    cid = raw_spec.get("id") if isinstance(raw_spec, dict) else None
    if not isinstance(cid, str) or not ID_RE.fullmatch(cid):
        return agent.run(raw_spec)  # refused and reported there; no stream without an id
    timeout_s = max(1.0, float(timeout_s))
    out = RunOutput(agent.reporter.redis, cid, int(timeout_s + STOP_GRACE_S) + RUN_TTL_S)
    out.add({"state": "starting"})
    result = agent.run(raw_spec)
    if not result["ok"]:
        out.finish(None, str(result.get("error") or "it could not be started"))
        return result
    out.add({"state": "running"})
    return _follow_to_end(agent, cid, out, timeout_s, timeout_s)


def _follow_to_end(agent: Agent, cid: str, out: RunOutput, remaining_s: float, limit_s: float,
                   skip: int = 0) -> dict[str, Any]:
    """Ship the output (less the first `skip` lines, already shipped), stop the one-off
    `remaining_s` from now, then write the exit entry, remove it and report its exit."""
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        with contextlib.suppress(DaemonError):
            agent.daemon.stop(cid, timeout_s=STOP_GRACE_S)

    timer = threading.Timer(max(0.0, remaining_s), on_timeout)
    timer.daemon = True
    timer.start()
    shipped = skip
    give_up = time.monotonic() + max(0.0, remaining_s) + STOP_GRACE_S + 60
    try:
        while True:
            seen = 0
            try:
                for item in agent.daemon.logs(cid, tail=RUN_MAXLEN, follow=True):
                    seen += 1
                    if seen <= shipped:
                        continue  # shipped before the daemon restarted (or by an earlier agent)
                    out.add({"stream": str(item.get("stream", "stdout")),
                             "line": str(item.get("line", "")), "time": str(item.get("time", ""))})
                    shipped += 1
            except DaemonError as e:
                if e.kind == "not_found":
                    break
                if not isinstance(e, DaemonUnavailable):
                    log.warning("following the output of %s failed: %s", cid, e)
            # The log ends with the container, or with the daemon (a restart leaves containers
            # running): then follow it again.
            if not _still_running(agent, cid) or time.monotonic() > give_up:
                break
            time.sleep(0.5)
    finally:
        timer.cancel()
    code, message = _ended(agent, cid)
    if timed_out.is_set():
        message = f"it was stopped after its time limit of {limit_s:g} s"
    out.finish(code, message)  # first: whoever waits for the exit need not wait for the removal
    with contextlib.suppress(DaemonError):
        agent.daemon.remove(cid, force=True)
    with contextlib.suppress(redis.RedisError):
        agent.reporter.event(cid, "exited", exit_code=code)
    return {"ok": True, "id": cid, "exit_code": code, "message": message}


def resume_oneoffs(agent: Agent) -> list[str]:
    """After the agent (re)starts: follow again the one-offs the daemon has (they carry
    `TIMEOUT_LABEL`), from the first line not yet in their stream; return their ids."""
    try:
        listed = agent.daemon.list()
    except DaemonError as e:
        log.warning("could not list the containers to resume one-offs: %s", e)
        return []
    resumed: list[str] = []
    for c in listed:
        spec = c.get("spec") or {}
        labels = spec.get("labels") or {}
        cid = c.get("id")
        if TIMEOUT_LABEL not in labels or not isinstance(cid, str) or not ID_RE.fullmatch(cid):
            continue
        try:
            limit = max(1.0, float(labels[TIMEOUT_LABEL]))
        except (TypeError, ValueError):
            limit = float(RUN_TTL_S)
        began = c.get("started_at") or c.get("created_at") or time.time()
        remaining = float(began) + limit - time.time()
        out = RunOutput(agent.reporter.redis, cid, int(max(0.0, remaining) + STOP_GRACE_S) + RUN_TTL_S)
        try:
            shipped = [f for _i, f in agent.reporter.redis.xrange(run_stream(cid))]
        except redis.RedisError as e:
            log.warning("could not read the output of one-off %s: %s", cid, e)
            continue
        if shipped and b"exit" in shipped[-1]:
            with contextlib.suppress(DaemonError):  # ended and reported; only its removal was left
                agent.daemon.remove(cid, force=True)
            continue
        skip = sum(1 for f in shipped if b"line" in f)
        threading.Thread(target=_follow_quietly, args=(agent, cid, out, remaining, limit, skip),
                         name=f"oneoff-{cid}", daemon=True).start()
        resumed.append(cid)
    if resumed:
        log.info("following the one-offs %s again", ", ".join(resumed))
    return resumed


def _follow_quietly(agent: Agent, cid: str, out: RunOutput, remaining_s: float, limit_s: float,
                    skip: int) -> None:
    try:
        _follow_to_end(agent, cid, out, remaining_s, limit_s, skip)
    except Exception:
        log.exception("following the one-off %s failed", cid)


def _still_running(agent: Agent, cid: str) -> bool:
    """Whether the container runs, or may (its daemon does not answer: it is restarting)."""
    try:
        return agent.daemon.inspect(cid).get("state") == "running"
    except DaemonUnavailable:
        return True
    except DaemonError:
        return False


def _ended(agent: Agent, cid: str) -> tuple[int | None, str]:
    """Wait for the container's end (its log ended); return its exit code and a remark."""
    deadline = time.monotonic() + STOP_GRACE_S + 5
    while True:
        try:
            c = agent.daemon.inspect(cid)
        except DaemonError as e:
            if e.kind == "not_found":
                return None, "it was stopped"
            return None, f"its end could not be read: {e}"
        state = c.get("state")
        if state != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    code = c.get("exit_code")
    code = code if isinstance(code, int) else None
    if state == "oom":
        return code, "it ran out of memory"
    if state == "running":
        return None, "it did not end"
    return code, ""
