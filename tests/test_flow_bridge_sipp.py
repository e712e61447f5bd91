"""Bridges on real calls (in-process endpoint): two SIPp callers with their own tones are held
by a flow, then bridged; each hears the other; unbridge and a peer's hang-up publish their
interrupts, and a bridged pair cuts the media that was playing."""

from __future__ import annotations

import numpy as np
import pytest

from softswitch.flow.loader import load_flow_text
from tests.support.audio import dominant_frequency, tone
from tests.support.capture import LoopbackCapture
from tests.support.pcap import write_rtp_pcap
from tests.support.sipp import Sipp
from tests.support.waiting import wait_for

pytestmark = pytest.mark.sipp

HOLD_FLOW = """
name: hold
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [answer]}
nodes:
  - name: answer
    op: call.answer
    next: {Result: [music]}
  - name: music
    op: media.playAudio
    params: {sourceType: file, filePath: hold_music.wav, options: {mediaExecutionMode: background}}
    next: {Result: [hold]}
  - name: hold
    op: call.wait
    params:
      timeoutSeconds: 20
      options: {interruptReasons: [call_bridge_joined]}
    next: {Interrupted: [still_held]}
  - name: still_held
    op: call.wait
    params:
      timeoutSeconds: 20
      options: {interruptReasons: [call_bridge_removed_peer_ended, call_bridge_removed_unbridge]}
    next: {Interrupted: [bye]}
  - name: bye
    op: call.hangup
"""


def test_bridged_callers_hear_each_other_and_the_survivor_is_told(ua, tmp_path):
    from softswitch.flow.runtime import FlowEngine

    engine = ua.run_sync(lambda: FlowEngine(ua, [load_flow_text(HOLD_FLOW, "hold.yaml")]))
    ua.run_sync(lambda: setattr(ua, "handler", engine))
    port = ua.config.sip.udp_port
    try:
        pcaps = {}
        for freq in (440, 1000):
            pcaps[freq] = tmp_path / f"tone{freq}.pcap"
            write_rtp_pcap(pcaps[freq], tone(freq, 6.0))
        a = Sipp("uac_call_until_bye", f"127.0.0.1:{port}", calls=1, timeout_s=30,
                 variables={"caller": "5550440", "bye_timeout_ms": 20000}, keys={"pcap": pcaps[440]})
        b = Sipp("uac_call_pcap", f"127.0.0.1:{port}", calls=1, timeout_s=30,
                 variables={"caller": "5551000", "hold_ms": 4000}, keys={"pcap": pcaps[1000]})
        with LoopbackCapture(f"udp and (dst port {a.media_port} or dst port {b.media_port})",
                             tmp_path / "rtp.pcap") as cap:
            with a:
                wait_for(lambda: len(ua.run_sync(lambda: list(engine.legs))) == 1, 5, "caller A")
                with b:
                    wait_for(lambda: len(ua.run_sync(lambda: list(engine.legs))) == 2, 5, "caller B")
                    leg_a, leg_b = ua.run_sync(lambda: sorted(engine.legs.values(), key=lambda l: l.leg.id))
                    ua.run_sync(lambda: engine.bridges.bridge(leg_a, leg_b))
                    # Bridging finalized the hold music on both legs (call_bridge_joined).
                    assert ua.run_sync(lambda: len(engine.media)) == 0
                    result_b = b.wait(30)  # B hangs up after 4 s
                result_a = a.wait(30)  # A is hung up by the flow once told its peer ended
        assert result_b.ok, str(result_b)
        assert result_a.ok, str(result_a)
        streams = cap.streams()
        to_a = np.concatenate([s.audio() for k, s in streams.items() if s.dst[1] == a.media_port])
        to_b = np.concatenate([s.audio() for k, s in streams.items() if s.dst[1] == b.media_port])
        # After the bridge each side hears the other's tone instead of hold music.
        assert abs(dominant_frequency(to_b[-8000:], 8000) - 440) < 5, "B's last second is not A's 440 Hz"
        assert any(abs(dominant_frequency(to_a[i:i + 4000], 8000) - 1000) < 5
                   for i in range(0, len(to_a) - 4000, 2000)), "A never heard B's 1 kHz"
    finally:
        ua.run_sync(lambda: setattr(ua, "handler", None))
        ua.run_sync(engine.shutdown)

