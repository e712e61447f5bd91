"""Extension availability on the in-process endpoint: registrations and calls move extensions
between offline, online-and-free and busy, and every change is published for queues."""

from __future__ import annotations

import pytest

from tests.support.sipclient import SipClient
from tests.support.waiting import wait_for

pytestmark = pytest.mark.native

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
       "m=audio 40002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


class AnswerEverything:
    def on_incoming_leg(self, leg):
        leg.answer()


def test_registration_and_calls_change_availability(ua):
    changes = []
    unsubscribe = ua.run_sync(lambda: ua.extensions.subscribe(changes.append))
    ua.run_sync(lambda: setattr(ua, "handler", AnswerEverything()))
    port = ua.config.sip.udp_port
    try:
        assert not ua.run_sync(lambda: ua.extensions.online("1002"))
        with SipClient(("127.0.0.1", port), local_ip="127.0.0.2") as phone:
            assert phone.register("1002", "pass1002", expires=300).status == 200
            wait_for(lambda: any(c.extension == "1002" and c.reason == "registered" for c in changes))
            assert ua.run_sync(lambda: (ua.extensions.online("1002"), ua.extensions.free("1002"))) == (True, True)

            # The extension places a call: busy until it ends.
            uri = f"sip:5550001@127.0.0.1:{port}"
            headers = [("Contact", f"<sip:1002@127.0.0.2:{phone.local_port}>"), ("Content-Type", "application/sdp")]
            phone.send(phone.request("INVITE", uri, from_user="1002", to_user="5550001", headers=headers, body=SDP))
            challenge = phone.final()
            assert challenge.status == 407
            answer = phone.answer_challenge("INVITE", uri, challenge, "1002", "pass1002", headers=headers,
                                            body=SDP, to_user="5550001")
            assert answer.status == 200
            wait_for(lambda: any(c.reason == "call_started" and not c.free for c in changes))
            assert ua.run_sync(lambda: ua.extensions.free("1002")) is False

            bye = phone.ack_and_bye(answer, uri, from_user="1002", to_user="5550001")
            assert bye is not None and bye.status == 200
            wait_for(lambda: any(c.reason == "call_ended" and c.free for c in changes))

            assert phone.register("1002", "pass1002", contacts=["*"], expires=0).status == 200
        wait_for(lambda: any(c.reason == "unregistered" and not c.online for c in changes))
        reasons = [c.reason for c in changes if c.extension == "1002"]
        assert reasons == ["registered", "call_started", "call_ended", "unregistered"]
    finally:
        ua.run_sync(unsubscribe)
        ua.run_sync(lambda: setattr(ua, "handler", None))
