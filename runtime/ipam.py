"""Host-local IP address allocation, kept on disk so restarts never hand out an address twice.

The state is one JSON file per subnet (`<state_dir>/ipam-<network>-<prefix>.json`), rewritten
atomically under an flock. The first host address is the bridge's gateway; the network and
broadcast addresses are never handed out. Addresses are handed out round-robin from the last
one given, so a released address is not reused at once (a late packet for a removed container
does not reach its successor).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


class IPAMError(Exception):
    """Base class of address-allocation errors; messages are fit for a user."""


class SubnetExhausted(IPAMError):
    """Every address of the subnet is in use."""


class IPAM:
    """Allocate the addresses of one subnet to container ids."""

    def __init__(self, subnet: str, state_dir: Path) -> None:
        try:
            self.network = ipaddress.IPv4Network(subnet)
        except ValueError as e:
            raise IPAMError(f"invalid subnet {subnet!r}: {e}") from None
        if self.network.prefixlen > 29:
            raise IPAMError(f"subnet {subnet} is too small: use a /29 or larger")
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        name = f"ipam-{self.network.network_address}-{self.network.prefixlen}"
        self.path = self.state_dir / f"{name}.json"
        self._lock_path = self.state_dir / f"{name}.lock"

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.network.network_address + 1

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, object]]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state: dict[str, object] = {"subnet": str(self.network), "last": None, "allocated": {}}
            if self.path.exists():
                state = json.loads(self.path.read_text())
            yield state
            tmp_fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".ipam-")
            with os.fdopen(tmp_fd, "w") as f:
                json.dump(state, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            os.close(fd)

    def allocate(self, container_id: str) -> ipaddress.IPv4Address:
        """Return the address of `container_id`, allocating one if it has none."""
        with self._state() as state:
            allocated = state["allocated"]
            assert isinstance(allocated, dict)
            for ip, owner in allocated.items():
                if owner == container_id:
                    return ipaddress.IPv4Address(ip)
            first = int(self.gateway) + 1
            last_usable = int(self.network.broadcast_address) - 1
            size = last_usable - first + 1
            last = state.get("last")
            start = int(ipaddress.IPv4Address(last)) + 1 if isinstance(last, str) else first
            for i in range(size):
                candidate = first + (start - first + i) % size
                ip = str(ipaddress.IPv4Address(candidate))
                if ip not in allocated:
                    allocated[ip] = container_id
                    state["last"] = ip
                    return ipaddress.IPv4Address(ip)
            raise SubnetExhausted(f"no free address left in {self.network}")

    def release(self, container_id: str) -> None:
        """Give back the address of `container_id` (nothing happens if it has none)."""
        with self._state() as state:
            allocated = state["allocated"]
            assert isinstance(allocated, dict)
            for ip in [ip for ip, owner in allocated.items() if owner == container_id]:
                del allocated[ip]

    def allocations(self) -> dict[str, str]:
        """Return {address: container id} of every address in use."""
        if not self.path.exists():
            return {}
        data = json.loads(self.path.read_text())
        return {str(k): str(v) for k, v in data.get("allocated", {}).items()}
