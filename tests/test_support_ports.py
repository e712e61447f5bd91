"""Tests of tests/support/ports.py: free loopback ports and port blocks."""

from __future__ import annotations

import socket

import pytest

from tests.support.ports import free_port, free_port_block


def _bind(kind: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", port))
    return sock


@pytest.mark.parametrize("kind", ["udp", "tcp", "both"])
def test_free_port_is_bindable(kind: str) -> None:
    port = free_port(kind)  # type: ignore[arg-type]
    assert 1024 <= port <= 65535
    types = {"udp": [socket.SOCK_DGRAM], "tcp": [socket.SOCK_STREAM], "both": [socket.SOCK_DGRAM, socket.SOCK_STREAM]}[kind]
    socks = [_bind(t, port) for t in types]
    for s in socks:
        s.close()


def test_free_port_avoids_a_taken_port() -> None:
    with _bind(socket.SOCK_DGRAM, 0) as taken:
        ports = {free_port("udp") for _ in range(20)}
        assert taken.getsockname()[1] not in ports


def test_free_port_block_is_even_consecutive_and_free() -> None:
    start = free_port_block(6)
    assert start % 2 == 0
    socks = [_bind(socket.SOCK_DGRAM, p) for p in range(start, start + 6)]
    for s in socks:
        s.close()
    assert free_port_block(3, kind="both", even=False) > 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        free_port("sctp")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        free_port_block(0)
