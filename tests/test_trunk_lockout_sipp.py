"""A trunk cannot be locked out (issue 14, security defect 1): wrong passwords and request floods
sent with a trunk's source address (trivial to forge over UDP) are limited on their own and never
put the address on the block list, so the trunk's next call is answered and carries audio; an
INVITE flood from the trunk's address gets 503 with Retry-After, never silence; sources that are
no trunk's are blocked as before. Real SIP from several loopback addresses (127.0.0.20-23)."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.support.audio import ulaw_decode
from tests.support.callcentre import heard
from tests.support.ports import free_port
from tests.support.sipclient import Response, SipClient

pytestmark = pytest.mark.sipp

TRUNK_IP = "127.0.0.20"  # the carrier's address, and the attacker's forged source
CRACKER_IP, PHONE_IP, FLOODER_IP = "127.0.0.21", "127.0.0.22", "127.0.0.23"
DYNAMIC_IP = "127.0.0.24"  # where the dynamic trunk `pbx` registers from
FAILURE_LIMIT = 3

TONE_FLOW = """
name: lockout
triggers:
  - name: carrier
    trigger: trunk
    params: {ref: carrier}
    next: {Call: [answer]}
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [answer]}
  - name: pbx
    trigger: trunk
    params: {ref: pbx}
    next: {Call: [answer]}
nodes:
  - name: answer
    op: call.answer
    next: {Result: [tone]}
  - name: tone
    op: media.playTone
    params: {tone: custom, customTone: "440/1000", repeatInfinite: true}
"""


def edge_server(server_factory, tmp_path: Path, *, carrier: dict | None = None, **sections):
    """A server with the carrier trunk on TRUNK_IP, small edge limits (so the attacks are short), the
    dynamic trunk `pbx`, the tone flow, JSON logs and /metrics."""
    flow = tmp_path / "lockout-flow.yaml"
    flow.write_text(TONE_FLOW)
    security = {"auth_failure_limit": FAILURE_LIMIT, "block_seconds": 60, "flood_requests_per_second": 10,
                "flood_burst": 10, "trunk_options_per_second": 2, "trunk_requests_per_second": 5}
    security.update(sections.pop("security", {}))
    return server_factory(
        flows=[str(flow)], security=security,
        trunks={"trunk_main": {"address": "127.0.0.1", "port": 0},
                "carrier": {"address": TRUNK_IP, "port": 0, **(carrier or {})},
                "pbx": {"mode": "dynamic", "username": "pbx7", "password": "s3cret"}},
        logging={"level": "info", "format": "json", "pjsip_level": 1},
        metrics={"http_listen": f"127.0.0.1:{free_port('tcp')}"}, **sections)


def security_events(server) -> list[dict]:
    """The `security` events of the server's JSON log."""
    events = []
    for line in server.text().splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("security"):
                events.append(doc)
    return events


def decisions(server) -> dict[str, float]:
    """softswitch_security_decisions_total by decision, from /metrics."""
    return {m.group(1): v for k, v in server.metrics().items()
            if (m := re.fullmatch(r'softswitch_security_decisions_total\{decision="(\w+)"\}', k))}


def sdp(ip: str, rtp_port: int) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def send_invite(client: SipClient, port: int, body: str, branch: str | None = None) -> str:
    uri = f"sip:5550100@127.0.0.1:{port}"
    client.send(client.request("INVITE", uri, from_user="carrier", to_user="5550100", body=body, branch=branch,
                               headers=[("Contact", f"<sip:carrier@{client.local_ip}:{client.local_port}>"),
                                        ("Content-Type", "application/sdp")]))
    return uri


def ack_refusal(client: SipClient, uri: str, answer: Response, branch: str) -> None:
    """The ACK of a non-2xx answer: same branch as the INVITE, the answer's To tag."""
    tag = re.search(r";tag=([^;>\s]+)", answer.header("To") or "").group(1)
    client.send(client.request("ACK", uri, from_user="carrier", to_user="5550100", cseq=1, to_tag=tag,
                               branch=branch))


