"""Re-INVITEs a live call must survive (bad input of issue 13): an offer with no codec softswitch
can use, an SDP that does not parse, and a re-INVITE with the same SDP. Each gets a correct SIP
answer (488/400, or 200 for the unchanged offer), and the tone softswitch plays keeps flowing to
the caller without a gap (decoded from a loopback capture), before, between and after them."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.support.audio import dominant_frequency
from tests.support.capture import LoopbackCapture
from tests.support.ports import free_port
from tests.support.sipclient import SipClient

pytestmark = pytest.mark.sipp

TONE_FLOW = """
name: tone
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [answer]}
nodes:
  - name: answer
    op: call.answer
    next: {Result: [tone]}
  - name: tone
    op: media.playTone
    params: {tone: custom, customTone: "440/1000", repeatInfinite: true}
"""


def sdp(port: int, payload_types: str = "0", rtpmap: str = "a=rtpmap:0 PCMU/8000\r\n", version: int = 1) -> str:
    return (f"v=0\r\no=- 1 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {payload_types}\r\n{rtpmap}a=sendrecv\r\n")


def test_unusable_and_unchanged_reinvites_leave_the_live_call_as_it_was(server_factory, tmp_path: Path):
    flow = tmp_path / "flow.yaml"
    flow.write_text(TONE_FLOW)
    server = server_factory(flows=[str(flow)], logging={"level": "info", "pjsip_level": 1})
    media_port = free_port("udp")
    uri = f"sip:2000@127.0.0.1:{server.sip_port}"
    with LoopbackCapture(f"udp and dst port {media_port}", tmp_path / "rtp.pcap") as cap, \
            SipClient(("127.0.0.1", server.sip_port), timeout=5.0) as phone:
        contact = [("Contact", f"<sip:5551234@127.0.0.1:{phone.local_port}>")]
        sdp_type = [("Content-Type", "application/sdp")]
        phone.send(phone.request("INVITE", uri, from_user="5551234", to_user="2000", headers=contact + sdp_type,
                                 body=sdp(media_port)))
        answer = phone.final()
        assert answer is not None and answer.status == 200, answer
        tag = re.search(r";tag=([^;>\s]+)", answer.header("To") or "").group(1)
        phone.send(phone.request("ACK", uri, from_user="5551234", to_user="2000", cseq=1, to_tag=tag))
        time.sleep(1.5)

        answers = {}
        offers = {
            "no usable codec": sdp(media_port, "18", "a=rtpmap:18 G729/8000\r\n", version=2),
            "unparsable SDP": "v=0\r\nthis is not an SDP body\r\n",
            "the same SDP": sdp(media_port, version=1),
        }
        for name, body in offers.items():
            branch = "z9hG4bK" + uuid.uuid4().hex[:16]
            phone.send(phone.request("INVITE", uri, from_user="5551234", to_user="2000", headers=contact + sdp_type,
                                     body=body, branch=branch, to_tag=tag))
            final = phone.final()
            assert final is not None, f"{name}: no answer to the re-INVITE"
            answers[name] = final.status
            ack_branch = branch if final.status >= 300 else None  # a non-2xx ACK is part of the transaction
            phone.send(phone.request("ACK", uri, from_user="5551234", to_user="2000", cseq=phone.cseq,
                                     to_tag=tag, branch=ack_branch))
            time.sleep(1.0)
        time.sleep(0.5)
        phone.send(phone.request("BYE", uri, from_user="5551234", to_user="2000", to_tag=tag))
        bye = phone.final()

    assert answers["no usable codec"] == 488, answers
    assert 400 <= answers["unparsable SDP"] < 500, answers
    assert answers["the same SDP"] == 200, answers
    assert bye is not None and bye.status == 200

    streams = [s for s in cap.streams().values() if s.dst[1] == media_port]
    packets = sorted((p for s in streams for p in s.packets), key=lambda p: p.arrival)
    assert packets, "no RTP to the caller"
    gaps = np.diff([p.arrival for p in packets])
    assert gaps.max() < 0.2, f"the caller's audio stopped for {gaps.max():.2f} s"
    audio = np.concatenate([s.audio() for s in streams])
    assert abs(dominant_frequency(audio[-8000:], 8000) - 440) < 10  # the tone is still there at the end
    assert server.proc.poll() is None
