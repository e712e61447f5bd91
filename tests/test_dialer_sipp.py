"""Outbound calls on real SIP: softswitch's dialer calling SIPp providers and SIPp phones.

Trunk and direct dials use a `Trunks` + `Dialer` pair built for the test on the in-process UA
(its connections point at the SIPp of the test); extension dials use the UA's own dialer and
phones registered to its registrar (users 1001-1003, passwords pass1001...)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from softswitch.config import Connection, Trunk
from softswitch.sip.events import LegAnswered, LegEnded, LegEvent, LegRinging
from tests.support.actors import register, uas_answer, uas_no_answer, uas_reject
from tests.support.pcap import write_rtp_pcap
from tests.support.ports import free_port
from tests.support.sipp import Sipp
from tests.support.waiting import wait_for

pytestmark = pytest.mark.sipp


class Events:
    """Collects one leg's events (appended on the UA thread, read here)."""

    def __init__(self) -> None:
        self.items: list[LegEvent] = []

    def __call__(self, event: LegEvent) -> None:
        self.items.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.items if isinstance(e, kind)]


def messages(sipp: Sipp) -> list[str]:
    """The SIP messages SIPp traced, one string each."""
    text = (sipp.trace_dir / "messages.log").read_text(errors="replace")
    return [m.strip() for m in re.split(r"-{20,} [^\n]*\n", text) if m.strip()]


def received_invites(sipp: Sipp) -> list[str]:
    return [m.split("\n", 1)[1].strip() for m in messages(sipp)
            if "message received" in m.split("\n", 1)[0] and m.split("\n", 1)[1].lstrip().startswith("INVITE ")]


def header(message: str, name: str) -> str | None:
    m = re.search(rf"^{re.escape(name)}:\s*(.*)$", message, flags=re.M | re.I)
    return m.group(1).strip() if m else None


@pytest.fixture
def outbound(ua) -> Iterator[Callable]:
    """Build a Trunks + Dialer pair on the session UA for a test's connections and trunks."""
    from softswitch.sip.dialer import Dialer
    from softswitch.sip.trunks import Trunks

    made: list = []

    def build(connections: dict[str, Connection], trunks: dict[str, Trunk]):
        cfg = dataclasses.replace(ua.config, connections=connections, trunks={**ua.config.trunks, **trunks})

        def create():
            t = Trunks(ua, cfg)
            return t, Dialer(ua, cfg, t)

        pair = ua.run_sync(create)
        made.append(pair)
        return pair[1]

    yield build
    for trunks, dialer in made:
        ua.run_sync(lambda: (dialer.shutdown(), trunks.shutdown()))


def hang_up_all(ua, legs) -> None:
    ua.run_sync(lambda: [leg.hangup(200, "test_done") for leg in legs if not leg.ended])
    wait_for(lambda: all(leg.ended for leg in legs), 5, "the legs to end")


# ---- trunks and connections ----------------------------------------------------------------

