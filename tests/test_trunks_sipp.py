"""softswitch registering to providers (SIPp registrars), and the route token that makes the
provider's calls back arrive as calls from the trunk."""

from __future__ import annotations

import dataclasses
import re
import socket
import time
import uuid

import pytest

from softswitch.config import Connection, Trunk
from tests.support.sipp import Sipp
from tests.support.waiting import wait_for

pytestmark = pytest.mark.sipp


def traced(sipp: Sipp, direction: str) -> list[tuple[float, str]]:
    """(time, message) of the messages SIPp `received` or `sent`, from its message trace."""
    text = (sipp.trace_dir / "messages.log").read_text(errors="replace")
    out = []
    for stamp, head, body in re.findall(r"-{20,} \S+ (\d\d:\d\d:\d\d\.\d+)\n([^\n]*)\n(.*?)(?=\n-{20,} |\Z)", text, re.S):
        if direction in head:
            h, m, s = stamp.split(":")
            out.append((int(h) * 3600 + int(m) * 60 + float(s), body.strip()))
    return out


def test_softswitch_registers_with_digest_and_refreshes_before_expiry(server_factory, tmp_path):
    registrar = Sipp("uas_registrar_refresh", calls=1, timeout_s=25, trace_dir=tmp_path / "registrar",
                     variables={"user": "acct-7", "password": "s3cret", "expires": 10})
    with registrar:
        server = server_factory(
            connections={"prov": {"sip_server": "127.0.0.1", "port": registrar.local_port, "username": "acct-7",
                                  "password": "s3cret", "register": True, "registration_expires": 60}},
            trunks={"prov_trunk": {"connection": "prov"}})
        result = registrar.wait(25)  # ends after the refresh is accepted
    assert result.ok, str(result)
    registers = [(t, m) for t, m in traced(registrar, "received") if m.startswith("REGISTER ")]
    oks = [(t, m) for t, m in traced(registrar, "sent") if m.startswith("SIP/2.0 200")]
    # REGISTER, 401, REGISTER, 200; then the refresh (re-challenged when sent without credentials).
    assert len(registers) in (3, 4) and len(oks) == 2, [m.split("\n")[0] for _, m in registers]
    messages = [m for _, m in registers]
    assert "Authorization:" not in messages[0]
    for message in (messages[1], messages[-1]):
        assert re.search(r'^Authorization: Digest username="acct-7"', message, re.M), message
    token = result.log_values("tk")[0]
    for message in messages:
        assert re.search(r"^Expires: 60$", message, re.M)  # we ask for registration_expires
        contact = re.search(r"^Contact: (.*)$", message, re.M).group(1)
        assert contact.endswith(f";tk={token}>"), contact
    # Granted 10 s: the refresh came before the registration ran out.
    refreshed_after = registers[2][0] - oks[0][0]
    assert 2 < refreshed_after < 10, refreshed_after
    assert server.wait_for_log("connection prov: registered (200", 5), server.text()[-2000:]
    assert "Traceback" not in server.text()


def test_registration_refused_is_reported_in_status(ua):
    from softswitch.sip.trunks import Trunks

    registrar = Sipp("uas_registrar_challenge", calls=1, timeout_s=10,
                     variables={"user": "acct-9", "password": "other-secret"})
    with registrar:
        cfg = dataclasses.replace(ua.config, connections={"bad": Connection(
            name="bad", sip_server="127.0.0.1", port=registrar.local_port, username="acct-9", password="wrong",
            register=True)})
        trunks = ua.run_sync(lambda: Trunks(ua, cfg))
        try:
            wait_for(lambda: ua.run_sync(lambda: trunks.status()["bad"].last_code) is not None, 5, "a response")
            status = ua.run_sync(lambda: trunks.status()["bad"])
        finally:
            ua.run_sync(trunks.shutdown)
        registrar.wait(10)
    assert (status.registered, status.last_code, status.expires) == (False, 403, 0), status
    assert status.register and status.last_reason == "Wrong Credentials"


