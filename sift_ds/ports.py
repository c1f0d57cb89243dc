"""A free TCP port for a process group's rendezvous (``MASTER_PORT``) on this machine.

The port comes from below the kernel's ephemeral range (``ip_local_port_range``): a port the kernel
hands out itself (``bind(("", 0))``) lies inside that range, where a client's own source port can
equal it. A rank that connects to the rendezvous before the first rank listens can then connect to
itself (a TCP self-connection) and wait for an answer that never comes, a rare hang at start-up.
Below the range no source port ever equals the rendezvous port.
"""
from __future__ import annotations

import random
import socket
from typing import Tuple

LOWEST = 20000  # below this lie well-known and registered services
EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def ephemeral_range() -> Tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default where it cannot be read)."""
    try:
        with open(EPHEMERAL_RANGE_FILE, encoding="ascii") as f:
            low, high = (int(v) for v in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A port that ``host`` can bind now, below the ephemeral range (else any free one)."""
    low = ephemeral_range()[0]
    if low - 1 > LOWEST:
        for port in random.Random().sample(range(LOWEST, low), min(attempts, low - LOWEST)):
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
