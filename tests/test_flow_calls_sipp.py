"""Flows on real calls: a trunk trigger, call.answer, call.wait with DTMF rules, call.hangup,
and the free-TTL that hangs up an answered leg nobody holds."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.callcentre import log_time
from tests.support.pcap import write_rtp_pcap
from tests.support.sipp import Sipp

pytestmark = pytest.mark.sipp

MENU_FLOW = """
name: menu
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [answer]}
nodes:
  - name: answer
    op: call.answer
    next: {Result: [menu]}
  - name: menu
    op: call.wait
    params:
      timeoutSeconds: 4
      rules: [{pattern: "1", label: Support}, {pattern: "2", label: Sales}]
    next: {Support: [bye_support], Sales: [bye_sales], Timeout: [bye_timeout]}
  - name: bye_support
    op: call.hangup
  - name: bye_sales
    op: call.hangup
  - name: bye_timeout
    op: call.hangup
"""

IDLE_FLOW = """
name: idle
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [answer]}
nodes:
  - name: answer
    op: call.answer
"""


def flow_server(server_factory, tmp_path: Path, text: str):
    flow = tmp_path / "flow.yaml"
    flow.write_text(text)
    return server_factory(flows=[str(flow)], logging={"level": "debug", "pjsip_level": 1})


def call_until_bye(server, tmp_path: Path, dtmf: list[tuple[str, float, int]], seconds: float = 3.0):
    pcap = tmp_path / "caller.pcap"
    write_rtp_pcap(pcap, np.zeros(int(8000 * seconds), dtype=np.int16), dtmf=dtmf)
    uac = Sipp("uac_call_until_bye", f"127.0.0.1:{server.sip_port}", calls=1,
               variables={"caller": "5551234", "bye_timeout_ms": 15000}, keys={"pcap": pcap}, timeout_s=30)
    started = time.monotonic()
    with uac:
        result = uac.wait(30)
    return result, time.monotonic() - started


@pytest.mark.parametrize("digit, node", [("1", "bye_support"), ("2", "bye_sales")])
def test_menu_digit_takes_its_rule_branch(server_factory, tmp_path, digit, node):
    server = flow_server(server_factory, tmp_path, MENU_FLOW)
    result, elapsed = call_until_bye(server, tmp_path, dtmf=[(digit, 0.5, 160)])
    assert result.ok, str(result)
    assert elapsed < 3.5  # hung up by the rule's branch, not by the 4 s timeout
    assert server.wait_for_log(f"node {node}")
    assert "node bye_timeout" not in server.text()


def test_menu_without_digits_times_out(server_factory, tmp_path):
    server = flow_server(server_factory, tmp_path, MENU_FLOW)
    result, elapsed = call_until_bye(server, tmp_path, dtmf=[], seconds=1.0)
    assert result.ok, str(result)
    assert 3.5 < elapsed < 8
    assert server.wait_for_log("node bye_timeout")


def test_answered_leg_left_idle_is_hung_up_after_the_free_ttl(server_factory, tmp_path):
    server = flow_server(server_factory, tmp_path, IDLE_FLOW)
    result, elapsed = call_until_bye(server, tmp_path, dtmf=[], seconds=1.0)
    assert result.ok, str(result)
    assert 4.5 < elapsed < 8, elapsed
    assert server.wait_for_log("(free_ttl)")


def test_a_call_from_a_trunk_without_a_trigger_is_refused(server_factory, tmp_path):
    other = IDLE_FLOW.replace("ref: trunk_main", "ref: trunk_other")
    flow = tmp_path / "flow.yaml"
    flow.write_text(other)
    server = server_factory(flows=[str(flow)], trunks={"trunk_main": {"address": "127.0.0.1"},
                                                       "trunk_other": {"address": "127.0.0.9"}})
    uac = Sipp("uac_expect_failure", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=20,
               variables={"caller": "5551234", "cancel_after_ms": 5000})
    with uac:
        result = uac.wait(20)
    assert result.log_values("final_status") == ["480"], str(result)


PROMPT_FLOW = """
name: prompt
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [answer]}
nodes:
  - name: answer
    op: call.answer
    next: {Result: [play_menu]}
  - name: play_menu
    op: media.playAudio
    params: {sourceType: file, filePath: menu.wav, interruptOn: [dtmf]}
    next: {Interrupted: [menu], Completed: [menu]}
  - name: menu
    op: call.wait
    params:
      timeoutSeconds: 3
      rules: [{pattern: "1", label: Support}, {pattern: "2", label: Sales}]
    next: {Support: [music], Sales: [bye], Timeout: [bye]}
  - name: music
    op: media.playAudio
    params: {sourceType: file, filePath: hold_music.wav, options: {mediaExecutionMode: background}}
    next: {Result: [music_wait]}
  - name: music_wait
    op: media.wait
    params: {waitMediaTimeoutSeconds: 1}
    next: {Timeout: [stop_music]}
  - name: stop_music
    op: media.stopMedia
    params: {stopMediaTarget: legId}
    next: {Result: [bye]}
  - name: bye
    op: call.hangup
