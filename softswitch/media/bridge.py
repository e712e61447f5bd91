"""Conference-bridge wiring by slot id. Every audio source and sink softswitch uses (call legs,
players, recorders, frame ports) is a slot on the one pjsua bridge; joining legs, playing a
prompt or tapping audio is connecting slots."""

from __future__ import annotations

import _softswitch_native as native


def connect(src: int, dst: int) -> None:
    native.conf_connect(src, dst)


def disconnect(src: int, dst: int) -> None:
    native.conf_disconnect(src, dst)


def listeners(slot: int) -> list[int]:
    return native.conf_listeners(slot)


def capacity() -> int:
    return native.conf_max_ports()


def active_ports() -> int:
    return native.conf_active_ports()


def build_limits() -> dict:
    """The limits compiled into the pjproject build (calls, players, recorders, bridge ports)."""
    return native.limits()
