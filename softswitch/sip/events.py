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


# ---- transfer (REFER from a phone, softswitch/sip/transfer.py) -------------------------------
@dataclass(frozen=True)
class Replaces:
    """The dialog a Refer-To's Replaces header names (RFC 3891): an attended transfer."""

    call_id: str
    to_tag: str
    from_tag: str


@dataclass(frozen=True)
class TransferRequested(LegEvent):
    """A phone on `leg_id` sent REFER: transfer its bridged peer to `target` (the Refer-To's
    user part), or, with `replaces`, to the far end of the call that dialog belongs to."""

    handle: int  # the native subscription's handle, for NOTIFY progress
    refer_to: str  # the Refer-To URI as sent (without its header parameters)
    target: str
    replaces: Replaces | None
    referred_by: str
