"""Dialing and bridging through flow nodes on real calls (reference §4, §5.6): a SIPp caller
(440 Hz) runs a flow that dials a SIPp provider (1 kHz) through trunk_main and bridges the two.

Each side hears the other while bridged and nothing after call.unbridge; DTMF crosses the bridge
by the relay mode (RFC 2833 and SIP INFO in, RFC 2833 or SIP INFO out); an unanswered caller
bridged to the ringing dial follows it (180, 183 with the provider's early media, 200, or the
provider's rejection code)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.support.callcentre import pcap_of
from tests.support.audio import decode_dtmf, dominant_frequency, rms
from tests.support.capture import LoopbackCapture
from tests.support.pcap import RtpStream, write_rtp_pcap
from tests.support.sipp import Sipp
from tests.support.siptrace import first, trace

pytestmark = pytest.mark.sipp

CALLER = "{{ $('answer').item.json.legId }}"


def start(server_factory, tmp_path: Path, text: str, uas: Sipp):
    flow = tmp_path / "flow.yaml"
    flow.write_text(text)
    return server_factory(flows=[str(flow)], logging={"level": "debug", "pjsip_level": 1},
                          connections={"uas": {"sip_server": "127.0.0.1", "port": uas.local_port}},
                          trunks={"trunk_main": {"address": "127.0.0.1", "port": 0, "connection": "uas"}})


def stream_to(cap: LoopbackCapture, port: int) -> RtpStream:
    """The RTP softswitch sent to `port` (one stream: one call leg)."""
    streams = [s for s in cap.streams().values() if s.dst[1] == port]
    assert streams, f"no RTP to port {port}"
    return max(streams, key=lambda s: len(s.packets))


def hears(audio: np.ndarray, freq: float) -> bool:
    return any(abs(dominant_frequency(audio[i:i + 4000], 8000) - freq) < 10 and rms(audio[i:i + 4000]) > 0.02
               for i in range(0, len(audio) - 4000, 2000))


# ---- audio both ways, then unbridge ----------------------------------------------------------

# The caller is answered, the provider dialled, and once it answers the two are bridged.
DIAL_THEN_BRIDGE = """
name: bridging
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
"""

BRIDGE_FLOW = DIAL_THEN_BRIDGE + """  - name: bridge
    op: call.bridge
    params: {legAId: "CALLER", legBId: "{{ $json.legId }}"}
    next: {Success: [talk]}
  - name: talk
    op: call.wait
    params: {timeoutSeconds: 3, legIds: ["CALLER"]}
    next: {Timeout: [unbridge]}
  - name: unbridge
    op: call.unbridge
    params: {options: {legId: "CALLER"}}
    next: {Orig: [quiet_caller], Peer: [quiet_peer]}
  - name: quiet_caller
    op: call.wait
    params: {timeoutSeconds: 2.5}
    next: {Timeout: [bye_caller]}
  - name: quiet_peer
    op: call.wait
    params: {timeoutSeconds: 2.5}
    next: {Timeout: [bye_peer]}
  - name: bye_caller
    op: call.hangup
  - name: bye_peer
    op: call.hangup
""".replace("CALLER", CALLER)


def test_bridged_legs_hear_each_other_and_nothing_after_unbridge(server_factory, tmp_path):
    uas = Sipp("uas_answer_pcap", calls=1, timeout_s=30, trace_dir=tmp_path / "uas",
               variables={"answer_delay_ms": 0}, keys={"pcap": pcap_of(tmp_path, "uas", 1000, 12)})
    with uas:
        server = start(server_factory, tmp_path, BRIDGE_FLOW, uas)
        caller = Sipp("uac_call_until_bye", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=30,
                      trace_dir=tmp_path / "caller", variables={"caller": "5550440", "bye_timeout_ms": 20000},
                      keys={"pcap": pcap_of(tmp_path, "caller", 440, 12)})
        with LoopbackCapture(f"udp and (dst port {caller.media_port} or dst port {uas.media_port})",
                             tmp_path / "rtp.pcap") as cap:
            with caller:
                caller_result = caller.wait(30)
            uas_result = uas.wait(15)
    assert caller_result.ok, str(caller_result)
    assert uas_result.ok, str(uas_result)
    assert server.wait_for_log("node bye_peer", 5) and server.wait_for_log("node bye_caller", 5)
    to_caller = stream_to(cap, caller.media_port).audio()
    to_uas = stream_to(cap, uas.media_port).audio()
    assert hears(to_caller, 1000), "the caller never heard the provider's 1 kHz"
    assert hears(to_uas, 440), "the provider never heard the caller's 440 Hz"
    # The last second of each call is after the unbridge (2.5 s before the hang-ups): silence.
    assert rms(to_caller[-8000:]) < 0.005, rms(to_caller[-8000:])
    assert rms(to_uas[-8000:]) < 0.005, rms(to_uas[-8000:])
    assert "Traceback" not in server.text()


# ---- DTMF relay ------------------------------------------------------------------------------

DTMF_FLOW = DIAL_THEN_BRIDGE + """
  - name: bridge
    op: call.bridge
    params: {legAId: "CALLER", legBId: "{{ $json.legId }}", options: {relayDtmf: RELAY}}
    next: {Success: [hold]}
  - name: hold
    op: call.wait
    params:
      timeoutSeconds: 20
      legIds: ["CALLER"]
      options: {interruptReasons: [call_bridge_removed_peer_ended]}
    next: {Ended: [bye_peer]}
  - name: bye_peer
    op: call.hangup
    params: {options: {legId: "{{ $('wait').item.json.legId }}"}}
