"""dial.make in extension mode on real calls: two phones (SIPp) register with digest to
softswitch as extensions 1001 and 1002, a SIPp caller runs a flow that dials "1001,1002", and
the answering phone is bridged to the caller. Phone 1001 never answers; 1002 does.

Parallel: both phones ring at once; 1002's answer wins and 1001 gets a CANCEL. Sequential: 1001
rings alone until the attempt timeout, is cancelled, and 1002 rings after the gap and answers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.support.actors import register, uas_answer, uas_no_answer
from tests.support.pcap import write_rtp_pcap
from tests.support.ports import free_port
from tests.support.sipp import Sipp
from tests.support.siptrace import first, trace

pytestmark = pytest.mark.sipp

FLOW = """
name: operators
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
    params:
      callMode: extension
      extensionNumbers: "1001,1002"
      options: {callStrategy: STRATEGY, sequentialAttemptTimeoutSeconds: 2, sequentialGapSeconds: 1,
                callerNumber: "5550440", customSipHeaders: [{name: X-Queue, value: support}]}
    next: {Result: [wait], Unavailable: [unavailable]}
  - name: wait
    op: dial.wait
    params: {dialTimeoutSeconds: 20, waitEventOutputs: [rejected]}
    next: {Rejected: [wait], Answered: [bridge], Timeout: [timeout], Failed: [failed]}
  - name: bridge
    op: call.bridge
    params: {legAId: "{{ $('answer').item.json.legId }}", legBId: "{{ $json.legId }}"}
    next: {Success: [hold]}
  - name: hold
    op: call.wait
    params: {timeoutSeconds: 30, legIds: ["{{ $('answer').item.json.legId }}"]}
    next: {Ended: [bye_phone]}
  - name: bye_phone
    op: call.hangup
    params: {options: {legId: "{{ $('bridge').item.json.legIdB }}"}}
  - name: unavailable
    op: core.noop
  - name: timeout
    op: core.noop
  - name: failed
    op: core.noop
"""


def run(server_factory, tmp_path: Path, strategy: str, answer_delay_ms: int):
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW.replace("STRATEGY", strategy))
    server = server_factory(flows=[str(flow)], logging={"level": "debug", "pjsip_level": 1})
    registrar = f"127.0.0.1:{server.sip_port}"
    ports = {"1001": free_port("both"), "1002": free_port("both")}
    for user, port in ports.items():
        with register(registrar, user, f"pass{user}", local_port=port, timeout_s=10) as reg:
            result = reg.wait(15)
        assert result.ok, str(result)
    silence = tmp_path / "silence.pcap"
    write_rtp_pcap(silence, np.zeros(8000 * 8, dtype=np.int16))
    # The REGISTERs are over; each phone's port now takes the calls for its registration.
    with uas_no_answer(local_port=ports["1001"], timeout_s=30, trace_dir=tmp_path / "p1001") as p1001, \
            uas_answer(silence, answer_delay_ms=answer_delay_ms, local_port=ports["1002"], timeout_s=30,
                       trace_dir=tmp_path / "p1002") as p1002:
        caller = Sipp("uac_call_pcap", registrar, calls=1, timeout_s=30, trace_dir=tmp_path / "caller",
                      variables={"caller": "5551234", "hold_ms": 7000}, keys={"pcap": silence})
        with caller:
            caller_result = caller.wait(30)
        results = p1001.wait(15), p1002.wait(15)
    assert caller_result.ok, str(caller_result)
    assert results[0].ok, str(results[0])  # 1001: INVITE, then CANCEL
    assert results[1].ok, str(results[1])  # 1002: answered, then our BYE after the caller's
    assert server.wait_for_log("node bye_phone", 5)
    text = server.text()
    assert "finalized answered" in text and "dial.wait wait: Answered" in text
    assert "Traceback" not in text
    return server, trace(p1001), trace(p1002)


def test_parallel_extension_dial_rings_both_phones_and_cancels_the_one_not_answering(server_factory, tmp_path):
    server, p1001, p1002 = run(server_factory, tmp_path, "parallel", answer_delay_ms=1500)
    invite_1001, invite = first(p1001, "received", "INVITE ")
    invite_1002, _ = first(p1002, "received", "INVITE ")
    assert abs((invite_1002 - invite_1001).total_seconds()) < 1.0  # both ring at once
    answered, _ = first(p1002, "sent", "SIP/2.0 200")
    cancelled, _ = first(p1001, "received", "CANCEL ")
    # The loser is cancelled once the other phone answers (1.5 s in), not before. The two times
    # come from two SIPp processes' logs, which may stamp a message a millisecond late.
    assert (cancelled - answered).total_seconds() >= -0.05, (answered, cancelled)
    assert (cancelled - invite_1001).total_seconds() >= 1.4
    # The dial's caller ID and custom header reach the phones.
    assert re.search(r"^From: .*sip:5550440@", invite, flags=re.M) and "\nX-Queue: support" in invite


def test_sequential_extension_dial_rings_one_phone_at_a_time(server_factory, tmp_path):
    server, p1001, p1002 = run(server_factory, tmp_path, "sequential", answer_delay_ms=500)
    invite_1001, _ = first(p1001, "received", "INVITE ")
    cancelled, _ = first(p1001, "received", "CANCEL ")
    invite_1002, _ = first(p1002, "received", "INVITE ")
    # 1001 rang alone for the attempt timeout (2 s), then was cancelled; 1002 rang after the 1 s gap.
    assert (cancelled - invite_1001).total_seconds() >= 1.9
    assert invite_1002 > cancelled
    assert (invite_1002 - invite_1001).total_seconds() >= 2.8
    text = server.text()
    assert "not answered within 2s: cancelled" in text
    assert "dial.wait wait: Rejected" in text  # 1001's timeout, as a Rejected dial event
