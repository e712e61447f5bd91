"""Overload control on real SIP: a new INVITE over a limit (live calls, new calls per second,
CPU) gets 503 with Retry-After from the native gate, before pjsua creates a call, while the
calls already admitted keep clean audio; the 503 is stateful (a retransmitted INVITE gets it
again, the ACK stops it); and the gate counts refusals and SIP responses by code."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import numpy as np
import pytest

from softswitch.config import Limits
from tests.support.audio import frame_rms
from tests.support.callcentre import heard, no_errors, pcap_of
from tests.support.capture import LoopbackCapture
from tests.support.sipclient import SipClient
from tests.support.sipp import Sipp
from tests.support.waiting import wait_for

pytestmark = pytest.mark.sipp

TONE_FLOW = """
name: overload
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

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def tone_server(server_factory, tmp_path: Path, **limits):
    flow = tmp_path / "flow.yaml"  # one server per test at a time: they share tmp_path's config
    flow.write_text(TONE_FLOW)
    return server_factory(flows=[str(flow)], limits=limits, logging={"level": "info", "pjsip_level": 1})


def callers(server, tmp_path: Path, name: str, calls: int, rate: float, hold_ms: int, seconds: float) -> Sipp:
    """A SIPp trunk placing `calls` at `rate` per second, each answered or refused (uac_call_or_503)."""
    return Sipp("uac_call_or_503", f"127.0.0.1:{server.sip_port}", calls=calls, rate=rate, limit=calls,
                variables={"caller": "5551234", "hold_ms": hold_ms},
                keys={"pcap": pcap_of(tmp_path, f"{name}-caller", 1000, seconds)},
                timeout_s=60, trace_dir=tmp_path / f"sipp-{name}")


def refusals(server) -> dict[str, int]:
    """The gate's refusals by reason, summed over the server's aggregated log lines."""
    totals = {"concurrent": 0, "rate": 0, "cpu": 0, "loop_lag": 0, "trunk_rate": 0}
    for line in re.findall(r"refused \d+ new calls in the last second: (.*)$", server.text(), flags=re.M):
        for reason, n in re.findall(r"(\w+)=(\d+)", line):
            totals[reason] += int(n)
    return totals


def legs_created(server) -> int:
    return server.text().count(" live legs)")


def test_invites_at_twice_the_concurrent_limit_get_503_and_admitted_calls_keep_clean_audio(server_factory, tmp_path):
    n = 10
    server = tone_server(server_factory, tmp_path, max_concurrent_calls=n, retry_after_seconds=9)
    uac = callers(server, tmp_path, "burst", 2 * n, rate=40, hold_ms=6000, seconds=7)
    with LoopbackCapture(f"udp and dst port {uac.media_port}", tmp_path / "rtp.pcap") as cap:
        with uac:
            result = uac.wait(60)
    assert result.ok, str(result)
    outcomes = result.log_values("outcome")
    assert outcomes.count("200") == n and outcomes.count("503") == n, outcomes
    assert result.log_values("retry_after") == ["9"] * n
    assert server.wait_for_log("concurrent=", 5)
    assert refusals(server)["concurrent"] == n and legs_created(server) == n

    # Every admitted call got the tone for its whole 6 s, paced, with nothing missing.
    streams = list(cap.streams(dst_port=uac.media_port).values())
    assert len(streams) == n
    for stream in streams:
        gaps = stream.arrival_gaps_ms()
        assert gaps.max() < 60, f"{stream.src}: RTP gap of {gaps.max():.0f} ms"
        assert 5.0 < stream.duration_seconds() < 7.5, stream.duration_seconds()
        audio = stream.audio()
        assert heard(audio, 440)
        # 20 ms frames, the first and last 0.2 s aside: the looped tone has no silent frame, not
        # even at its loop seams, and a stall would silence some.
        silent = frame_rms(audio[1600:-1600]) < 0.05
        assert not np.any(silent), f"{silent.sum()} silent frames inside the tone"
        assert len(stream.audio_packets()) >= 50 * (stream.duration_seconds() - 0.1)

    # Once the admitted calls have ended, a new call is admitted again.
    again = callers(server, tmp_path, "after", 1, rate=1, hold_ms=500, seconds=1)
    with again:
        later = again.wait(30)
    assert later.ok and later.log_values("outcome") == ["200"], str(later)
    no_errors(server)


def test_calls_over_the_rate_limit_get_503_with_retry_after(server_factory, tmp_path):
    server = tone_server(server_factory, tmp_path, max_calls_per_second=5, retry_after_seconds=4)
    uac = callers(server, tmp_path, "rate", 50, rate=20, hold_ms=500, seconds=1)
    started = time.monotonic()
    with uac:
        result = uac.wait(60)
    placing = time.monotonic() - started  # 2.5 s of INVITEs, plus the last calls' hold
    assert result.ok, str(result)
    outcomes = result.log_values("outcome")
    admitted, refused = outcomes.count("200"), outcomes.count("503")
    assert admitted + refused == 50
    # A bucket of 5 that refills at 5 per second: 5 at once, then about 5 each second.
    assert refused > 0
    assert 8 <= admitted <= 5 + 5 * placing, (admitted, placing)
    assert result.log_values("retry_after") == ["4"] * refused
    assert server.wait_for_log("rate=", 5)
    assert refusals(server)["rate"] == refused and legs_created(server) == admitted
    no_errors(server)