""".replace("CALLER", CALLER)


@pytest.mark.parametrize("relay", ["auto", "inband", "disabled"])
def test_rfc2833_digits_from_the_caller_cross_the_bridge_by_the_relay_mode(server_factory, tmp_path, relay):
    uas = Sipp("uas_answer_pcap", calls=1, timeout_s=30, trace_dir=tmp_path / "uas",
               variables={"answer_delay_ms": 0}, keys={"pcap": pcap_of(tmp_path, "uas", 1000, 8)})
    caller_pcap = tmp_path / "caller.pcap"  # silence around the events: in-band tones must stand out
    write_rtp_pcap(caller_pcap, np.zeros(8000 * 6, dtype=np.int16), dtmf=[("5", 3.0, 160), ("9", 4.0, 160)])
    with uas:
        server = start(server_factory, tmp_path, DTMF_FLOW.replace("RELAY", relay), uas)
        caller = Sipp("uac_call_pcap", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=30,
                      trace_dir=tmp_path / "caller", variables={"caller": "5550440", "hold_ms": 6000},
                      keys={"pcap": caller_pcap})
        with LoopbackCapture(f"udp and dst port {uas.media_port}", tmp_path / "rtp.pcap") as cap:
            with caller:
                caller_result = caller.wait(30)
            uas_result = uas.wait(15)
    assert caller_result.ok, str(caller_result)
    assert uas_result.ok, str(uas_result)  # answered, then our BYE once the caller left
    to_uas = stream_to(cap, uas.media_port)
    events, tones = to_uas.dtmf_digits(), decode_dtmf(to_uas.audio())
    assert (events, tones) == {"auto": ("59", ""), "inband": ("", "59"), "disabled": ("", "")}[relay]
    text = server.text()
    assert ("DTMF 5 relayed to" in text) == (relay != "disabled")
    assert "Traceback" not in text


@pytest.mark.parametrize("relay", ["info", "rfc2833"])
def test_sip_info_digits_from_the_caller_cross_the_bridge_by_the_relay_mode(server_factory, tmp_path, relay):
    uas = Sipp("uas_answer_accept_info", calls=1, timeout_s=30, trace_dir=tmp_path / "uas",
               variables={"answer_delay_ms": 0}, keys={"pcap": pcap_of(tmp_path, "uas", 1000, 8)})
    with uas:
        server = start(server_factory, tmp_path, DTMF_FLOW.replace("RELAY", relay), uas)
        caller = Sipp("uac_call_dtmf_info", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=30,
                      trace_dir=tmp_path / "caller",
                      variables={"caller": "5550440", "info_after_ms": 2500, "relay_digit": "5", "dtmf_digit": "7",
                                 "hold_ms": 2000},
                      keys={"pcap": pcap_of(tmp_path, "caller", 440, 5)})
        with LoopbackCapture(f"udp and dst port {uas.media_port}", tmp_path / "rtp.pcap") as cap:
            with caller:
                caller_result = caller.wait(30)
            uas_result = uas.wait(15)
    assert caller_result.ok, str(caller_result)  # both INFOs (dtmf-relay and dtmf) answered 200
    assert uas_result.ok, str(uas_result)
    infos = [m for _, kind, m in trace(uas) if kind == "received" and m.startswith("INFO ")]
    if relay == "info":
        signals = [re.search(r"^Signal=(\S)", m, flags=re.M).group(1) for m in infos]
        assert signals == ["5", "7"], infos
        assert all("application/dtmf-relay" in m for m in infos)
    else:
        assert infos == []
        assert stream_to(cap, uas.media_port).dtmf_digits() == "57"
    assert "Traceback" not in server.text()


# ---- an unanswered caller follows the dialled leg ----------------------------------------------

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
    next: {Answered: [hold], Failed: [failed], Timeout: [timeout]}
  - name: hold
    op: call.wait
    params:
      timeoutSeconds: 20
      legIds: ["{{ $('trunk_main').item.json.legId }}"]
    next: {Ended: [bye_peer]}
  - name: bye_peer
    op: call.hangup
    params: {options: {legId: "{{ $('dial').item.json.legId }}"}}
  - name: failed
    op: core.noop
  - name: timeout
    op: core.noop
"""


