"""REFERs from phones (RFC 3515) as typed requests, and the subscription that reports progress.

softswitch is a B2BUA: pjsua would dial a Refer-To itself, so `native/transfer.c` takes every
in-dialog REFER before pjsua and asks `Referrals.decide` for the response code, synchronously on
the UA thread. The UA's call handler decides (`on_transfer`: the flow layer, flow/transfer.py);
an accepted REFER gets 202 and a NOTIFY "100 Trying", and the handler reports the rest through
the `Referral` (sipfrag NOTIFYs: 180, 200, or the failure code, the last one final).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote

import _softswitch_native as native

from .events import Replaces, TransferRequested

if TYPE_CHECKING:
    from .endpoint import UserAgent
    from .legs import Leg

log = logging.getLogger("softswitch.transfer")

# A REFER softswitch declines by policy (the leg has no bridged peer, no handler takes transfers):
# 403, the request understood and refused (RFC 3261 21.4.4); RFC 3515 2.4.2 lets the recipient
# decline a well-formed REFER, and a 403 tells the phone not to retry the same REFER.
REFUSED = 403
ACCEPTED = 202
PENDING = 491  # a transfer of this leg is in progress already (RFC 3261 21.4.27)

_REASONS = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 403: "Forbidden",
            404: "Not Found", 408: "Request Timeout", 480: "Temporarily Unavailable", 481:
            "Call/Transaction Does Not Exist", 486: "Busy Here", 487: "Request Terminated",
            488: "Not Acceptable Here", 500: "Server Internal Error", 503: "Service Unavailable",
            603: "Decline"}

_USER = re.compile(r"^(?:sips?|tel):(?P<user>[^@;?>]*)", re.IGNORECASE)


def reason_phrase(code: int) -> str:
    return _REASONS.get(code, "")


def parse_refer_to(value: str) -> tuple[str, str, Replaces | None]:
    """(URI without header parameters, its user part, the Replaces it carries) of a Refer-To
    value such as `"Bob" <sip:1002@host;transport=udp?Replaces=abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2>`."""
    text = value.strip()
    if "<" in text and ">" in text:
        text = text[text.index("<") + 1:text.rindex(">")]
    uri, _, headers = text.partition("?")
    m = _USER.match(uri.strip())
    user = unquote(m.group("user")) if m else ""
    if m and not uri.lower().startswith("tel:") and "@" not in uri:
        user = ""  # sip:host names no user: nothing softswitch can route
    replaces = None
    for header in headers.split("&") if headers else ():
        name, _, raw = header.partition("=")
        if name.strip().lower() != "replaces":
            continue
        parts = unquote(raw).split(";")
        params = dict(p.strip().partition("=")[::2] for p in parts[1:])
        replaces = Replaces(parts[0].strip(), params.get("to-tag", ""), params.get("from-tag", ""))
    return uri.strip(), user, replaces


class Referral:
    """The implicit subscription of one accepted REFER: progress NOTIFYs, then one final one."""

    def __init__(self, handle: int, leg_id: str) -> None:
        self.handle = handle
        self.leg_id = leg_id
        self.final_code: int | None = None

    @property
    def finished(self) -> bool:
        return self.final_code is not None

    def progress(self, code: int) -> None:
        if not self.finished:
            self._send(code, False)

    def finish(self, code: int) -> None:
        """The final NOTIFY (terminates the subscription): 200 when transferred, else the failure."""
        if not self.finished:
            self.final_code = code
            self._send(code, True)

    def _send(self, code: int, final: bool) -> None:
        try:
            native.transfer_notify(self.handle, code, reason_phrase(code), final)
        except RuntimeError as exc:  # the dialog is gone (the phone hung up): nobody to tell
            log.info("%s: transfer NOTIFY %d not sent: %s", self.leg_id, code, exc)


class TransferHandler(Protocol):
    """What takes transfers (the flow engine): a response code for the REFER; on 202 it owns
    `referral` and finishes it."""

    def on_transfer(self, leg: "Leg", request: TransferRequested, referral: Referral) -> int: ...


class Referrals:
    """Installs the native REFER hook on the UA's endpoint and routes each REFER to the UA's
    call handler (UA thread only)."""

    def __init__(self, ua: "UserAgent") -> None:
        self.ua = ua
        native.transfer_install(self.decide)

    def close(self) -> None:
        native.transfer_install(None)

    def decide(self, handle: int, call_id: int, refer_to: str, referred_by: str) -> int:
        """Called by native/transfer.c inside pjsip's REFER transaction: the response code."""
        try:
            return self._decide(handle, call_id, refer_to, referred_by)
        except Exception:
            log.exception("REFER on call %d: the transfer handler failed", call_id)
            return 500

    def _decide(self, handle: int, call_id: int, refer_to: str, referred_by: str) -> int:
        leg = self.leg_of_call(call_id)
        if leg is None or leg.ended:
            log.warning("REFER on pjsua call %d, which is no live leg: refusing", call_id)
            return 481
        uri, target, replaces = parse_refer_to(refer_to)
        request = TransferRequested(leg.id, handle, uri, target, replaces, referred_by)
        handler = getattr(self.ua.handler, "on_transfer", None)
        if handler is None:
            log.warning("%s: REFER to %s refused: no flows take transfers", leg.id, uri)
            return REFUSED
        code = int(handler(leg, request, Referral(handle, leg.id)))
        log.info("%s: REFER to %s%s: %d", leg.id, uri, " (attended)" if replaces else "", code)
        return code

    def leg_of_call(self, call_id: int) -> "Leg | None":
        for leg in self.ua.legs.values():
            call = getattr(leg, "call", None)
            if call is not None and getattr(leg, "transport", "sip") == "sip":
                try:
                    if call.getId() == call_id:
                        return leg
                except Exception:  # a released call
                    continue
        return None

    def leg_of_dialog(self, replaces: Replaces) -> "Leg | None":
        """The leg whose SIP dialog Replaces names (Call-ID and both tags)."""
        call_id = native.dialog_call(replaces.call_id, replaces.to_tag, replaces.from_tag)
        return self.leg_of_call(call_id) if call_id >= 0 else None
