"""Ship every container's output on this host to its app's log stream in Redis.

The runtime daemon's init writes each container's stdout and stderr as timestamped lines to
`containers/<id>/container.log` and rotates it to `container.log.1` (runtime.daemon). One thread
of the agent follows all of them with a cheap poll loop and sends new lines in batches, tagged
`app[<type>.<n>]` with the container's own timestamp, to the stream `paas:logs:<app>` (fields
`time` in Unix seconds, `tag`, `line`, and `release`, the version number from the container's
spec when it has one, which tells a new release's `web.1` from the old one's during a
roll-out; capped near `PAAS_APP_LOG_MAXLEN` entries).

Exactly once across agent restarts: each container's position is an (inode, offset) pair. Before
a batch is sent, the positions before and after it are written to a state file on disk with the
batch's sequence number; the batch's XADDs and `SET paas:logship:<host> <seq>` go to Redis in one
MULTI/EXEC. On start (and after a send whose outcome is unknown) the marker in Redis says which
of the two positions holds. The shipper keeps an open descriptor on each file it follows, so the
lines written just before a rotation or before the container's removal are still read.

Redis away: up to `PAAS_AGENT_LOG_BUFFER_LINES` lines wait in memory; past that the newest are
dropped and counted (`dropped`, and a warning once Redis answers again). While Redis takes lines,
a full buffer only pauses reading (the files hold the rest). Nothing here blocks the agent's
other threads.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

import redis

from runtime.agent.config import AgentSettings, _env_number

log = logging.getLogger("paas.agent.logs")

LOG_NAME = "container.log"
ROTATED_NAME = "container.log.1"
MARKER_KEY = "paas:logship:{host}"
MAX_ROUNDS = 50  # read-and-ship rounds per step while the files hold more than the buffer takes
RETRY_S = 1.0
READ_CHUNK = 256 * 1024
_PROCESS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\.[0-9]{1,9}$")

# KEYS[1]: the app's log stream; ARGV[1]: its cap; ARGV[2]: a JSON list of [time, tag, line]
# or [time, tag, line, release].
XADD_ENTRIES = """
local entries = cjson.decode(ARGV[2])
for _, e in ipairs(entries) do
  if e[4] then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'time', e[1], 'tag', e[2],
               'line', e[3], 'release', e[4])
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'time', e[1], 'tag', e[2], 'line', e[3])
  end
end
return #entries
"""

Position = tuple[int, int]  # (inode, offset just after the last whole line taken)


def logs_key(app: str) -> str:
    """The app's log stream (the same key the router writes: router.metrics.logs_key)."""
    return f"paas:logs:{app}"


@dataclass(frozen=True)
class LogShipSettings:
    """How often to look, how much to hold while Redis is away, and the stream's cap."""

    poll_s: float = 0.25
    buffer_lines: int = 10_000
    batch_lines: int = 2_000
    maxlen: int = 10_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LogShipSettings:
        env = os.environ if env is None else env
        return cls(
            poll_s=_env_number(env, "PAAS_AGENT_LOG_POLL_S", 0.25, 0.01, 60.0),
            buffer_lines=_env_number(env, "PAAS_AGENT_LOG_BUFFER_LINES", 10_000, 10, 10_000_000),
            maxlen=_env_number(env, "PAAS_APP_LOG_MAXLEN", 10_000, 100, 10_000_000),
        )


def container_tag(spec: Mapping[str, Any]) -> str:
    """`app[web.1]`: the container's name from its `paas.process` label or its id.

    The reconciler names containers `<type>.<n>` (label `paas.process`) and gives them ids
    `<app>.<type>.<n>.<hex>`; a container started some other way is tagged by its type alone.
    """
    labels = spec.get("labels") or {}
    name = labels.get("paas.process") if isinstance(labels, Mapping) else None
    if isinstance(name, str) and _PROCESS_RE.match(name):
        return f"app[{name}]"
    ptype = str(spec.get("process_type") or "app")
    parts = str(spec.get("id") or "").split(".")
    if len(parts) >= 3 and parts[1] == ptype and parts[2].isdigit():
        return f"app[{ptype}.{parts[2]}]"
    return f"app[{ptype}]"


