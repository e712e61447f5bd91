"""Issue 13, defect 2 over long calls: RFC 4028 session timers at pjsip's smallest interval.

pjsip refuses a Session-Expires under 90 s (its ABS_MIN_SE; 422 to a peer, an assertion for our
own setting), so these calls last about a minute. To keep that minute single, one server
(`session_timers: always`, Session-Expires 90) carries two calls at once:

- a real linphone (liblinphone 5.1, which has no session timers of its own) calls in: softswitch
  is the refresher and refreshes at half the interval (45 s); the linphone answers, and audio
  goes on both ways across the refresh (decoded from a loopback capture and from the recording);
- a SIPp caller asks for timers with refresher=uac and never refreshes: softswitch ends the call
  before the session expires (at 60 s, pjsip's Session-Expires minus a third), and the call record
  says session_expired.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.support import softphone
from tests.support.audio import dominant_frequency, silence, tone, ulaw_decode
from tests.support.callcentre import json_lines
from tests.support.capture import LoopbackCapture
from tests.support.pcap import Packet, PT_PCMU, parse_rtp, write_rtp_pcap
from tests.support.server import ServerProcess, write_test_config
from tests.support.sipp import Sipp, SippResult
from tests.support.softphone import Linphone

pytestmark = [pytest.mark.sipp, pytest.mark.interop,
              pytest.mark.skipif(not softphone.available(), reason="linphone-daemon is not installed")]

SERVER_HZ = 700  # what softswitch plays to both callers
PHONE_HZ = 1000  # what the linphone sends
RECORD_S = 52  # the recording covers the refresh at 45 s
FLOW = f"""
name: long_calls
triggers:
  - name: trunk_main
    trigger: trunk
    params: {{ref: trunk_main}}
    next: {{Call: [answer]}}
nodes:
  - name: answer
    op: call.answer
    next: {{Result: [tone]}}
  - name: tone
    op: media.playTone
    params: {{tone: custom, customTone: "{SERVER_HZ}/1000", repeatInfinite: true,
             options: {{mediaExecutionMode: background}}}}
    next: {{Result: [record]}}
  - name: record
    op: media.recordAudio
    params: {{maxDurationSeconds: {RECORD_S}, recordOutputType: file,
             recordFilePath: "long/{{{{ $('answer').item.json.legId }}}}.wav"}}
    next: {{Completed: [linger], Interrupted: [linger]}}
  - name: linger
    op: call.wait
    params: {{timeoutSeconds: 60}}
    next: {{Timeout: [bye]}}
  - name: bye
    op: call.hangup
