"""SRTP policy at the gate and a TLS listener that survives garbage, with SIPp.

SIPp cannot encrypt RTP, so these check the signalling of SRTP offers (uac_offer_srtp.xml) and
the recording of a plain call that stays up while random bytes hit the TLS port. The TLS+SRTP
call with audio is in test_interop_tls_sipp.py (a real softphone).
"""

from __future__ import annotations

import os
import socket
import ssl
import time
import uuid
from pathlib import Path

import pytest
import soundfile as sf

from tests.support.actors import uac_call, uac_expect_failure
from tests.support.callcentre import heard, pcap_of
from tests.support.ports import free_port
from tests.support.sipp import Sipp
from tests.test_interop_tls_sipp import make_certificate

pytestmark = pytest.mark.sipp

CALLER_HZ = 440

ANSWER_FLOW = """
name: answer-and-record
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main, enableCallRecording: true}
    next: {Call: answer, Recording: record_call}
  - name: secure
    trigger: trunk
    params: {ref: secure}
    next: {Call: answer}
nodes:
  - name: record_call
    op: respond.toRecord
    params: {recordFilePath: "{{ $json.legId + '.wav' }}", recordSplitChannels: true}
  - name: answer
    op: call.answer
    next: {Result: [hold]}
  - name: hold
    op: call.wait
    params: {timeoutSeconds: 30, rules: [{pattern: "9", label: Nine}]}
"""


def answering_server(server_factory, tmp_path: Path, **sections):
    flow = tmp_path / "flow.yaml"
    flow.write_text(ANSWER_FLOW)
    return server_factory(flows=[str(flow)], **sections)


def offer(server, local_port: int, profile: str) -> tuple[str, str]:
    """(final status, answer's crypto line or "") of one SDES offer on `profile`."""
    sipp = Sipp("uac_offer_srtp", f"127.0.0.1:{server.sip_port}", local_port=local_port, calls=1, timeout_s=15,
                service="2000", variables={"caller": "5550100", "profile": profile})
    with sipp:
        result = sipp.wait(20)
    assert result.ok, str(result)
    return result.log_values("final_status")[-1], "".join(result.log_values("answer_crypto"))


def test_srtp_use_per_trunk_at_the_gate(server_factory, tmp_path):
    """A mandatory trunk refuses a plain offer with 488 and answers SDES offers with SRTP; a
    trunk without SRTP answers an optional SDES offer with plain RTP and refuses RTP/SAVP."""
    plain_port, secure_port = free_port("both"), free_port("both")
    server = answering_server(server_factory, tmp_path, trunks={
        "trunk_main": {"address": "127.0.0.1", "port": plain_port},
        "secure": {"address": "127.0.0.1", "port": secure_port, "srtp": "mandatory"}})
    remote = f"127.0.0.1:{server.sip_port}"

    refused = uac_expect_failure(remote, local_port=secure_port, timeout_s=15)
    with refused:
        result = refused.wait(20)
    assert result.ok and result.log_values("final_status") == ["488"], str(result)

    status, crypto = offer(server, secure_port, "RTP/AVP")
    assert status == "200" and crypto.startswith("a=crypto:"), (status, crypto)
    status, crypto = offer(server, secure_port, "RTP/SAVP")
    assert status == "200" and crypto.startswith("a=crypto:"), (status, crypto)

    status, crypto = offer(server, plain_port, "RTP/AVP")
    assert (status, crypto) == ("200", ""), "a trunk without SRTP must answer plain RTP"
    status, _ = offer(server, plain_port, "RTP/SAVP")
    assert status == "488"