def _invite(port: int, request_uri: str, timeout: float = 5.0) -> int:
    """Send one INVITE over UDP to 127.0.0.1:port and ACK its final response; return its code."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.2)
        local = sock.getsockname()[1]
        tag, branch, call_id = uuid.uuid4().hex[:8], "z9hG4bK" + uuid.uuid4().hex[:12], uuid.uuid4().hex
        sdp = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
        common = (f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch};rport\r\nMax-Forwards: 70\r\n"
                  f"From: <sip:5551111@127.0.0.1>;tag={tag}\r\nCall-ID: {call_id}\r\n")
        sock.sendto((f"INVITE {request_uri} SIP/2.0\r\n{common}To: <{request_uri}>\r\nCSeq: 1 INVITE\r\n"
                     f"Contact: <sip:5551111@127.0.0.1:{local}>\r\nContent-Type: application/sdp\r\n"
                     f"Content-Length: {len(sdp)}\r\n\r\n{sdp}").encode(), ("127.0.0.1", port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65535).decode(errors="replace")
            except socket.timeout:
                continue
            code = int(data.split()[1])
            if code >= 200:
                to = re.search(r"^To: (.*)$", data, re.M | re.I).group(1).strip()
                sock.sendto((f"ACK {request_uri} SIP/2.0\r\n{common}To: {to}\r\nCSeq: 1 ACK\r\n"
                             "Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
                return code
        raise AssertionError(f"no final response to the INVITE to {request_uri}")


def test_route_token_admits_the_providers_calls_as_the_trunk(ua, tmp_path):
    from softswitch.sip.trunks import Trunks

    admissions: list = []

    class Refuse:
        def on_incoming_leg(self, leg):
            admissions.append(leg.admission)
            leg.hangup(486, "test_refused")

    registrar = Sipp("uas_registrar_challenge", calls=1, timeout_s=10, trace_dir=tmp_path / "registrar",
                     variables={"user": "acct-5", "password": "pw5"})
    with registrar:
        cfg = dataclasses.replace(
            ua.config, connections={"tkprov": Connection(name="tkprov", sip_server="127.0.0.1",
                                                         port=registrar.local_port, username="acct-5",
                                                         password="pw5", register=True)},
            trunks={**ua.config.trunks, "tk_trunk": Trunk(name="tk_trunk", connection="tkprov")})
        trunks = ua.run_sync(lambda: Trunks(ua, cfg))
        ua.run_sync(lambda: setattr(ua, "handler", Refuse()))
        try:
            wait_for(lambda: ua.run_sync(lambda: trunks.status()["tkprov"].registered), 5, "the registration")
            status = ua.run_sync(lambda: trunks.status()["tkprov"])
            token = ua.run_sync(lambda: trunks.route_token("tkprov"))
            port = ua.config.sip.udp_port
            # The provider calls the Contact we registered, as it got it: that is the trunk. (Its
            # To names our provider username, so pjsua hands it to the connection's account,
            # which must pass it on to the LocalAccount.)
            register = [m for _, m in traced(registrar, "received") if m.startswith("REGISTER ")][-1]
            contact = re.search(r"^Contact: .*<([^>]*)>", register, re.M).group(1)
            assert contact == f"sip:acct-5@127.0.0.1:{port};tk={token}"
            assert _invite(port, contact) == 486
            # Another token from the same address is just the address-matched default trunk.
            assert _invite(port, contact.replace(token, "0000" + token[4:] + "x")) == 486
        finally:
            ua.run_sync(lambda: setattr(ua, "handler", None))
            ua.run_sync(trunks.shutdown)
        assert registrar.wait(10).ok
    assert status.registered and status.last_code == 200 and status.expires > 0
    assert [(a.kind, a.ref) for a in admissions] == [("trunk", "tk_trunk"), ("trunk", "trunk_main")]
