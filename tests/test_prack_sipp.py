"""Issue 13: early media and reliable provisional responses (RFC 3262, 100rel/PRACK).

A flow dials a provider through a trunk and bridges the unanswered caller to the attempt, so the
caller follows it (reference: 180, 183 with early media, 200). Here both ends insist on 100rel:
the provider's 183 carries Require: 100rel and waits for softswitch's PRACK; the caller's INVITE
requires 100rel, so the 183 softswitch passes on is reliable too and the caller PRACKs it. The
caller hears the provider's early media before the answer, and both sides' audio after it.
(The same path without 100rel: tests/test_flow_dial_bridge_sipp.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.audio import dominant_frequency, rms
from tests.support.callcentre import pcap_of
from tests.support.capture import LoopbackCapture
from tests.support.pcap import RtpStream
from tests.support.sipp import Sipp
from tests.support.siptrace import first, trace

pytestmark = pytest.mark.sipp

EARLY_FLOW = """
name: early
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [dial]}
nodes:
  - name: dial
    op: dial.make
    params: {callMode: trunk, ref: trunk_main, destination: "2000"}
    next: {Result: [bridge]}
  - name: bridge
    op: call.bridge
    params: {legAId: "{{ $('trunk_main').item.json.legId }}", legBId: "{{ $json.legId }}"}
    next: {Success: [wait]}
  - name: wait
    op: dial.wait
    params: {dialTimeoutSeconds: 15, dialIds: ["{{ $('dial').item.json.dialId }}"]}
    next: {Answered: [hold], Failed: [failed], Timeout: [failed]}
  - name: hold
    op: call.wait
    params: {timeoutSeconds: 20, legIds: ["{{ $('trunk_main').item.json.legId }}"]}
    next: {Ended: [bye_peer]}
  - name: bye_peer
    op: call.hangup
    params: {options: {legId: "{{ $('dial').item.json.legId }}"}}
  - name: failed
    op: core.noop
"""


def _hears(audio, freq: float) -> bool:
    return any(abs(dominant_frequency(audio[i:i + 4000], 8000) - freq) < 10 and rms(audio[i:i + 4000]) > 0.02
               for i in range(0, len(audio) - 4000, 2000))


def test_reliable_183_from_a_provider_is_pracked_and_its_early_media_reaches_a_100rel_caller(
        server_factory, tmp_path: Path):
    uas = Sipp("uas_early_media_100rel", calls=1, timeout_s=30, trace_dir=tmp_path / "uas",
               variables={"early_ms": 3000}, keys={"pcap": pcap_of(tmp_path, "uas", 1000, 8)})
    with uas:
        flow = tmp_path / "flow.yaml"
        flow.write_text(EARLY_FLOW)
        server = server_factory(flows=[str(flow)], logging={"level": "debug", "pjsip_level": 1},
                                connections={"uas": {"sip_server": "127.0.0.1", "port": uas.local_port}},
                                trunks={"trunk_main": {"address": "127.0.0.1", "port": 0, "connection": "uas"}})
        caller = Sipp("uac_100rel_call", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=30,
                      trace_dir=tmp_path / "caller", variables={"caller": "5550440", "hold_ms": 2000},
                      keys={"pcap": pcap_of(tmp_path, "caller", 440, 2)})
        with LoopbackCapture(f"udp and dst port {caller.media_port}", tmp_path / "rtp.pcap") as cap:
            with caller:
                caller_result = caller.wait(30)
            uas_result = uas.wait(15)
    assert uas_result.ok, str(uas_result)  # softswitch PRACKed the provider's reliable 183
    assert re.search(r"rack=\s*1 \d+ INVITE", uas_result.logs), uas_result.logs  # RSeq 1 of the INVITE
    assert caller_result.ok, str(caller_result)  # a reliable 183 reached the caller, and its PRACK was taken
    messages = trace(caller)
    t183, provisional = first(messages, "received", "SIP/2.0 183")
    assert "100rel" in provisional and "RSeq:" in provisional, provisional
    streams = [s for s in cap.streams().values() if s.dst[1] == caller.media_port]
    assert streams, "no RTP to the caller"
    stream = max(streams, key=lambda s: len(s.packets))
    invite_ok = [w for w, k, m in messages if k == "received" and m.startswith("SIP/2.0 200") and "INVITE" in
                 m.split("CSeq:", 1)[1].split("\n", 1)[0]][0]
    early = RtpStream(stream.src, stream.dst, stream.ssrc,
                      [p for p in stream.packets if p.arrival < invite_ok.timestamp()])
    assert _hears(early.audio(), 1000), "the caller did not hear the provider's early media before the answer"
    assert t183 < invite_ok
    assert server.wait_for_log("node bye_peer", 5)
    assert "Traceback" not in server.text()
