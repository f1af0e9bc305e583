"""Router processes: a master that owns the listening sockets, and workers that serve them.

The master binds one SO_REUSEPORT socket per worker slot (and per TLS slot) and keeps them open
for its whole life; each worker, forked from it, serves its slot's sockets. SIGHUP starts a new
generation of workers, waits until each one has read the route table and listens, then tells the
old ones to finish: they stop accepting, answer what they have in flight, and exit. Because the
master still holds every socket, connections queued on a slot while its worker changes wait for
the new worker instead of being reset. SIGTERM (or SIGINT) drains every worker and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import uvloop

from router.config import RouterConfig
from router.fastpath import load as load_fast_path
from router.follow import TableFollower, flush, flush_forever, load_snapshot
from router.proxy import Worker
from router.routing import RouteTable
from router.tls import CertStore

log = logging.getLogger("router")
MASTER_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
READY_TIMEOUT = 10.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Have the kernel send SIGTERM to this worker if the master dies (prctl(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("at=warning desc=\"prctl(PR_SET_PDEATHSIG) failed\" errno=%d", ctypes.get_errno())


@dataclass
class Listener:
    sock: socket.socket
    proto: str  # "http" or "https"
    port: int


def bind_reuseport(host: str, port: int) -> socket.socket:
    """Bind a listening TCP socket that shares its port with the other workers' (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(config: RouterConfig, listeners: list[Listener], ready_fd: int | None = None) -> None:
    """Run one worker until SIGTERM, then drain it."""
    loop = asyncio.get_running_loop()
    table = RouteTable(config.domain)
    worker = Worker(config, table)
    client = aioredis.from_url(config.redis_url, socket_connect_timeout=2.0, socket_timeout=None,
                               health_check_interval=5)
    snapshot = config.data_dir / "router" / "table.json"
    # With a snapshot there is a table to serve already: wait less for Redis before listening.
    from_snapshot = load_snapshot(snapshot, table)
    if from_snapshot:
        log.info("at=info desc=\"route table read from the last snapshot\" version=%d", table.version)
    follower = TableFollower(client, table, snapshot=snapshot)
    tasks = [loop.create_task(follower.run()), loop.create_task(flush_forever(client, worker.recorder, config.flush_interval))]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0 if from_snapshot else 5.0):
            await follower.synced.wait()
    if not follower.synced.is_set():
        log.warning("at=error code=redis_unavailable desc=\"starting with the snapshot's route table\" version=%d",
                    table.version)
    certs = CertStore(config.certs_dir)
    servers = []
    for listener in listeners:
        ssl_context = certs.server_context() if listener.proto == "https" else None
        servers.append(
            await loop.create_server(
                worker.protocol_factory(listener.proto, listener.port), sock=listener.sock,
                ssl=ssl_context, backlog=1024,
            )
        )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the master's business
    # Everything alive now (modules, the table, the loop) lives as long as the worker: keep it
    # out of the collector's full passes, which otherwise stall every request for milliseconds.
    gc.freeze()
    if ready_fd is not None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)
    log.info("at=info desc=\"worker ready\" pid=%d routes_version=%d", os.getpid(), table.version)
    await stop.wait()
    for server in servers:
        server.close()
    worker.drain()
    deadline = loop.time() + config.drain_timeout
    while worker.clients and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for conn in list(worker.clients):
        if conn.transport is not None:
            conn.transport.abort()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await flush(client, worker.recorder)
    await client.aclose()  # type: ignore[attr-defined]  # stubs predate redis 5


def run_worker(config: RouterConfig, listeners: list[Listener], ready_fd: int | None = None) -> None:
    uvloop.run(serve(config, listeners, ready_fd))


class Master:
    """Fork and supervise the workers; hand the sockets from one generation to the next."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.slots: list[list[Listener]] = []
        for _ in range(config.workers):
            slot = [Listener(bind_reuseport(*config.bind), "http", config.bind[1])]
            if config.tls_bind is not None:
                slot.append(Listener(bind_reuseport(*config.tls_bind), "https", config.tls_bind[1]))
            self.slots.append(slot)
        if config.fast_path:
            load_fast_path()  # compiled once here, before the workers fork, rather than in each
        self.workers: dict[int, int] = {}  # pid -> slot, the current generation
        self.retiring: set[int] = set()
        self.stopping = False

    def spawn(self, slot: int) -> int:
        return self.spawn_all([slot])[0]

    def spawn_all(self, slots: list[int]) -> list[int]:
        """Fork a worker for each slot, then wait until each is ready (or READY_TIMEOUT)."""
        started = [self._fork(slot) for slot in slots]
        deadline = time.monotonic() + READY_TIMEOUT
        for pid, slot, read_end in started:
            ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            if not ready or not os.read(read_end, 1):
                log.error("at=error code=worker_not_ready pid=%d slot=%d", pid, slot)
            os.close(read_end)
            self.workers[pid] = slot
        return [pid for pid, _, _ in started]

    def _fork(self, slot: int) -> tuple[int, int, int]:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(read_end)
                die_with_parent()
                signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)
                for other, listeners in enumerate(self.slots):
                    if other != slot:
                        for listener in listeners:
                            listener.sock.close()
                run_worker(self.config, self.slots[slot], write_end)
            except BaseException:
                log.exception("at=error code=worker_crashed")
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(write_end)
        return pid, slot, read_end

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.retiring.discard(pid)
            slot = self.workers.pop(pid, None)
            if slot is not None and not self.stopping:
                log.error("at=error code=worker_exited pid=%d status=%d slot=%d", pid, status, slot)
                time.sleep(0.5)  # a worker that dies at once must not spin the master
                self.spawn(slot)

    def reload(self) -> None:
        old = dict(self.workers)
        self.workers = {}
        self.spawn_all(list(range(len(self.slots))))
        for pid in old:
            self.retiring.add(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        log.info("at=info desc=\"reloaded\" workers=%s", sorted(self.workers))

    def stop(self) -> None:
        self.stopping = True
        pids = set(self.workers) | self.retiring
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_timeout + 5.0
        while pids and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.05)
            else:
                pids.discard(pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for listeners in self.slots:
            for listener in listeners:
                listener.sock.close()

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        self.spawn_all(list(range(len(self.slots))))
        host, port = self.config.bind
        log.info("at=info desc=\"router listening\" bind=%s:%d workers=%d", host, port, len(self.slots))
        while True:
            signum = signal.sigwait(MASTER_SIGNALS)
            if signum == signal.SIGCHLD:
                self.reap()
            elif signum == signal.SIGHUP:
                self.reload()
            else:
                self.stop()
                return 0


def configure_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s router[%(process)d] %(message)s")
