"""Evidence of softswitch's keep-alives to registered phones: when each keep-alive request reached
a phone's port (from a loopback capture), and the keep-alive counters the server reports."""

from __future__ import annotations

import re

from tests.support.capture import LoopbackCapture

_PREFIX = 'softswitch_registrar_events_total{event="keepalive_'


def first_arrivals(cap: LoopbackCapture, port: int, method: bytes) -> list[float]:
    """When each SIP request `method` captured towards `port` first arrived (retransmissions of an
    unanswered one, with the same Call-ID, are left out)."""
    first: dict[bytes, float] = {}
    for p in cap.packets():
        if p.dst_port == port and p.payload.startswith(method + b" "):
            call_id = re.search(rb"\r\nCall-ID: *([^\r]+)", p.payload, re.I)
            first.setdefault(call_id.group(1) if call_id else p.payload, p.ts)
    return sorted(first.values())


def counters(server) -> dict[str, float]:
    """The server's keep-alive counters from /metrics: options_sent, options_answered, ... ."""
    return {k[len(_PREFIX):-2]: v for k, v in server.metrics().items() if k.startswith(_PREFIX)}