def forged_register(client: SipClient, port: int, i: int) -> Response | None:
    """A REGISTER with made-up credentials, as anyone can send with a forged source address (they
    never see the nonce, which goes to the real address): the registrar refuses it as a failure."""
    uri = f"sip:127.0.0.1:{port}"
    auth = (f'Digest username="1001", realm="softswitch", nonce="forged{i}", uri="{uri}", '
            f'response="{"0" * 32}", algorithm=MD5')
    client.send(client.request("REGISTER", uri, from_user="1001", headers=[
        ("Contact", f"<sip:1001@{client.local_ip}:{client.local_port}>"), ("Authorization", auth)]))
    return client.final()


def options_burst(client: SipClient, port: int, n: int, wait: float = 1.0) -> int:
    """Send `n` OPTIONS back to back, then count the answers that arrive within `wait`."""
    for _ in range(n):
        client.send(client.request("OPTIONS", f"sip:127.0.0.1:{port}", from_user="probe"))
    answered = 0
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        answered += client.receive(timeout=max(0.01, deadline - time.monotonic())) is not None
    return answered


def pcmu_received(sock: socket.socket, seconds: float) -> np.ndarray:
    """The PCMU audio of the RTP arriving on `sock` for `seconds`, decoded."""
    payloads = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            packet = sock.recv(2048)
        except (socket.timeout, TimeoutError):
            continue
        if len(packet) > 12 and packet[1] & 0x7F == 0:
            payloads.append(packet[12:])
    return ulaw_decode(b"".join(payloads)) if payloads else np.zeros(0, np.int16)


def test_forged_register_failures_and_options_flood_do_not_lock_out_the_trunks_calls(server_factory, tmp_path):
    server = edge_server(server_factory, tmp_path)
    port = server.sip_port

    # 1. Wrong credentials with the trunk's address: answered 403 (never a block) up to the
    # address's own request limit, the rest dropped. Before the fix the address was blocked after
    # FAILURE_LIMIT failures, and every later request from it (the trunk's calls too) went unanswered.
    with SipClient(("127.0.0.1", port), local_ip=TRUNK_IP, timeout=0.2) as forger:
        answers = [forged_register(forger, port, i) for i in range(20)]
    refused = [a for a in answers if a is not None]
    assert all(a.status == 403 for a in refused), [a.status for a in refused]
    assert len(refused) > FAILURE_LIMIT, "the trunk's address was blocked by forged auth failures"
    assert len(refused) < len(answers), "REGISTERs from the trunk's address were not limited"

    # 2. An OPTIONS burst far over the flood rate from the trunk's address: a few answered, the rest
    # dropped by the address's own OPTIONS limit (2 a second here), nothing blocked.
    with SipClient(("127.0.0.1", port), local_ip=TRUNK_IP) as prober:
        answered = options_burst(prober, port, 30)
    assert 1 <= answered < 30, answered

    # 3. The carrier's real call from that address is admitted, answered and carries the flow's tone.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp, \
            SipClient(("127.0.0.1", port), local_ip=TRUNK_IP, timeout=5) as carrier:
        rtp.bind((TRUNK_IP, 0))
        uri = send_invite(carrier, port, sdp(TRUNK_IP, rtp.getsockname()[1]))
        answer = carrier.final()
        assert answer is not None, "the trunk's INVITE went unanswered after the attack"
        assert answer.status == 200, answer.raw
        tag = re.search(r";tag=([^;>\s]+)", answer.header("To")).group(1)
        carrier.send(carrier.request("ACK", uri, from_user="carrier", to_user="5550100", cseq=1, to_tag=tag))
        audio = pcmu_received(rtp, 1.5)
        carrier.send(carrier.request("BYE", uri, from_user="carrier", to_user="5550100", to_tag=tag))
        bye = carrier.final()
    assert bye is not None and bye.status == 200 and "BYE" in (bye.header("CSeq") or ""), bye and bye.raw
    assert len(audio) >= 8000 * 0.5 and heard(audio, 440), f"{len(audio)} samples, no 440 Hz tone"

    # A real phone behind the trunk's address still registers (its valid REGISTER always passes).
    with SipClient(("127.0.0.1", port), local_ip=TRUNK_IP) as phone:
        registered = phone.register("1002", "pass1002")
    assert registered is not None and registered.status == 200

    # Counted in /metrics, and logged as security events naming the decisions.
    counts = decisions(server)
    print(f"trunk address: {len(refused)}/{len(answers)} forged REGISTERs answered 403, {answered}/30 OPTIONS "
          f"answered; decisions {counts}")
    assert counts["trunk_auth_failure"] == len(refused)
    assert counts["trunk_not_blocked"] >= 1  # FAILURE_LIMIT reached, the address left unblocked
    assert counts["trunk_requests_dropped"] == len(answers) - len(refused)
    assert counts["trunk_options_dropped"] == 30 - answered
    assert counts["trunk_over_flood_rate"] >= 1
    assert counts["blocked_auth_failures"] == counts["blocked_flood"] == counts["dropped_blocked_source"] == 0
    names = {e["security"] for e in security_events(server) if e["source_ip"] == TRUNK_IP}
    assert {"trunk_auth_failure", "trunk_auth_failure_limit", "trunk_requests_limited",
            "trunk_options_limited", "trunk_over_flood_rate"} <= names, names
    assert not names & {"auth_failure_blocked", "flood_blocked"}, names


