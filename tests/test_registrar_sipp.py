"""The registrar and the INVITE gate on real SIP: SIPp phones and a small Python SIP client
(for what SIPp scenarios make awkward) against a real softswitch process."""

from __future__ import annotations

import re

import pytest

from tests.support.sipclient import SipClient
from tests.support.sipp import Sipp

pytestmark = pytest.mark.sipp


def register_with_sipp(server, user: str, password: str, transport: str = "u1", expires: int = 3600) -> object:
    sipp = Sipp("register_uac", f"127.0.0.1:{server.sip_port}", transport=transport, calls=1, auth=(user, password),
                variables={"user": user, "domain": "127.0.0.1", "expires": expires}, timeout_s=15)
    with sipp:
        return sipp.wait(15)


def contacts_of(server, user: str, password: str) -> list[str]:
    """Ask the registrar (a REGISTER with no Contact is a query) which contacts are bound."""
    with SipClient(("127.0.0.1", server.sip_port)) as c:
        resp = c.register(user, password, contacts=[], expires=None)
    assert resp.status == 200, resp.raw
    return resp.contacts()


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_phone_registers_with_digest_over_udp_and_tcp(server_factory, transport):
    server = server_factory()
    result = register_with_sipp(server, "1001", "pass1001", transport)
    assert result.ok, str(result)
    contacts = contacts_of(server, "1001", "pass1001")
    assert len(contacts) == 1
    assert ("transport=tcp" in contacts[0].lower()) == (transport == "t1")
    assert server.wait_for_log("registered 1001 (1001)")


def test_reregistration_refreshes_and_star_unregisters_everything(server_factory):
    server = server_factory()
    with SipClient(("127.0.0.1", server.sip_port)) as phone:
        first = phone.register("1002", "pass1002", expires=120)
        assert first.status == 200
        again = phone.register("1002", "pass1002", expires=300)
        assert again.status == 200
        assert len(again.contacts()) == 1 and "expires=300" in again.contacts()[0]
        # A second device of the same extension adds a binding.
        second = phone.register("1002", "pass1002", contacts=["<sip:1002@127.0.0.1:5999>"], expires=300)
        assert len(second.contacts()) == 2
        gone = phone.register("1002", "pass1002", contacts=["*"], expires=0)
        assert gone.status == 200 and gone.contacts() == []
    assert contacts_of(server, "1002", "pass1002") == []
    assert server.wait_for_log("unregistered 1002")


def test_star_without_expires_zero_is_a_bad_request(server_factory):
    server = server_factory()
    with SipClient(("127.0.0.1", server.sip_port)) as phone:
        resp = phone.register("1001", "pass1001", contacts=["*"], expires=60)
    assert resp.status == 400


def test_binding_expires(server_factory):
    server = server_factory(registrar={"min_expires": 1})
    with SipClient(("127.0.0.1", server.sip_port)) as phone:
        assert phone.register("1003", "pass1003", expires=2).status == 200
    assert server.wait_for_log("expired 1003", timeout=6)
    assert contacts_of(server, "1003", "pass1003") == []


def test_too_short_expiry_gets_423_with_min_expires(server_factory):
    server = server_factory(registrar={"min_expires": 120})
    sipp = Sipp("register_too_brief", f"127.0.0.1:{server.sip_port}", calls=1, auth=("1001", "pass1001"),
                variables={"user": "1001", "domain": "127.0.0.1", "expires": 30}, timeout_s=15)
    with sipp:
        result = sipp.wait(15)
    assert result.ok, str(result)
    with SipClient(("127.0.0.1", server.sip_port)) as phone:
        resp = phone.register("1001", "pass1001", expires=30)
    assert resp.status == 423 and resp.header("Min-Expires") == "120"


def test_long_expiry_is_shortened_to_max(server_factory):
    server = server_factory(registrar={"max_expires": 900})
    with SipClient(("127.0.0.1", server.sip_port)) as phone:
        resp = phone.register("1001", "pass1001", expires=7200)
    assert resp.status == 200 and "expires=900" in resp.contacts()[0]


