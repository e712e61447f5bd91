"""Typed events a leg publishes. Flows, bridges, queues and tests react to these, never to
pjsua2 callbacks directly."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LegEvent:
    leg_id: str


@dataclass(frozen=True)
class LegRinging(LegEvent):
    pass


@dataclass(frozen=True)
class LegProgress(LegEvent):
    """Early media (183) from the remote side."""


@dataclass(frozen=True)
class LegAnswered(LegEvent):
    pass


@dataclass(frozen=True)
class LegMediaActive(LegEvent):
    """The leg's audio is on the conference bridge at `slot`."""

    slot: int


@dataclass(frozen=True)
class LegHold(LegEvent):
    """The far end put the leg on hold (`held`: it sent a=sendonly or a=inactive) or resumed it
    (a=sendrecv again). Bridges play hold music to the leg's peer meanwhile."""

    held: bool


@dataclass(frozen=True)
class LegDtmf(LegEvent):
    digit: str
    method: str  # rfc2833 | info | inband


@dataclass(frozen=True)
class LegEnded(LegEvent):
    reason: str  # hangup reason in the reference's vocabulary (remote_hangup, daemon_shutdown, …)
    sip_code: int