"""


def test_blocking_prompt_interrupted_by_dtmf_then_the_digit_reaches_the_menu(server_factory, tmp_path):
    from tests.support.capture import LoopbackCapture
    server = flow_server(server_factory, tmp_path, PROMPT_FLOW)
    pcap = tmp_path / "caller.pcap"
    write_rtp_pcap(pcap, np.zeros(8000 * 4, dtype=np.int16), dtmf=[("1", 1.0, 160)])
    uac = Sipp("uac_call_until_bye", f"127.0.0.1:{server.sip_port}", calls=1,
               variables={"caller": "5551234", "bye_timeout_ms": 15000}, keys={"pcap": pcap}, timeout_s=30)
    with LoopbackCapture(f"udp and dst port {uac.media_port}", tmp_path / "rtp.pcap") as cap:
        with uac:
            result = uac.wait(30)
    assert result.ok, str(result)
    text = server.text()
    # The digit cut the menu prompt short, then matched rule 1 in the wait that followed.
    for node in ("play_menu", "menu", "music", "music_wait", "stop_music", "bye"):
        assert f"node {node} " in text, node
    stream = next(iter(cap.streams(dst_port=uac.media_port).values()))
    from tests.support.audio import active_seconds
    # The menu prompt (6.9 s) cut after ~1 s, about 1 s of hold music, then BYE.
    assert 1.5 < stream.duration_seconds() < 4.0, stream.duration_seconds()
    assert active_seconds(stream.audio(), 8000, 0.005) > 0.8


FULL_MENU_FLOW = """
name: full_menu
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [answer]}
nodes:
  - name: answer
    op: call.answer
    next: {Result: [menu]}
  - name: menu
    op: call.wait
    params:
      timeoutSeconds: 6
      rules:
        - {pattern: "1", label: Support}
        - {pattern: "2", label: Sales}
        - {pattern: "3", label: Assistant}
        - {pattern: "12", label: Twelve}
      waitDtmfFallbackEnabled: true
      options: {interdigitTimeoutSeconds: 1.5}
    next: {Support: [bye_support], Sales: [bye_sales], Assistant: [bye_assistant], Twelve: [bye_twelve],
           DTMF Fallback: [bye_fallback], Timeout: [bye_timeout]}
""" + "".join(f"""  - name: bye_{n}
    op: call.hangup
""" for n in ("support", "sales", "assistant", "twelve", "fallback", "timeout"))


@pytest.mark.parametrize("presses, node, at_least, at_most", [
    # "1" is also the start of "12": the menu waits out the 1.5 s interdigit time, then takes "1".
    ([("1", 0.5, 160)], "bye_support", 2.0, 4.5),
    # "1" then "2" within the interdigit time: the longer rule.
    ([("1", 0.5, 160), ("2", 1.0, 160)], "bye_twelve", 0.9, 3.5),
    # "3" starts no longer rule: taken at once.
    ([("3", 0.5, 160)], "bye_assistant", 0.4, 2.5),
    # "7" matches no rule: the fallback branch.
    ([("7", 0.5, 160)], "bye_fallback", 0.4, 4.5),
])
def test_menu_rules_interdigit_and_fallback_on_real_calls(server_factory, tmp_path, presses, node, at_least, at_most):
    server = flow_server(server_factory, tmp_path, FULL_MENU_FLOW)
    result, elapsed = call_until_bye(server, tmp_path, dtmf=presses, seconds=6.0)
    assert result.ok, str(result)
    assert server.wait_for_log(f"node {node} ")
    assert sum("node bye_" in line for line in server.text().splitlines()) == 1
    # Elapsed counts from SIPp's start (INVITE, answer, pcap start): the branch timing is in the log.
    answered = log_time(server.text(), "node menu ")
    taken = log_time(server.text(), f"node {node} ")
    assert at_least - 0.5 <= taken - answered <= at_most, (taken - answered)



HANGUP_AFTER_END_FLOW = """
name: hangup_after_end
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [answer]}
nodes:
  - name: answer
    op: call.answer
    next: {Result: [menu]}
  - name: menu
    op: call.wait
    params: {timeoutSeconds: 10}
    next: {Ended: [hangup_gone_caller]}
  - name: hangup_gone_caller
    op: call.hangup
    next: {Result: [after_hangup]}
  - name: after_hangup
    op: call.hangup
"""


def test_hanging_up_a_leg_the_far_end_just_hung_up_is_not_a_flow_error(server_factory, tmp_path):
    server = flow_server(server_factory, tmp_path, HANGUP_AFTER_END_FLOW)
    pcap = tmp_path / "caller.pcap"
    write_rtp_pcap(pcap, np.zeros(8000, dtype=np.int16))
    uac = Sipp("uac_call_pcap", f"127.0.0.1:{server.sip_port}", calls=1,
               variables={"caller": "5551234", "hold_ms": 1000}, keys={"pcap": pcap}, timeout_s=20)
    with uac:
        result = uac.wait(20)
    assert result.ok, str(result)
    # Both hangups ran after the caller's BYE and passed their Result on; nothing failed.
    assert server.wait_for_log("node after_hangup")
    assert "node hangup_gone_caller" in server.text()
    assert "unknown or ended leg" not in server.text()
    assert " ERROR " not in server.text()