def test_sha256_digest_is_accepted_and_offered_when_configured(server_factory):
    server = server_factory(registrar={"algorithms": ["MD5", "SHA-256"]})
    with SipClient(("127.0.0.1", server.sip_port)) as phone:
        resp = phone.register("1001", "pass1001", algorithm="SHA-256")
        assert resp.status == 200
        phone.send(phone.request("REGISTER", f"sip:127.0.0.1:{server.sip_port}", from_user="1001",
                                 headers=[("Contact", "<sip:1001@127.0.0.1:5000>")]))
        challenge = phone.final()
    algorithms = [c.get("algorithm") for c in challenge.challenges()]
    assert algorithms == ["MD5", "SHA-256"]
    assert all(c.get("qop") == "auth" for c in challenge.challenges())


def test_unknown_user_gets_exactly_the_answer_of_a_wrong_password(server_factory):
    server = server_factory(security={"auth_failure_limit": 0})
    answers = []
    for user, password in (("1001", "wrong"), ("7777", "wrong")):
        with SipClient(("127.0.0.1", server.sip_port)) as phone:
            resp = phone.register(user, password)
        answers.append((resp.status, resp.reason, sorted(k for k, _ in resp.headers)))
    assert answers[0] == answers[1]
    assert answers[0][0] == 403


def test_replayed_nonce_count_is_refused(server_factory):
    server = server_factory()
    with SipClient(("127.0.0.1", server.sip_port)) as phone:
        uri = f"sip:127.0.0.1:{server.sip_port}"
        headers = [("Contact", f"<sip:1001@127.0.0.1:{phone.local_port}>"), ("Expires", "600")]
        phone.send(phone.request("REGISTER", uri, from_user="1001", headers=headers))
        challenge = phone.final()
        ok = phone.answer_challenge("REGISTER", uri, challenge, "1001", "pass1001", headers=headers, nc=1)
        assert ok.status == 200
        # Same nonce, same nc, new transaction: a replay. The registrar asks again (stale).
        replay = phone.answer_challenge("REGISTER", uri, challenge, "1001", "pass1001", headers=headers, nc=1)
        assert replay.status == 401
        assert any(c.get("stale", "").lower() == "true" for c in replay.challenges())
        # A higher nc on the same nonce is fine.
        assert phone.answer_challenge("REGISTER", uri, challenge, "1001", "pass1001", headers=headers,
                                      nc=2).status == 200


def test_out_of_order_cseq_on_the_same_call_id_is_refused(server_factory):
    server = server_factory()
    with SipClient(("127.0.0.1", server.sip_port)) as phone:
        uri = f"sip:127.0.0.1:{server.sip_port}"
        headers = [("Contact", f"<sip:1001@127.0.0.1:{phone.local_port}>"), ("Expires", "600")]
        phone.send(phone.request("REGISTER", uri, from_user="1001", headers=headers, cseq=10))
        challenge = phone.final()
        assert phone.answer_challenge("REGISTER", uri, challenge, "1001", "pass1001", headers=headers,
                                      cseq=11).status == 200
        older = phone.answer_challenge("REGISTER", uri, challenge, "1001", "pass1001", headers=headers, cseq=5)
    assert older.status == 500


def test_register_for_someone_elses_aor_is_forbidden(server_factory):
    server = server_factory()
    with SipClient(("127.0.0.1", server.sip_port)) as phone:
        uri = f"sip:127.0.0.1:{server.sip_port}"
        headers = [("Contact", f"<sip:1002@127.0.0.1:{phone.local_port}>")]
        phone.send(phone.request("REGISTER", uri, from_user="1002", headers=headers))
        challenge = phone.final()
        # 1001's credentials for 1002's address of record.
        resp = phone.answer_challenge("REGISTER", uri, challenge, "1001", "pass1001", headers=headers,
                                      to_user="1002")
    assert resp.status == 403


def test_options_is_answered_and_allow_lists_register(server_factory):
    server = server_factory()
    with SipClient(("127.0.0.1", server.sip_port)) as c:
        c.send(c.request("OPTIONS", f"sip:127.0.0.1:{server.sip_port}", from_user="probe"))
        resp = c.final()
    assert resp.status == 200
    assert "REGISTER" in (resp.header("Allow") or "")


