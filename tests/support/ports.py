"""Free loopback ports for test actors (SIP signalling, RTP ranges).

Ports are probed by binding on 127.0.0.1 and released before returning, so there is an
unavoidable window in which another process could take them; blocks are picked at random below
Linux's ephemeral range (32768+) to keep clashes with kernel-assigned ports unlikely.
"""

from __future__ import annotations

import random
import socket
from contextlib import ExitStack
from typing import Literal

Kind = Literal["udp", "tcp", "both"]

HOST = "127.0.0.1"
_BLOCK_RANGE = (20000, 32000)  # below net.ipv4.ip_local_port_range's default start
_ATTEMPTS = 200


def _socket_types(kind: Kind) -> list[int]:
    if kind == "udp":
        return [socket.SOCK_DGRAM]
    if kind == "tcp":
        return [socket.SOCK_STREAM]
    if kind == "both":
        return [socket.SOCK_DGRAM, socket.SOCK_STREAM]
    raise ValueError(f"kind must be 'udp', 'tcp' or 'both', not {kind!r}")


def _bind(stack: ExitStack, sock_type: int, port: int) -> int:
    """Bind a socket (kept open by ``stack``) and return its port; raises OSError if taken."""
    sock = stack.enter_context(socket.socket(socket.AF_INET, sock_type))
    if sock_type == socket.SOCK_STREAM:
        # Allows reuse right after we close it, as servers under test normally set it too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    return sock.getsockname()[1]


def free_port(kind: Kind = "udp") -> int:
    """A port free on 127.0.0.1 for UDP, TCP, or both at once (e.g. SIP over UDP and TCP)."""
    types = _socket_types(kind)
    for _ in range(_ATTEMPTS):
        with ExitStack() as stack:
            try:
                port = _bind(stack, types[0], 0)
                for sock_type in types[1:]:
                    _bind(stack, sock_type, port)
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free {kind} port found on {HOST}")


def free_port_block(n: int, kind: Kind = "udp", even: bool = True) -> int:
    """Start of ``n`` consecutive free ports (an even start by default, as RTP wants)."""
    if n < 1:
        raise ValueError("n must be at least 1")
    types = _socket_types(kind)
    rng = random.Random()
    low, high = _BLOCK_RANGE
    for _ in range(_ATTEMPTS):
        start = rng.randrange(low, high - n)
        if even and start % 2:
            start += 1
        with ExitStack() as stack:
            try:
                for port in range(start, start + n):
                    for sock_type in types:
                        _bind(stack, sock_type, port)
            except OSError:
                continue
            return start
    raise RuntimeError(f"no block of {n} free {kind} ports found on {HOST}")