def test_a_dynamic_trunks_address_is_not_blocked_and_its_refresh_and_calls_go_on(server_factory, tmp_path):
    server = edge_server(server_factory, tmp_path)
    port = server.sip_port
    uri = f"sip:127.0.0.1:{port}"
    with SipClient(("127.0.0.1", port), local_ip=DYNAMIC_IP, timeout=5) as pbx:
        headers = [("Contact", f"<sip:pbx7@{DYNAMIC_IP}:{pbx.local_port}>"), ("Expires", "600")]
        pbx.send(pbx.request("REGISTER", uri, from_user="pbx7", headers=headers))
        challenge = pbx.final()
        assert challenge is not None and challenge.status == 401
        assert pbx.answer_challenge("REGISTER", uri, challenge, "pbx7", "s3cret", headers=headers,
                                    nc=1).status == 200

        # Its registered address is a trunk address now: forged failures from it never block it.
        with SipClient(("127.0.0.1", port), local_ip=DYNAMIC_IP, timeout=0.2) as forger:
            refused = [a for a in (forged_register(forger, port, i) for i in range(12)) if a is not None]
        assert len(refused) > FAILURE_LIMIT and all(a.status == 403 for a in refused), [a.status for a in refused]

        # Its refresh (the nonce it has, the next nc, as a PBX sends it) passes whatever the limits ...
        refresh = pbx.answer_challenge("REGISTER", uri, challenge, "pbx7", "s3cret", headers=headers, nc=2)
        assert refresh is not None and refresh.status == 200
        # ... and its call is admitted as the trunk's and answered.
        pbx.call_id = uuid.uuid4().hex
        invite_uri = send_invite(pbx, port, sdp(DYNAMIC_IP, 40000))
        answer = pbx.final()
        assert answer is not None and answer.status == 200, answer and answer.raw
        pbx.ack_and_bye(answer, invite_uri, from_user="carrier", to_user="5550100")
    assert decisions(server)["trunk_not_blocked"] >= 1
    assert "via trunk pbx" in server.text()