def test_unanswered_caller_hears_the_dialled_early_media_then_is_answered_with_it(server_factory, tmp_path):
    uas = Sipp("uas_early_media", calls=1, timeout_s=30, trace_dir=tmp_path / "uas",
               variables={"early_ms": 3000, "final": 200}, keys={"pcap": pcap_of(tmp_path, "uas", 1000, 8)})
    with uas:
        server = start(server_factory, tmp_path, EARLY_FLOW, uas)
        caller = Sipp("uac_call_pcap", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=30,
                      trace_dir=tmp_path / "caller", variables={"caller": "5550440", "hold_ms": 2000},
                      keys={"pcap": pcap_of(tmp_path, "caller", 440, 2)})
        with LoopbackCapture(f"udp and dst port {caller.media_port}", tmp_path / "rtp.pcap") as cap:
            with caller:
                caller_result = caller.wait(30)
            uas_result = uas.wait(15)
    assert caller_result.ok, str(caller_result)
    assert uas_result.ok, str(uas_result)  # 183, 200, then our BYE after the caller's
    messages = trace(caller)
    t183, _ = first(messages, "received", "SIP/2.0 183")
    t200, _ = first(messages, "received", "SIP/2.0 200")
    assert t200 > t183
    stream = stream_to(cap, caller.media_port)
    cutoff = t200.timestamp()
    early = RtpStream(stream.src, stream.dst, stream.ssrc, [p for p in stream.packets if p.arrival < cutoff])
    assert hears(early.audio(), 1000), "the caller did not hear the provider's early media before the answer"
    assert server.wait_for_log("node bye_peer", 5)
    text = server.text()
    assert "dial.wait wait: Answered" in text  # the bridged attempt won when it answered
    assert "Traceback" not in text


@pytest.mark.parametrize("status", [486, 603])
def test_unanswered_caller_rings_with_the_dialled_leg_and_is_rejected_with_its_code(server_factory, tmp_path, status):
    uas = Sipp("uas_reject", calls=1, timeout_s=30, trace_dir=tmp_path / "uas",
               variables={"status": status, "ring_ms": 1500})
    with uas:
        server = start(server_factory, tmp_path, EARLY_FLOW, uas)
        caller = Sipp("uac_expect_failure", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=30,
                      trace_dir=tmp_path / "caller", variables={"caller": "5550440", "cancel_after_ms": 10000})
        with caller:
            caller_result = caller.wait(30)
        uas_result = uas.wait(15)
    assert caller_result.ok, str(caller_result)
    assert uas_result.ok, str(uas_result)
    assert caller_result.log_values("final_status") == [str(status)]
    messages = trace(caller)
    first(messages, "received", "SIP/2.0 180")  # the provider's ringing reached the caller
    assert server.wait_for_log("dial.wait wait: Failed", 5)
    assert "Traceback" not in server.text()


SEND_FLOW = DTMF_FLOW.replace("next: {Success: [hold]}", "next: {Success: [hold, send]}") + """
  - name: send
    op: media.sendDtmf
    params: {dtmfDigits: "42", options: {legId: "CALLER", dtmfMethod: rfc2833}}
""".replace("CALLER", CALLER)


def test_digits_a_flow_sends_on_a_bridged_leg_are_relayed_to_its_peer(server_factory, tmp_path):
    uas = Sipp("uas_answer_pcap", calls=1, timeout_s=30, trace_dir=tmp_path / "uas",
               variables={"answer_delay_ms": 0}, keys={"pcap": pcap_of(tmp_path, "uas", 1000, 8)})
    caller_pcap = tmp_path / "caller.pcap"
    write_rtp_pcap(caller_pcap, np.zeros(8000 * 5, dtype=np.int16))
    with uas:
        server = start(server_factory, tmp_path, SEND_FLOW.replace("RELAY", "auto"), uas)
        caller = Sipp("uac_call_pcap", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=30,
                      trace_dir=tmp_path / "caller", variables={"caller": "5550440", "hold_ms": 5000},
                      keys={"pcap": caller_pcap})
        with LoopbackCapture(f"udp and (dst port {uas.media_port} or dst port {caller.media_port})",
                             tmp_path / "rtp.pcap") as cap:
            with caller:
                caller_result = caller.wait(30)
            uas_result = uas.wait(15)
    assert caller_result.ok and uas_result.ok, f"{caller_result}\n{uas_result}"
    assert stream_to(cap, caller.media_port).dtmf_digits() == "42"  # sent on the caller's leg
    assert stream_to(cap, uas.media_port).dtmf_digits() == "42"  # and relayed over the bridge
    assert "Traceback" not in server.text()
