"""SIP messages from a SIPp run's message trace (``-trace_msg``), with their times, so tests can
check what a SIPp actor received and in which order (INVITE before CANCEL, 183 before 200)."""

from __future__ import annotations

import re
from datetime import datetime

from tests.support.sipp import Sipp

Message = tuple[datetime, str, str]  # (time, "sent" | "received", the message text)


def trace(sipp: Sipp) -> list[Message]:
    """Every SIP message SIPp sent or received, in trace order."""
    text = (sipp.trace_dir / "messages.log").read_text(errors="replace")
    parts = re.split(r"-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n", text)
    out = []
    for stamp, body in zip(parts[1::2], parts[2::2]):
        head, _, message = body.partition("\n")
        kind = "sent" if "message sent" in head else "received"
        out.append((datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f"), kind, message.strip()))
    return out


def first(messages: list[Message], kind: str, start: str) -> tuple[datetime, str]:
    """The first message of `kind` whose text starts with `start` (e.g. "INVITE ", "SIP/2.0 183")."""
    for when, k, message in messages:
        if k == kind and message.startswith(start):
            return when, message
    raise AssertionError(f"no {kind} message starting {start!r} in {[m[:40] for _, _, m in messages]}")