@pytest.mark.parametrize("limit", ["trunk", "limits"])
def test_an_invite_flood_from_the_trunk_address_gets_503_with_retry_after_not_silence(server_factory, tmp_path,
                                                                                     limit):
    # Over the flood rate (10 a second here) too: before the fix the address was blocked and went silent.
    if limit == "trunk":
        server = edge_server(server_factory, tmp_path, carrier={"max_calls_per_second": 2},
                             limits={"retry_after_seconds": 7})
    else:
        server = edge_server(server_factory, tmp_path, limits={"max_calls_per_second": 2, "retry_after_seconds": 7})
    port = server.sip_port
    body = sdp(TRUNK_IP, 40000)
    clients = [SipClient(("127.0.0.1", port), local_ip=TRUNK_IP, timeout=5) for _ in range(15)]
    try:
        uris = [send_invite(c, port, body, branch=f"z9hG4bKflood{i}") for i, c in enumerate(clients)]
        answers = [c.final() for c in clients]
        for i, (c, uri, a) in enumerate(zip(clients, uris, answers)):
            if a is not None and a.status == 200:
                c.ack_and_bye(a, uri, from_user="carrier", to_user="5550100")
            elif a is not None:
                ack_refusal(c, uri, a, f"z9hG4bKflood{i}")
    finally:
        for c in clients:
            c.close()
    assert all(a is not None for a in answers), "INVITEs from the trunk's address went unanswered"
    codes = [a.status for a in answers]
    print(f"INVITE flood from the trunk address ({limit} limit): {codes}")
    refused = [a for a in answers if a.status == 503]
    assert set(codes) == {200, 503}, codes
    assert all(a.header("Retry-After") == "7" for a in refused)
    metrics = server.metrics()
    reason = "trunk_rate" if limit == "trunk" else "rate"
    assert metrics[f'softswitch_overload_refusals_total{{reason="{reason}"}}'] == len(refused)
    assert decisions(server)["blocked_flood"] == 0

    if limit == "trunk":  # the carrier's own rate: another trunk's calls are not refused by it
        with SipClient(("127.0.0.1", port), timeout=5) as main:
            uri = send_invite(main, port, sdp("127.0.0.1", 40002))
            answer = main.final()
            assert answer is not None and answer.status == 200, answer and answer.raw
            main.ack_and_bye(answer, uri, from_user="carrier", to_user="5550100")


def test_sources_that_are_no_trunks_are_still_blocked_while_a_phone_elsewhere_registers(server_factory, tmp_path):
    server = edge_server(server_factory, tmp_path)
    port = server.sip_port
    with SipClient(("127.0.0.1", port), local_ip=CRACKER_IP, timeout=0.3) as cracker, \
            SipClient(("127.0.0.1", port), local_ip=PHONE_IP) as phone:
        answers = []
        for i in range(FAILURE_LIMIT + 3):
            resp = cracker.register("1001", f"guess{i}")
            answers.append(resp.status if resp is not None else None)
            assert phone.register("1001", "pass1001").status == 200  # the real phone, meanwhile
        # Blocked after the limit: nothing answers it any more, not even OPTIONS.
        cracker.send(cracker.request("OPTIONS", f"sip:127.0.0.1:{port}", from_user="probe"))
        assert cracker.final() is None
    assert answers == [403] * FAILURE_LIMIT + [None] * 3, answers

    with SipClient(("127.0.0.1", port), local_ip=FLOODER_IP) as flooder:
        answered = options_burst(flooder, port, 30)
        assert answered == 10, answered  # the flood burst, then the source is blocked
        flooder.send(flooder.request("OPTIONS", f"sip:127.0.0.1:{port}", from_user="probe"))
        assert flooder.final(0.5) is None

    counts = decisions(server)
    assert counts["blocked_auth_failures"] == 1 and counts["blocked_flood"] == 1
    assert counts["dropped_blocked_source"] >= 3 + 1 + 1
    assert counts["trunk_auth_failure"] == counts["trunk_requests_dropped"] == counts["trunk_options_dropped"] == 0
    names = {(e["security"], e["source_ip"]) for e in security_events(server)}
    assert ("auth_failure_blocked", CRACKER_IP) in names and ("flood_blocked", FLOODER_IP) in names
    assert not any(ip == PHONE_IP for _, ip in names)