INVITE_SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
              "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def invite(client: SipClient, port: int, user: str = "1001", target: str = "5551234") -> tuple[str, list]:
    uri = f"sip:{target}@127.0.0.1:{port}"
    headers = [("Contact", f"<sip:{user}@{client.local_ip}:{client.local_port}>"), ("Content-Type", "application/sdp")]
    client.send(client.request("INVITE", uri, from_user=user, to_user=target, headers=headers, body=INVITE_SDP))
    return uri, headers


def test_invite_from_an_unknown_source_is_challenged_and_never_routed(server_factory):
    # 127.0.0.2 is no trunk: its INVITE must be challenged, and a wrong answer refused.
    server = server_factory()
    with SipClient(("127.0.0.1", server.sip_port), local_ip="127.0.0.2") as caller:
        uri, headers = invite(caller, server.sip_port)
        challenge = caller.final()
        assert challenge.status == 407
        refused = caller.answer_challenge("INVITE", uri, challenge, "1001", "guess", headers=headers,
                                          body=INVITE_SDP, to_user="5551234")
        assert refused.status == 403
    assert server.wait_for_log("security event auth_failure from 127.0.0.2")
    assert "security event invite_challenged from 127.0.0.2" in server.text()
    # No leg was ever created for it: nothing reached the call handler.
    assert "live legs)" not in server.text()


def test_invite_with_extension_credentials_is_admitted_as_that_extension(server_factory):
    server = server_factory()
    with SipClient(("127.0.0.1", server.sip_port), local_ip="127.0.0.2") as phone:
        uri, headers = invite(phone, server.sip_port, user="1002")
        challenge = phone.final()
        answered = phone.answer_challenge("INVITE", uri, challenge, "1002", "pass1002", headers=headers,
                                          body=INVITE_SDP, to_user="5551234")
        assert answered.status == 200  # the welcome handler answers
    assert server.wait_for_log("via extension 1002")


def test_trunk_call_is_admitted_by_source_address(server_factory):
    server = server_factory(trunks={"carrier": {"address": "127.0.0.3", "port": 0}})
    with SipClient(("127.0.0.1", server.sip_port), local_ip="127.0.0.3") as carrier:
        invite(carrier, server.sip_port)
        assert carrier.final().status == 200
    assert server.wait_for_log("via trunk carrier")


def test_scanner_user_agent_is_dropped_silently(server_factory):
    server = server_factory()
    with SipClient(("127.0.0.1", server.sip_port), local_ip="127.0.0.4") as scanner:
        scanner.send(scanner.request("OPTIONS", f"sip:100@127.0.0.1:{server.sip_port}", from_user="100",
                                     headers=[("User-Agent", "friendly-scanner")]))
        assert scanner.receive(timeout=1.0) is None
    assert server.wait_for_log("security event user_agent_refused from 127.0.0.4")


def test_wrong_password_flood_is_throttled_while_other_sources_register(server_factory):
    server = server_factory(security={"auth_failure_limit": 10, "block_seconds": 60},
                            logging={"format": "json"})
    answered = unanswered = 0
    legit_ok = 0
    with SipClient(("127.0.0.1", server.sip_port), local_ip="127.0.0.5", timeout=0.1) as attacker, \
            SipClient(("127.0.0.1", server.sip_port)) as phone:
        for i in range(200):
            resp = attacker.register("1001", f"guess{i}")
            if resp is not None and resp.status == 403:
                answered += 1
            elif resp is None:
                unanswered += 1
            if i % 20 == 0:  # the legitimate phone registers meanwhile, from another source
                legit_ok += phone.register("1001", "pass1001").status == 200
    assert answered == 10, "the source should be blocked after 10 failures"
    assert unanswered == 190
    assert legit_ok == 10
    # Security events are JSON lines a log watcher can parse.
    import json
    events = [json.loads(line) for line in server.text().splitlines() if line.startswith("{")]
    security = [e for e in events if e.get("security")]
    assert any(e["security"] == "auth_failure_blocked" and e["source_ip"] == "127.0.0.5" for e in security)
    assert all(e["source_ip"] == "127.0.0.5" for e in security)