def parse_line(raw: bytes) -> tuple[str, str]:
    """Split `<RFC 3339 time> <stream> <text>` into (Unix seconds, text)."""
    stamp, _, rest = raw.partition(b" ")
    _stream, _, text = rest.partition(b" ")
    # The init writes `2026-11-27T23:59:59.123456Z`: the seconds part repeats from line to line.
    if len(stamp) == 27 and stamp[19:20] == b"." and stamp.endswith(b"Z") and stamp[20:26].isdigit():
        whole = _whole_seconds(stamp[:19])
        if whole is not None:
            return f"{whole}.{stamp[20:26].decode()}", text.decode(errors="replace")
    try:
        when = datetime.fromisoformat(stamp.decode("ascii").replace("Z", "+00:00")).timestamp()
    except (ValueError, UnicodeDecodeError):
        when, text = time.time(), raw  # not the init's format: keep the whole line
    return f"{when:.6f}", text.decode(errors="replace")


@functools.lru_cache(maxsize=64)
def _whole_seconds(stamp: bytes) -> int | None:
    try:
        return int(datetime.fromisoformat(stamp.decode("ascii") + "+00:00").timestamp())
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass
class _Entry:
    cid: str
    app: str
    fields: list[str]  # time, tag, line (and release, when the container's spec has one)
    start: Position


