"""Which re-offers softswitch refuses with 488: audio only in codecs it does not allow."""

from __future__ import annotations

import pytest

from softswitch.sip.legs import usable_audio

ALLOWED = {"PCMU", "PCMA", "G722"}


def offer(media: str) -> str:
    return "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" + media


@pytest.mark.parametrize("media, usable", [
    ("m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n", True),  # static PCMU
    ("m=audio 4000 RTP/AVP 9\r\n", True),  # static G.722, no rtpmap
    ("m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 PCMA/8000\r\n", True),  # dynamic, named by rtpmap
    ("m=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n", False),
    ("m=audio 4000 RTP/AVP 96 101\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n", False),
    ("m=audio 0 RTP/AVP 18\r\n", True),  # a stream being removed is not an audio offer
    ("", True),  # no media at all: nothing to refuse
])
def test_an_offer_is_usable_when_some_audio_stream_has_an_allowed_codec(media, usable):
    assert usable_audio(offer(media), ALLOWED) is usable
