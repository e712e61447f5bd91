"""Ready-made SIPp actors: the scenarios in tests/sipp/ with their command-line values filled in.

Each returns an unstarted ``Sipp`` for one call (``calls=1``); use it as a context manager.
Extra keyword arguments (timeout_s, trace_dir, transport, ...) go to ``Sipp``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.sipp import Sipp


def uac_call(remote: str, pcap: Path | str, *, number: str = "2000", caller: str = "1000", hold_ms: int = 3000, **kw: Any) -> Sipp:
    """Call ``number``, play ``pcap`` and hang up after ``hold_ms`` (uac_call_pcap.xml)."""
    kw.setdefault("calls", 1)
    return Sipp("uac_call_pcap", remote, service=number, variables={"caller": caller, "hold_ms": hold_ms}, keys={"pcap": pcap}, **kw)


def uac_until_bye(
    remote: str, pcap: Path | str, *, number: str = "2000", caller: str = "1000", bye_timeout_ms: int = 30000, **kw: Any
) -> Sipp:
    """Call ``number``, play ``pcap`` and wait for the remote's BYE (uac_call_until_bye.xml)."""
    kw.setdefault("calls", 1)
    variables = {"caller": caller, "bye_timeout_ms": bye_timeout_ms}
    return Sipp("uac_call_until_bye", remote, service=number, variables=variables, keys={"pcap": pcap}, **kw)


def uac_expect_failure(remote: str, *, number: str = "2000", caller: str = "1000", cancel_after_ms: int = 5000, **kw: Any) -> Sipp:
    """Call expected to be refused or unanswered; check ``result.log_values("final_status")``."""
    kw.setdefault("calls", 1)
    variables = {"caller": caller, "cancel_after_ms": cancel_after_ms}
    return Sipp("uac_expect_failure", remote, service=number, variables=variables, **kw)


def uas_answer(pcap: Path | str, *, answer_delay_ms: int = 0, hangup_after_ms: int | None = None, **kw: Any) -> Sipp:
    """Answer (after ``answer_delay_ms``) and play ``pcap`` (PCMU); wait for the BYE, or send
    one ``hangup_after_ms`` after the ACK (uas_answer_pcap.xml / uas_answer_then_bye.xml)."""
    kw.setdefault("calls", 1)
    if hangup_after_ms is None:
        return Sipp("uas_answer_pcap", variables={"answer_delay_ms": answer_delay_ms}, keys={"pcap": pcap}, **kw)
    variables = {"answer_delay_ms": answer_delay_ms, "hold_ms": hangup_after_ms}
    return Sipp("uas_answer_then_bye", variables=variables, keys={"pcap": pcap}, **kw)


def uas_no_answer(**kw: Any) -> Sipp:
    """Ring until CANCELled (uas_no_answer.xml)."""
    kw.setdefault("calls", 1)
    return Sipp("uas_no_answer", **kw)


def uas_reject(status: int = 486, *, ring_ms: int = 0, **kw: Any) -> Sipp:
    """Ring ``ring_ms``, then reject with ``status`` (uas_reject.xml lists the codes it knows)."""
    kw.setdefault("calls", 1)
    return Sipp("uas_reject", variables={"status": status, "ring_ms": ring_ms}, **kw)


def register(remote: str, user: str, password: str, *, domain: str | None = None, expires: int = 3600, **kw: Any) -> Sipp:
    """REGISTER ``user`` answering the digest challenge (register_uac.xml)."""
    kw.setdefault("calls", 1)
    variables = {"user": user, "domain": domain or remote.split(":")[0], "expires": expires}
    return Sipp("register_uac", remote, auth=(user, password), variables=variables, **kw)


def register_phone(remote: str, user: str, local_port: int, *, password: str | None = None, expires: int = 3600,
                   timeout_s: float = 10.0) -> Any:
    """An agent's phone signing in: REGISTER ``user`` (digest; password ``pass<user>`` unless
    given) from ``local_port`` and wait for the 200. The port is free again afterwards, so the
    phone's answering scenario (``uas_answer(..., local_port=local_port)``) can take it: that is
    where softswitch sends the calls for this registration. Returns the SippResult."""
    sipp = register(remote, user, password or f"pass{user}", local_port=local_port, expires=expires,
                    timeout_s=timeout_s)
    with sipp:
        return sipp.wait(timeout_s + 5)
