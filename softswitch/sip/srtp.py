"""SRTP (SDES, RFC 4568) policy: which `srtp` use applies to each call, and how accounts carry it.

pjsua2 2.12 sets SRTP per account (`AccountMediaConfig.srtpUse`); its per-call hook
(`Call.onCreateMediaTransportSrtp`) is never installed by the 2.12 Endpoint. So:
- **Inbound** calls all arrive on the LocalAccount: it is `optional` as soon as any trunk or
  extension set allows SRTP (else `disabled`, as before), and the native gate applies each
  source's own use to the INVITE's offer first (a plain offer to a `mandatory` source gets 488,
  a `disabled` source's crypto lines are removed so the answer is plain RTP).
- **Outbound** calls use an account whose srtpUse is the target's (connection, dynamic trunk or
  extension set of the registered phone); the dialer keeps one per use where it needs one.

SDES keys travel in the SDP. pjsua by default refuses SRTP unless the signalling is TLS
(`srtpSecureSignaling=1`); softswitch sets it to 0 on every account, so that `optional` never
refuses plain calls over UDP and SRTP works with trunks that do not speak TLS. The keys are only
secret when the signalling is: configure TLS wherever SRTP matters (see README "TLS and SRTP").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pjsua2 as pj

if TYPE_CHECKING:
    from ..config import Config

DISABLED, OPTIONAL, MANDATORY = "disabled", "optional", "mandatory"
_PJ_USE = {DISABLED: pj.PJMEDIA_SRTP_DISABLED, OPTIONAL: pj.PJMEDIA_SRTP_OPTIONAL,
           MANDATORY: pj.PJMEDIA_SRTP_MANDATORY}
# The native gate's codes (native/registrar_internal.h srtp_use_t): 0 leaves the offer alone.
GATE_UNTOUCHED = 0
_GATE_USE = {DISABLED: 1, OPTIONAL: 2, MANDATORY: 3}


def inbound_srtp(config: "Config") -> bool:
    """Whether any source of inbound calls may use SRTP (the LocalAccount is then `optional`)."""
    return (any(t is not None and t.srtp != DISABLED for t in config.trunks.values())
            or any(s is not None and s.srtp != DISABLED for s in config.extension_sets.values()))


def extension_set_use(config: "Config", group: str) -> str:
    """The srtp use of one extension_users set (`extension_sets.<set>.srtp`)."""
    settings = config.extension_sets.get(group)
    return settings.srtp if settings is not None else DISABLED


def gate_use(config: "Config", use: str) -> int:
    """What the native gate does to offers from a source with this use."""
    return _GATE_USE[use] if inbound_srtp(config) else GATE_UNTOUCHED


def apply(media_config: "pj.AccountMediaConfig", use: str) -> None:
    """Set an account's SRTP use (never requiring TLS signalling: see the module docstring)."""
    media_config.srtpUse = _PJ_USE[use]
    media_config.srtpSecureSignaling = 0