def test_request_flood_from_one_source_is_cut_while_others_are_served(server_factory):
    server = server_factory(security={"flood_requests_per_second": 20, "flood_burst": 40, "block_seconds": 30})
    answered = 0
    with SipClient(("127.0.0.1", server.sip_port), local_ip="127.0.0.6", timeout=0.05) as flooder:
        for i in range(200):
            flooder.send(flooder.request("OPTIONS", f"sip:127.0.0.1:{server.sip_port}", from_user="f"))
            answered += flooder.final(timeout=0.05) is not None
    assert 35 <= answered <= 45, answered  # the burst, then nothing (the source is blocked)
    with SipClient(("127.0.0.1", server.sip_port)) as other:
        other.send(other.request("OPTIONS", f"sip:127.0.0.1:{server.sip_port}", from_user="o"))
        assert other.final().status == 200
    assert server.wait_for_log("security event flood_blocked from 127.0.0.6")


def test_dynamic_trunk_registers_and_its_calls_arrive_as_trunk_calls(server_factory):
    server = server_factory(trunks={"trunk_main": {"address": "127.0.0.1"},
                                    "branch_pbx": {"mode": "dynamic", "username": "pbx7", "password": "s3cret"}})
    with SipClient(("127.0.0.1", server.sip_port), local_ip="127.0.0.7") as pbx:
        assert pbx.register("pbx7", "s3cret").status == 200
        invite(pbx, server.sip_port, user="pbx7")
        assert pbx.final().status == 200
    assert server.wait_for_log("via trunk branch_pbx")
    # Another source presenting no credentials is still challenged.
    with SipClient(("127.0.0.1", server.sip_port), local_ip="127.0.0.8") as stranger:
        invite(stranger, server.sip_port)
        assert stranger.final().status == 407


def test_trunk_codec_allow_list_limits_the_negotiated_codecs(server_factory):
    server = server_factory(trunks={"trunk_main": {"address": "127.0.0.1"},
                                    "alaw_only": {"address": "127.0.0.9", "codecs": ["PCMA"],
                                                  "dtmf_methods": ["info"]}})
    offer = ("v=0\r\no=- 1 1 IN IP4 127.0.0.9\r\ns=-\r\nc=IN IP4 127.0.0.9\r\nt=0 0\r\n"
             "m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
             "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n")
    with SipClient(("127.0.0.1", server.sip_port), local_ip="127.0.0.9") as carrier:
        headers = [("Contact", f"<sip:c@127.0.0.9:{carrier.local_port}>"), ("Content-Type", "application/sdp")]
        carrier.send(carrier.request("INVITE", f"sip:555@127.0.0.1:{server.sip_port}", from_user="c",
                                     headers=headers, body=offer))
        answer = carrier.final()
        assert answer.status == 200, answer.raw
        m_line = re.search(r"m=audio \d+ RTP/AVP ([\d ]+)", answer.body).group(1).split()
        assert m_line == ["8"], answer.body  # PCMA only, and no telephone-event (DTMF by INFO only)
    with SipClient(("127.0.0.1", server.sip_port), local_ip="127.0.0.9") as carrier:
        pcmu_only = offer.replace("RTP/AVP 0 8 101", "RTP/AVP 0").replace("a=rtpmap:8 PCMA/8000\r\n", "")
        headers = [("Contact", f"<sip:c@127.0.0.9:{carrier.local_port}>"), ("Content-Type", "application/sdp")]
        carrier.send(carrier.request("INVITE", f"sip:555@127.0.0.1:{server.sip_port}", from_user="c",
                                     headers=headers, body=pcmu_only))
        assert carrier.final().status == 488


def test_a_retransmitted_register_gets_the_same_answer(server_factory):
    server = server_factory()
    with SipClient(("127.0.0.1", server.sip_port)) as phone:
        uri = f"sip:127.0.0.1:{server.sip_port}"
        request = phone.request("REGISTER", uri, from_user="1001", branch="z9hG4bKretransmitted1",
                                headers=[("Contact", f"<sip:1001@127.0.0.1:{phone.local_port}>")])
        phone.send(request)
        first = phone.final()
        phone.send(request)  # the same bytes again: a UDP retransmission
        second = phone.final()
    assert first.status == second.status == 401
    assert first.challenges() == second.challenges()  # same nonce: answered from the cache