def _digest_ok(invite: str, user: str, password: str) -> bool:
    """Check an INVITE's Proxy-Authorization (MD5, qop=auth) the way a proxy would."""
    value = header(invite, "Proxy-Authorization") or ""
    p = dict(re.findall(r'(\w+)="?([^",]*)"?', value))
    ha1 = hashlib.md5(f"{user}:{p['realm']}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"INVITE:{p['uri']}".encode()).hexdigest()
    expected = hashlib.md5(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:{p['qop']}:{ha2}".encode()).hexdigest()
    return p.get("username") == user and p.get("response") == expected


@pytest.mark.parametrize("challenge", [401, 407])
def test_direct_dial_answers_the_providers_digest_challenge(ua, outbound, tmp_path: Path, challenge: int):
    uas = Sipp("uas_challenge_invite", calls=1, timeout_s=20, trace_dir=tmp_path / "uas",
               variables={"challenge": challenge, "user": "acct-42", "password": "s3cret"})
    with uas:
        dialer = outbound({"prov": Connection(name="prov", sip_server="127.0.0.1", port=uas.local_port,
                                              username="acct-42", password="s3cret")}, {})
        events = Events()
        leg = ua.run_sync(lambda: dialer.dial_direct(
            "prov", "5551234", caller_number="5550100", caller_name="Sales Desk",
            headers=[("X-Campaign", "spring-42")], on_event=events))
        wait_for(lambda: events.of(LegAnswered), 5, "the challenged call to be answered")
        hang_up_all(ua, [leg])
        result = uas.wait(10)
    assert result.ok, str(result)
    assert "auth=ok" in result.logs
    first, second = received_invites(uas)
    assert header(first, "Authorization") is None and header(first, "Proxy-Authorization") is None
    if challenge == 401:
        # SIPp's <verifyauth> accepted it (the scenario answers 403 otherwise).
        assert 'username="acct-42"' in header(second, "Authorization")
    else:
        assert _digest_ok(second, "acct-42", "s3cret"), header(second, "Proxy-Authorization")
    # Caller ID in From (its own account) and P-Asserted-Identity; the custom header went out.
    assert re.match(r'"Sales Desk" <sip:5550100@127\.0\.0\.1>', header(second, "From"))
    assert header(second, "P-Asserted-Identity") == '"Sales Desk" <sip:5550100@127.0.0.1>'
    assert header(second, "X-Campaign") == "spring-42"
    assert second.startswith(f"INVITE sip:5551234@127.0.0.1:{uas.local_port} SIP/2.0")
    assert [e.reason for e in events.of(LegEnded)] == ["test_done"]


def test_rejected_trunk_dial_ends_with_the_sip_code_and_offers_only_the_trunks_codecs(ua, outbound, tmp_path: Path):
    def priorities():
        return ua.run_sync(lambda: {c.codecId: c.priority for c in ua.ep.codecEnum2()})

    before = priorities()
    uas = uas_reject(486, ring_ms=300, timeout_s=20, trace_dir=tmp_path / "uas")
    with uas:
        dialer = outbound({"carrier": Connection(name="carrier", sip_server="127.0.0.1", port=uas.local_port)},
                          {"t_busy": Trunk(name="t_busy", connection="carrier", codecs=["PCMA", "telephone-event"],
                                           dtmf_methods=["info"])})
        events = Events()
        leg = ua.run_sync(lambda: dialer.dial_trunk("t_busy", "5559000", on_event=events))
        assert leg.direction == "outbound" and leg.dtmf_methods == ("info",)
        wait_for(lambda: events.of(LegEnded), 5, "the rejected call to end")
        result = uas.wait(10)
    assert result.ok, str(result)
    assert [type(e) for e in events.items] == [LegRinging, LegEnded]
    ended = events.of(LegEnded)[0]
    assert (ended.reason, ended.sip_code) == ("sip_486", 486)
    (invite,) = received_invites(uas)
    m_line = re.search(r"^m=audio \d+ RTP/AVP ([\d ]+)$", invite, flags=re.M).group(1).split()
    assert m_line[0] == "8" and "0" not in m_line and "9" not in m_line, m_line  # PCMA (+ telephone-event) only
    assert priorities() == before, "the global codec priorities were not restored after the dial"


def test_dial_errors_say_what_to_fix(ua, outbound):
    from softswitch.sip.dialer import DialError

    dialer = outbound({"prov": Connection(name="prov", sip_server="127.0.0.1", port=free_port())},
                      {"t_dyn": Trunk(name="t_dyn", mode="dynamic", username="dyn", password="pw"),
                       "t_ok": Trunk(name="t_ok", connection="prov")})
    cases = [
        (lambda: dialer.dial_trunk("nope", "100"), "no trunk named 'nope'"),
        (lambda: dialer.dial_trunk("trunk_main", "100"), "has no connection to dial through"),
        (lambda: dialer.dial_trunk("t_dyn", "100"), "has no live registration"),
        (lambda: dialer.dial_trunk("t_ok", "100@evil.example"), "is not a number or SIP user name"),
        (lambda: dialer.dial_trunk("t_ok", "100", headers=[("Via", "x")]), "set by softswitch itself"),
        (lambda: dialer.dial_trunk("t_ok", "100", headers=[("X-A", "1\r\nX-B: 2")]), "line break"),
        (lambda: dialer.dial_direct("missing", "100"), "no connection named 'missing'"),
        (lambda: dialer.dial_direct("prov", "100", codecs=["telephone-event"]), "none of the codecs"),
    ]
    for call, message in cases:
        with pytest.raises(DialError, match=re.escape(message)):
            ua.run_sync(call)
    assert not any(leg.direction == "outbound" for leg in list(ua.legs.values()))


def test_caller_id_accounts_are_reused_and_the_least_recently_used_is_deleted(ua):
    from softswitch.sip.dialer import _CallerIdAccounts
    from softswitch.sip.trunks import account_config

    def run():
        cache = _CallerIdAccounts(ua, capacity=4)
        make = lambda n: (lambda: account_config(ua, id_uri=f"sip:{n}@127.0.0.1"))  # noqa: E731
        try:
            first = cache.get(("", "100", ""), make(100))
            reused = cache.get(("", "100", ""), make(100)) is first
            for n in range(101, 110):
                cache.get(("", str(n), ""), make(n))
            # Deleted from pjsua (its 64 account slots are finite): its slot is free or reused.
            gone = not first.isValid() or first.getInfo().uri != "sip:100@127.0.0.1"
            return reused, len(cache), gone
        finally:
            cache.shutdown()

    reused, size, first_deleted = ua.run_sync(run)
    assert reused and size == 4 and first_deleted


# ---- extensions ---------------------------------------------------------------------------

@pytest.fixture
def phones(ua) -> Iterator[Callable]:
    """Register phones (user, SIPp port) to the session UA; unregistered afterwards."""
    registrar = f"127.0.0.1:{ua.config.sip.udp_port}"
    registered: list[tuple[str, int, int | None]] = []

    def add(user: str, port: int, contact_port: int | None = None) -> None:
        if contact_port is None:
            sipp = register(registrar, user, f"pass{user}", local_port=port, timeout_s=10)
        else:
            sipp = Sipp("register_uac_contact", registrar, local_port=port, auth=(user, f"pass{user}"), calls=1,
                        timeout_s=10, variables={"user": user, "domain": "127.0.0.1", "expires": 3600,
                                                 "contact_port": contact_port})
        with sipp:
            result = sipp.wait(10)
        assert result.ok, str(result)
        registered.append((user, port, contact_port))

    yield add
    for user, port, contact_port in registered:
        if contact_port is None:
            sipp = register(registrar, user, f"pass{user}", local_port=port, expires=0, timeout_s=10)
        else:
            sipp = Sipp("register_uac_contact", registrar, local_port=port, auth=(user, f"pass{user}"), calls=1,
                        timeout_s=10, variables={"user": user, "domain": "127.0.0.1", "expires": 0,
                                                 "contact_port": contact_port})
        with sipp:
            sipp.wait(10)
    wait_for(lambda: not ua.run_sync(lambda: [b for u, _, _ in registered
                                              for b in ua.registrar.bindings_for_extension(u)]),
             5, "the test phones to be unregistered")


def test_dial_extension_rings_every_registered_endpoint_in_parallel(ua, phones):
    port_a, port_b = free_port("both"), free_port("both")
    phones("1001", port_a)
    phones("1001", port_b)
    # The REGISTERs are over; each phone's socket now rings instead.
    with uas_no_answer(local_port=port_a, timeout_s=20) as a, uas_no_answer(local_port=port_b, timeout_s=20) as b:
        events = Events()
        legs = ua.run_sync(lambda: ua.dialer.dial_extension(["1001"], on_event=events))
        assert len(legs) == 2
        uris = sorted(ua.dialer.target_of(leg.id).uri for leg in legs)
        assert uris == sorted(f"sip:1001@127.0.0.1:{p};transport=UDP" for p in (port_a, port_b))
        wait_for(lambda: len(events.of(LegRinging)) == 2, 5, "both phones to ring")
        hang_up_all(ua, legs)
        results = a.wait(10), b.wait(10)
    assert all(r.ok for r in results), "\n".join(map(str, results))  # each got INVITE, then CANCEL


def test_dial_extension_only_free_skips_an_endpoint_in_a_call(ua, phones, tmp_path: Path):
    port_a, port_b = free_port("both"), free_port("both")
    phones("1002", port_a)
    phones("1002", port_b)
    pcap = tmp_path / "silence.pcap"
    write_rtp_pcap(pcap, np.zeros(8000, dtype=np.int16))
    assert ua.run_sync(lambda: ua.dialer.dial_extension(["1003"])) == []  # nothing registered: unavailable
    legs: list = []
    try:
        with uas_answer(pcap, local_port=port_a, timeout_s=30) as a:
            with uas_no_answer(local_port=port_b, timeout_s=20) as b:
                first = Events()
                legs += ua.run_sync(lambda: ua.dialer.dial_extension(["1002"], on_event=first))
                assert len(legs) == 2
                wait_for(lambda: first.of(LegAnswered), 5, "phone A to answer")
                answered = next(leg for leg in legs if leg.answered)
                assert f":{port_a};" in ua.dialer.target_of(answered.id).uri
                ringing = [leg for leg in legs if leg is not answered]
                hang_up_all(ua, ringing)  # the dial model would cancel the loser
                assert b.wait(10).ok
            # The availability the queues read agrees: only B is free.
            free = ua.run_sync(lambda: ua.extensions.endpoints("1002", only_free=True))
            assert [b.contact for b in free] == [f"sip:1002@127.0.0.1:{port_b};transport=UDP"]
            with uas_no_answer(local_port=port_b, timeout_s=20) as b2:
                second = Events()
                again = ua.run_sync(lambda: ua.dialer.dial_extension(["1002"], on_event=second))
                legs += again
                # Phone A is in a call: only B rings.
                assert [f":{port_b};" in ua.dialer.target_of(leg.id).uri for leg in again] == [True]
                wait_for(lambda: second.of(LegRinging), 5, "phone B to ring")
                hang_up_all(ua, again)
                assert b2.wait(10).ok
            hang_up_all(ua, [answered])
            assert a.wait(10).ok
    finally:
        ua.run_sync(lambda: [leg.hangup(200, "test_cleanup") for leg in legs if not leg.ended])


def test_dial_extension_calls_a_natted_phone_where_its_register_came_from(ua, phones):
    source, unreachable = free_port("both"), free_port("both")
    phones("1003", source, contact_port=unreachable)
    (binding,) = ua.run_sync(lambda: ua.registrar.bindings_for_extension("1003"))
    assert binding.nat and binding.contact == f"sip:1003@127.0.0.1:{unreachable};transport=UDP"
    with uas_no_answer(local_port=source, timeout_s=20) as phone:
        events = Events()
        (leg,) = ua.run_sync(lambda: ua.dialer.dial_extension(["1003"], on_event=events))
        assert f"127.0.0.1:{source}" in ua.dialer.target_of(leg.id).uri
        wait_for(lambda: events.of(LegRinging), 5, "the phone to ring at its source address")
        hang_up_all(ua, [leg])
        assert phone.wait(10).ok
