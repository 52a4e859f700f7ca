"""Free local ports that no outgoing connection can take before their server binds them.

`bind(("127.0.0.1", 0))` hands out a port from the kernel's ephemeral range, the same range
every outgoing connection draws its source port from. Between choosing such a port and the
server binding it, a connection to Redis or to the upstream may take it: CI once saw
gateway-2 of `deploy/local-stack.sh` fail with "address already in use" that way. So ports
here are drawn at random from below the ephemeral range, with room for a Redis Cluster bus
port (port + 10000) below it too, and each is checked free by binding it.

Stand-alone on purpose (standard library only, no package imports): tests and the bench
import it, and `deploy/local-stack.sh` runs it as `python bench/ports.py N`, which prints N
distinct ports, one per line.
"""

from __future__ import annotations

import random
import socket
import sys
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_LOW = 32768  # Linux's default; used where /proc does not say
LOWEST_PORT = 10000  # stay clear of well-known and commonly configured service ports
CLUSTER_BUS_OFFSET = 10000  # a Redis Cluster node also listens on its port + 10000
ATTEMPTS = 200

_handed_out: set[int] = set()


def ephemeral_low(range_file: Path = EPHEMERAL_RANGE_FILE) -> int:
    """The first port of the kernel's ephemeral (outgoing source port) range."""
    try:
        return int(range_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_LOW


def is_free(port: int) -> bool:
    """Whether a server could bind `port` on 127.0.0.1 right now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(rng: random.Random | None = None) -> int:
    """A port on 127.0.0.1 that is free now, outside the ephemeral range, not handed out before
    by this process; falls back to the kernel's choice when the range below is too small."""
    pick = rng or random
    high = ephemeral_low() - CLUSTER_BUS_OFFSET
    if high - LOWEST_PORT >= 1000:
        for _ in range(ATTEMPTS):
            port = pick.randrange(LOWEST_PORT, high)
            if port not in _handed_out and is_free(port) and is_free(port + CLUSTER_BUS_OFFSET):
                _handed_out.add(port)
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    _handed_out.add(port)
    return port


def main(argv: list[str]) -> int:
    """Print the requested number of distinct free ports, one per line."""
    count = int(argv[0]) if argv else 1
    for _ in range(count):
        print(free_port())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