@dataclass
class _Follow:
    """One container's file being read: an open descriptor on it and the position in it."""

    cid: str
    app: str
    tag: str
    release: str = ""  # the release's version number, from the spec ("" if it has none)
    fd: int = -1
    pos: Position = (0, 0)
    gone: bool = False
    seen_rotated: set[int] = field(default_factory=set)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LogShipper:
    """Follow this host's container logs and ship them; `run` it in a thread of its own."""

    def __init__(
        self,
        containers_dir: Path,
        state_path: Path,
        client: redis.Redis[bytes],
        host: str,
        settings: LogShipSettings | None = None,
    ) -> None:
        self.containers_dir = containers_dir
        self.state_path = state_path
        self.redis = client
        self.host = host
        self.settings = settings or LogShipSettings()
        self.marker = MARKER_KEY.format(host=host)
        self.shipped = 0
        self.dropped = 0
        self.failing = False  # Redis refused the last batch: lines past the buffer are dropped
        self._dropped_reported = 0
        self._follows: dict[str, _Follow] = {}
        self._buffer: deque[_Entry] = deque()
        self._read: dict[str, Position] = {}  # where reading got to (shipped, held or dropped)
        self._committed: dict[str, Position] | None = None  # None until Redis said which holds
        self._seq = 0
        self._uncertain: int | None = None  # lines of a batch sent without a known outcome
        self._retry_at = 0.0
        self._more = False  # the last poll left lines in a file because the buffer was full

    # -- the loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll and ship until `stop` is set, then ship what is left once."""
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # whatever went wrong, the next round tries again
                log.exception("shipping container logs failed")
            stop.wait(self.settings.poll_s)
        with contextlib.suppress(redis.RedisError, OSError):
            while self.flush():
                pass
        self.close()

    def step(self) -> int:
        """One round: read what is new and ship it. Return the number of lines shipped."""
        if time.monotonic() < self._retry_at:
            if self.failing and self._committed is not None:
                self._poll_quietly()  # keep reading into the buffer (and count what overflows)
            return 0
        if self._committed is None and not self._load():
            return 0
        shipped = 0
        for _ in range(MAX_ROUNDS):
            self._more = False
            self._poll_quietly()
            try:
                while n := self.flush():
                    shipped += n
            except (redis.RedisError, OSError) as e:
                if not self.failing:
                    log.warning("shipping container logs failed (will retry): %s", e)
                self.failing = True
                self._retry_at = time.monotonic() + RETRY_S
                return shipped
            if not self._more:
                break
        return shipped

    def _poll_quietly(self) -> None:
        try:
            self.poll()
        except OSError as e:  # the runtime root unreadable: try again next round
            log.warning("reading container logs failed: %s", e)

    def close(self) -> None:
        for f in self._follows.values():
            f.close()
        self._follows.clear()

    # -- positions ------------------------------------------------------------------------------

    def _load(self) -> bool:
        """Read the state file; ask Redis which of its positions holds. False if Redis is away."""
        try:
            state = json.loads(self.state_path.read_text())
            seq = int(state["seq"])
            before = {str(k): (int(v[0]), int(v[1])) for k, v in state["before"].items()}
            after = {str(k): (int(v[0]), int(v[1])) for k, v in state["after"].items()}
        except FileNotFoundError:
            seq, before, after = 0, {}, {}
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            log.warning("ignoring the unreadable log positions in %s: %s", self.state_path, e)
            seq, before, after = 0, {}, {}
        try:
            raw = self.redis.get(self.marker)
        except redis.RedisError as e:
            if not self.failing:
                log.warning("cannot reach Redis to resume shipping container logs: %s", e)
            self.failing = True
            self._retry_at = time.monotonic() + RETRY_S
            return False
        done = raw is not None and raw.decode() == str(seq)
        self._seq = seq
        self._committed = dict(after if done else before)
        self._read = dict(self._committed)
        return True

    def _save(self, before: Mapping[str, Position], after: Mapping[str, Position]) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "seq": self._seq,
            "before": {c: list(p) for c, p in before.items()},
            "after": {c: list(p) for c, p in after.items()},
        }))
        os.replace(tmp, self.state_path)

    # -- reading --------------------------------------------------------------------------------

    def poll(self) -> int:
        """Read the new whole lines of every container into the buffer; return how many."""
        present = set()
        with contextlib.suppress(FileNotFoundError), os.scandir(self.containers_dir) as it:
            # (No directory yet: the daemon has never run a container on this host.)
            for d in it:
                if d.is_dir(follow_symlinks=False):
                    present.add(d.name)
        for cid in sorted(present - set(self._follows)):
            follow = self._start(cid)
            if follow is not None:
                self._follows[cid] = follow
        n = 0
        for cid, follow in list(self._follows.items()):
            if cid not in present:
                follow.gone = True
            n += self._read_follow(follow)
            if follow.gone and not self._more:
                follow.close()
                del self._follows[cid]
        return n

    def _start(self, cid: str) -> _Follow | None:
        d = self.containers_dir / cid
        try:
            spec = json.loads((d / "state.json").read_text())["spec"]
            app = str(spec["app"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # being created (or not a container): look again next round
        release = spec.get("release")
        follow = _Follow(cid=cid, app=app, tag=container_tag(spec),
                         release=str(release) if isinstance(release, int) else "")
        known = self._read.get(cid)
        cur, rotated = _inode(d / LOG_NAME), _inode(d / ROTATED_NAME)
        if known is not None and known[0] in (cur, rotated):
            name = LOG_NAME if known[0] == cur else ROTATED_NAME
            self._open(follow, d / name, known[1], expect=known[0])
        else:
            if known is not None:
                log.warning("container %s: its log rotated away before it was shipped", cid)
            # From the oldest line the runtime still keeps.
            self._open(follow, d / (ROTATED_NAME if rotated else LOG_NAME), 0)
        return follow

    def _open(self, f: _Follow, path: Path, offset: int, expect: int | None = None) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        ino = os.fstat(fd).st_ino
        if expect is not None and ino != expect:
            os.close(fd)
            return False
        f.close()
        f.fd, f.pos = fd, (ino, offset)
        if path.name == ROTATED_NAME:
            f.seen_rotated.add(ino)
        return True

    def _read_follow(self, f: _Follow) -> int:
        n = self._drain(f)
        if f.gone or self._more:
            return n
        d = self.containers_dir / f.cid
        cur = _inode(d / LOG_NAME)
        if cur == 0 or (f.fd >= 0 and cur == f.pos[0]):
            return n  # no output yet, or nothing rotated
        # The file read so far was rotated. The init closes a file before it renames it, so what
        # the held descriptor has now is all it will ever have: take the rest. A rotated file not
        # read yet (the log rotated twice meanwhile) comes next, then the new file.
        n += self._drain(f)
        if self._more:
            return n
        rotated = _inode(d / ROTATED_NAME)
        unread = rotated not in (0, f.pos[0], cur) and rotated not in f.seen_rotated
        if unread and self._open(f, d / ROTATED_NAME, 0, expect=rotated):
            n += self._drain(f)
            if self._more:
                return n
        if self._open(f, d / LOG_NAME, 0):
            n += self._drain(f)
        return n

    def _drain(self, f: _Follow) -> int:
        """Take the whole lines after the position from the held descriptor."""
        if f.fd < 0:
            return 0
        n = 0
        ino, offset = f.pos
        while True:
            chunk = os.pread(f.fd, READ_CHUNK, offset)
            end = chunk.rfind(b"\n")
            if end < 0:
                break
            for raw in chunk[: end + 1].split(b"\n")[:-1]:
                if len(self._buffer) >= self.settings.buffer_lines and not self.failing:
                    # Redis takes lines: leave the rest in the file for the next round.
                    self._more = True
                    f.pos = (ino, offset)
                    return n
                stop = offset + len(raw) + 1
                self._take(f, raw, (ino, offset), (ino, stop))
                offset = stop
                n += 1
            if len(chunk) < READ_CHUNK:
                break
        f.pos = (ino, offset)
        return n

    def _take(self, f: _Follow, raw: bytes, start: Position, end: Position) -> None:
        self._read[f.cid] = end
        if len(self._buffer) >= self.settings.buffer_lines:
            self.dropped += 1  # Redis is away and the buffer is full: drop the newest
            return
        when, text = parse_line(raw)
        fields = [when, f.tag, text, f.release] if f.release else [when, f.tag, text]
        self._buffer.append(_Entry(f.cid, f.app, fields, start))

    # -- shipping -------------------------------------------------------------------------------

    def flush(self) -> int:
        """Send the buffer's oldest lines (one batch) and record the positions; return how many."""
        if self._committed is None:
            return 0
        if self._uncertain is not None:
            # The last EXEC may have happened even though its answer was lost: the marker says.
            raw = self.redis.get(self.marker)
            k, self._uncertain = self._uncertain, None
            if raw is not None and raw.decode() == str(self._seq):
                self._commit(k, self._after(k))
        batch = list(islice(self._buffer, self.settings.batch_lines))
        after = self._after(len(batch))
        if not batch:
            if after != self._committed:  # containers gone, or lines dropped: just remember
                self._save(after, after)
                self._committed = after
            return 0
        self._seq += 1
        self._save(self._committed, after)
        by_app: dict[str, list[list[str]]] = {}
        for e in batch:
            by_app.setdefault(e.app, []).append(e.fields)
        pipe = self.redis.pipeline(transaction=True)
        for app, entries in by_app.items():
            # One argument per app: packing thousands of XADD arguments costs the client far
            # more than Redis takes to run them.
            pipe.eval(XADD_ENTRIES, 1, logs_key(app), self.settings.maxlen, json.dumps(entries))
        pipe.set(self.marker, str(self._seq))
        self._uncertain = len(batch)
        pipe.execute()
        self._uncertain = None
        self._commit(len(batch), after)
        if self.dropped > self._dropped_reported:
            log.warning("dropped %d container log lines while Redis could not take them",
                        self.dropped - self._dropped_reported)
            self._dropped_reported = self.dropped
        self._retry_at = 0.0
        self.failing = False
        return len(batch)

    def _after(self, k: int) -> dict[str, Position]:
        """The positions once the buffer's first `k` lines are shipped."""
        first_left: dict[str, Position] = {}
        for e in islice(self._buffer, k, None):
            first_left.setdefault(e.cid, e.start)
        live = set(self._follows) | set(first_left)
        return {cid: first_left.get(cid, pos) for cid, pos in self._read.items() if cid in live}

    def _commit(self, k: int, after: dict[str, Position]) -> None:
        for _ in range(k):
            self._buffer.popleft()
        self.shipped += k
        self._committed = after
        self._read = {c: p for c, p in self._read.items() if c in after or c in self._follows}


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return 0


def log_shipper(settings: AgentSettings, env: Mapping[str, str] | None = None) -> LogShipper:
    """The shipper of the agent with `settings` (positions under the runtime root)."""
    # Short timeouts: an unreachable Redis costs a round a second, never a stuck thread.
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    return LogShipper(
        settings.runtime_root / "containers",
        settings.runtime_root / "logship" / f"{settings.host}.json",
        client,
        settings.host,
        LogShipSettings.from_env(env),
    )