def tls_options(port: int) -> bytes:
    """One OPTIONS over a fresh TLS connection (certificate not checked); the response."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        local = tls.getsockname()[1]
        tag = uuid.uuid4().hex[:10]
        tls.sendall((f"OPTIONS sip:probe@127.0.0.1:{port};transport=tls SIP/2.0\r\n"
                     f"Via: SIP/2.0/TLS 127.0.0.1:{local};branch=z9hG4bK{tag};rport\r\n"
                     f"Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag={tag}\r\nTo: <sip:probe@127.0.0.1>\r\n"
                     f"Call-ID: {tag}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode())
        return tls.recv(65535)


def send_garbage(port: int, connections: int = 20) -> None:
    """Random bytes, a TLS record header with a random body, and a handshake cut short."""
    for i in range(connections):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            head = b"\x16\x03\x01\x02\x00" if i % 2 else b""  # half of them look like a ClientHello
            s.sendall(head + os.urandom(512 + 97 * i))
            s.settimeout(2)
            try:
                while s.recv(4096):  # until softswitch closes the connection
                    pass
            except (TimeoutError, ConnectionError):
                pass


def test_garbage_on_the_tls_port_leaves_the_process_and_a_live_call_unchanged(server_factory, tmp_path):
    cert, key = make_certificate(tmp_path)
    tls_port = free_port("tcp")
    server = answering_server(server_factory, tmp_path, sip={
        "tls_port": tls_port, "tls": {"certificate": str(cert), "private_key": str(key)}})
    assert tls_options(tls_port).startswith(b"SIP/2.0 200")
    caller = uac_call(f"127.0.0.1:{server.sip_port}", pcap_of(tmp_path, "caller", CALLER_HZ, 8), hold_ms=7000,
                      timeout_s=20)
    with caller:
        time.sleep(1.5)  # the call is up and recording
        send_garbage(tls_port)
        result = caller.wait(20)
    assert result.ok, str(result)
    assert tls_options(tls_port).startswith(b"SIP/2.0 200"), "TLS stopped answering after the garbage"
    assert server.proc.poll() is None
    server.stop()
    (recording,) = (tmp_path / "recordings").glob("leg_*.wav")
    audio, rate = sf.read(recording, dtype="int16")
    caller_channel = audio[int(0.5 * rate):-int(0.5 * rate), 0]
    window = rate // 2
    # Every half second of the call, garbage or not, carries the caller's tone.
    for start in range(0, len(caller_channel) - window, window):
        assert heard(caller_channel[start:start + window], CALLER_HZ, window=window), f"gap at {start / rate:.1f} s"


DIAL_OUT_FLOW = """
name: dial-out
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [answer]}
nodes:
  - name: answer
    op: call.answer
    next: {Result: [dial]}
  - name: dial
    op: dial.make
    params: {callMode: trunk, ref: trunk_main, destination: "2000"}
    next: {Result: [wait]}
  - name: wait
    op: dial.wait
    params: {dialTimeoutSeconds: 10}
    next: {Answered: [bridge]}
  - name: bridge
    op: call.bridge
    params: {legAId: "{{ $('trunk_main').item.json.legId }}", legBId: "{{ $json.legId }}"}
    next: {Success: [talk]}
  - name: talk
    op: call.wait
    params: {timeoutSeconds: 30}
"""


def test_a_connection_over_tls_with_mandatory_srtp_carries_the_bridged_audio(server_factory, tmp_path):
    """softswitch A dials through a `transport: tls`, `srtp: mandatory` connection to softswitch B
    (a provider whose trunk requires SRTP); what A's plain caller says is on B's recording."""
    cert, key = make_certificate(tmp_path)
    tls = {"certificate": str(cert), "private_key": str(key)}
    b_tls = free_port("tcp")
    provider = answering_server(server_factory, tmp_path, sip={"tls_port": b_tls, "tls": tls},
                                directories={"recordings": str(tmp_path / "provider-rec")},
                                trunks={"trunk_main": {"address": "127.0.0.1", "port": 0, "srtp": "mandatory"}})
    caller_port = free_port("both")
    flow = tmp_path / "dial-out.yaml"
    flow.write_text(DIAL_OUT_FLOW)
    dialler = server_factory(flows=[str(flow)], sip={"tls_port": free_port("tcp"), "tls": tls},
                   directories={"recordings": str(tmp_path / "a-rec")},
                   connections={"provider": {"sip_server": "127.0.0.1", "port": b_tls, "transport": "tls",
                                             "srtp": "mandatory"}},
                   trunks={"trunk_main": {"address": "127.0.0.1", "port": caller_port, "connection": "provider"}})
    caller = uac_call(f"127.0.0.1:{dialler.sip_port}", pcap_of(tmp_path, "caller", CALLER_HZ, 8),
                      local_port=caller_port, hold_ms=6000, timeout_s=20)
    with caller:
        result = caller.wait(20)
    assert result.ok, str(result)
    provider.stop()
    (recording,) = (tmp_path / "provider-rec").glob("leg_*.wav")
    audio, rate = sf.read(recording, dtype="int16")
    assert heard(audio[:, 0], CALLER_HZ), "the provider did not receive the caller's audio over SRTP"