def test_cpu_limit_refuses_new_calls_while_overloaded(server_factory, tmp_path):
    # An idle softswitch spends a few percent of a core turning its loop every 10 ms: over 1 %.
    busy = tone_server(server_factory, tmp_path, max_cpu_percent=1)
    assert busy.wait_for_log("overloaded (cpu)", 10), busy.text()[-3000:]
    uac = callers(busy, tmp_path, "busy", 1, rate=1, hold_ms=500, seconds=1)
    with uac:
        result = uac.wait(30)
    assert result.ok and result.log_values("outcome") == ["503"], str(result)
    assert result.log_values("retry_after") == ["5"]  # the default
    assert busy.wait_for_log("cpu=1", 5)
    assert legs_created(busy) == 0
    busy.stop()

    sane = tone_server(server_factory, tmp_path, max_cpu_percent=400)
    time.sleep(1.5)  # several samples: a sane limit is never reached by an idle server
    uac = callers(sane, tmp_path, "sane", 1, rate=1, hold_ms=500, seconds=1)
    with uac:
        result = uac.wait(30)
    assert result.ok and result.log_values("outcome") == ["200"], str(result)
    assert "overloaded" not in sane.text()


def test_a_refused_invites_retransmission_gets_the_same_503_and_no_leg_is_created(server_factory, tmp_path):
    server = tone_server(server_factory, tmp_path, max_cpu_percent=1, retry_after_seconds=6)
    assert server.wait_for_log("overloaded (cpu)", 10), server.text()[-3000:]
    uri = f"sip:555@127.0.0.1:{server.sip_port}"
    with SipClient(("127.0.0.1", server.sip_port)) as trunk:
        headers = [("Contact", f"<sip:c@127.0.0.1:{trunk.local_port}>"), ("Content-Type", "application/sdp")]
        invite = trunk.request("INVITE", uri, from_user="c", to_user="555", headers=headers, body=SDP,
                               branch="z9hG4bKoverload1")
        trunk.send(invite)
        first = trunk.final(5)
        trunk.send(invite)  # the same bytes again: a UDP retransmission
        second = trunk.final(5)
        assert first is not None and first.status == 503 and first.header("Retry-After") == "6", first
        assert second is not None and second.raw == first.raw
        # Stateful: unacknowledged, the 503 is sent again (Timer G) ...
        again = trunk.final(3)
        assert again is not None and again.raw == first.raw
        tag = re.search(r";tag=([^;>\s]+)", first.header("To")).group(1)
        trunk.send(trunk.request("ACK", uri, from_user="c", to_user="555", cseq=1, to_tag=tag,
                                 branch="z9hG4bKoverload1"))
        while trunk.final(0.5) is not None:  # one may have been on its way
            pass
        # ... and the ACK, absorbed by the transaction, stops it.
        assert trunk.final(2.5) is None
    # The gate saw the INVITE once (the transaction answered its retransmission); no call was created.
    assert server.wait_for_log("cpu=1", 5)
    assert refusals(server)["cpu"] == 1
    assert legs_created(server) == 0


def test_the_gate_counts_refusals_and_sip_responses_by_code(ua):
    reg = ua.registrar
    before, counts_before = ua.run_sync(reg.stats), ua.run_sync(reg.sip_response_counts)
    limited = dataclasses.replace(ua.config, limits=Limits(max_calls_per_second=1, retry_after_seconds=3))
    ua.run_sync(reg.apply_config, limited)
    try:
        uri = f"sip:555@127.0.0.1:{ua.listen.udp_port}"
        with SipClient(("127.0.0.1", ua.listen.udp_port)) as a, SipClient(("127.0.0.1", ua.listen.udp_port)) as b:
            for c in (a, b):  # back to back: one token in the bucket
                c.send(c.request("INVITE", uri, from_user="c", to_user="555", body=SDP, headers=[
                    ("Contact", f"<sip:c@127.0.0.1:{c.local_port}>"), ("Content-Type", "application/sdp")]))
            answers = sorted(r.status for r in (a.final(5), b.final(5)) if r is not None)
            # A stray response reaches the endpoint too, and is counted as received.
            a.send("SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKstray\r\n"
                   "From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:y@127.0.0.1>;tag=2\r\nCall-ID: stray\r\n"
                   "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    finally:
        ua.run_sync(reg.apply_config, ua.config)
    assert answers[-1] == 503 and answers[0] != 503, answers  # the other one reached the UA
    wait_for(lambda: ua.run_sync(reg.sip_response_counts).get(("received", 486), 0)
             > counts_before.get(("received", 486), 0), timeout=5)
    after, counts = ua.run_sync(reg.stats), ua.run_sync(reg.sip_response_counts)
    assert after["overload_rate"] == before["overload_rate"] + 1
    assert after["invite_passed"] == before["invite_passed"] + 1
    assert counts[("sent", 503)] >= counts_before.get(("sent", 503), 0) + 1
    assert counts[("sent", answers[0])] >= counts_before.get(("sent", answers[0]), 0) + 1
    assert all(direction in ("sent", "received") and 100 <= code < 700 and n > 0
               for (direction, code), n in counts.items())
    assert ua.run_sync(reg.overload_state).overloaded is None
    wait_for(lambda: not ua.legs, timeout=5)