"""


@dataclass
class LongCalls:
    server: ServerProcess
    records: list[dict]
    sipp: SippResult
    phone_number: str
    sipp_number: str
    packets: list[Packet]
    phone_sip_port: int
    phone_rtp: range
    recordings: Path


@pytest.fixture(scope="module")
def long_calls(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("timers")
    flow = tmp / "flow.yaml"
    flow.write_text(FLOW)
    records = tmp / "calls.jsonl"
    cfg = write_test_config(tmp, sip={"session_timers": "always", "session_expires": 90, "min_se": 90},
                            media={"codecs": ["PCMU", "telephone-event"]}, flows=[str(flow)],
                            records={"call_records": str(records)}, logging={"level": "debug", "pjsip_level": 3})
    server = ServerProcess(cfg).start()
    wav = tmp / "phone.wav"
    sf.write(wav, tone(PHONE_HZ, 70), 8000, subtype="PCM_16")
    quiet = tmp / "quiet.pcap"
    write_rtp_pcap(quiet, silence(2.0))
    caller = Sipp("uac_timer_call", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=90, service="2000",
                  variables={"caller": "5557002", "bye_timeout_ms": 85000, "h1": "Supported: timer",
                             "h2": "Session-Expires: 90;refresher=uac"}, keys={"pcap": quiet},
                  trace_dir=tmp / "sipp")
    phone = Linphone(tmp / "linphone", name="caller", user="5557001")
    try:
        phone.start()
        rtp = range(phone.rtp_port, phone.rtp_port + 20)
        with LoopbackCapture(f"udp and (port {phone.sip_port} or dst portrange {rtp.start}-{rtp.stop - 1})",
                             tmp / "phone.pcap") as cap:
            caller.start()
            call = phone.call(f"sip:2000@127.0.0.1:{server.sip_port}")
            phone.wait_call_state("LinphoneCallStreamsRunning", call, timeout=10)
            answered = time.monotonic()
            phone.play(wav, call)
            # The recording ends 52 s after the answer; the refresh came at 45 s.
            while time.monotonic() < answered + RECORD_S + 2:
                time.sleep(0.5)
            phone.terminate(call)
            phone.wait_event("LinphoneCallReleased", timeout=10)
        sipp = caller.wait(60)
        deadline = time.monotonic() + 10
        while len(json_lines(records)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield LongCalls(server, json_lines(records), sipp, "5557001", "5557002", cap.packets(), phone.sip_port,
                        rtp, tmp / "recordings" / "long")
    finally:
        phone.stop()
        if caller.running:
            caller.stop()
        server.stop()


def _record(calls: LongCalls, number: str) -> dict:
    found = [r for r in calls.records if r["from"] == number]
    assert len(found) == 1, (number, calls.records, calls.server.text()[-3000:])
    return found[0]


def _answered(calls: LongCalls) -> float:
    """When softswitch's 200 to the phone's INVITE went out."""
    return next(p.ts for p in calls.packets if p.dst_port == calls.phone_sip_port
                and p.payload.startswith(b"SIP/2.0 200") and re.search(rb"(?im)^CSeq:\s*\d+ INVITE", p.payload))


def _refresh(calls: LongCalls) -> tuple[float, str, str]:
    """(time, request, answer) of softswitch's session refresh to the phone and the phone's 200."""
    sip = [(p.ts, p.payload.decode("utf-8", "replace"), p) for p in calls.packets
           if p.dst_port == calls.phone_sip_port or p.src_port == calls.phone_sip_port]
    requests = [(ts, text) for ts, text, p in sip if p.dst_port == calls.phone_sip_port
                and re.match(r"(UPDATE|INVITE) ", text) and re.search(r"(?im)^(session-expires|x):", text)]
    assert requests, [text.split("\r\n", 1)[0] for _, text, _ in sip]
    ts, request = requests[0]
    cseq = re.search(r"(?im)^CSeq:\s*(.+?)\s*$", request).group(1)
    answers = [text for t, text, p in sip if p.src_port == calls.phone_sip_port and t >= ts
               and text.startswith("SIP/2.0 200") and re.search(rf"(?im)^CSeq:\s*{re.escape(cseq)}\s*$", text)]
    assert answers, f"the phone did not answer the refresh {cseq}"
    return ts, request, answers[0]


def test_softswitch_refreshes_a_linphone_call_and_the_audio_goes_on(long_calls: LongCalls):
    ts, request, _ = _refresh(long_calls)
    # In a refresh, refresher=uac names its sender: softswitch keeps the session alive.
    assert re.search(r"(?im)^(session-expires|x):\s*90;refresher=uac", request), request
    assert ts - _answered(long_calls) > 30, "a refresh, not an update right after the answer"
    # What the phone heard, before and after the refresh: decoded RTP in 3-second windows.
    packets = [(p.ts, parse_rtp(p.payload)) for p in long_calls.packets if p.dst_port in long_calls.phone_rtp]
    audio = [(t, rtp) for t, rtp in packets if rtp is not None and rtp.pt == PT_PCMU]

    def heard(start: float, end: float) -> float:
        chunk = np.concatenate([ulaw_decode(r.payload) for t, r in audio if start <= t < end] or [np.zeros(0)])
        assert len(chunk) > 8000 * (end - start) * 0.9, (start - ts, end - ts, len(chunk))
        return dominant_frequency(chunk, 8000)

    assert heard(ts - 3.5, ts - 0.5) == pytest.approx(SERVER_HZ, abs=8)
    assert heard(ts + 0.5, ts + 3.5) == pytest.approx(SERVER_HZ, abs=8)
    # What softswitch heard from the phone: its recording, whose last seconds come after the refresh.
    record = _record(long_calls, long_calls.phone_number)
    wavs = [Path(p) for p in record["recordings"]]
    assert len(wavs) == 1 and wavs[0].parent == long_calls.recordings, record
    data, rate = sf.read(wavs[0], dtype="int16")
    assert len(data) / rate == pytest.approx(RECORD_S, abs=1.5)
    assert dominant_frequency(data[-4 * rate:-rate], rate) == pytest.approx(PHONE_HZ, abs=8)
    assert dominant_frequency(data[5 * rate:8 * rate], rate) == pytest.approx(PHONE_HZ, abs=8)
    assert record["legs"][0]["end_reason"] == "remote_hangup", record


def test_a_session_nobody_refreshes_ends_as_session_expired(long_calls: LongCalls):
    assert long_calls.sipp.ok, str(long_calls.sipp)  # the caller got softswitch's BYE
    record = _record(long_calls, long_calls.sipp_number)
    leg = record["legs"][0]
    assert (leg["end_reason"], leg["sip_code"]) == ("session_expired", 408), record
    assert record["hangup"]["reason"] == "session_expired", record
    assert record["answered"] is not None
