"""Queues on real calls: SIPp trunk callers are queued by a flow, SIPp agents REGISTER (digest)
and answer; the Queue trigger's Placed / Dispatch / Offline drive the flow, and a waiting
callback survives a restart of the server process."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.actors import uac_call, uac_until_bye
from tests.support.callcentre import agent, log_time, no_errors, pcap_of, queue_events
from tests.support.audio import dominant_frequency
from tests.support.capture import LoopbackCapture
from tests.support.waiting import wait_for

pytestmark = pytest.mark.sipp

FLOW = """
name: queueing
triggers:
  - name: trunk_main
    trigger: trunk
    params: {{ref: trunk_main}}
    next: {{Call: [answer]}}
  - name: support
    trigger: queue
    params: {{ref: queue_support, queueExtensions: "{extensions}"}}
    next: {{Placed: [placed], Dispatch: [dispatch_entry], Offline: [offline_is_live]}}
nodes:
  - name: answer
    op: call.answer
    next: {{Result: [put]}}
  - name: put
    op: queue.putLeg
    params: {{ref: queue_support, options: {{retryAttempts: {retries}, retryPauseSeconds: {pause}}}}}
    next: {{Result: [position]}}
  - name: position
    op: queue.getStats
    params: {{queueStatsTarget: legId}}
    next: {{Result: [hold]}}
  - name: hold
    op: call.wait
    params:
      timeoutSeconds: 30
      rules: [{{pattern: "9", label: Callback}}]
      options: {{interruptReasons: [call_queue_removed]}}
    next: {{Callback: [callback_on], Timeout: [position]}}
  - name: callback_on
    op: queue.setCallback
    next: {{Result: [hold]}}
  - name: placed
    op: core.noop
  - name: dispatch_entry
    op: core.noop
    next: {{Result: [wait_agent]}}
  - name: wait_agent
    op: dial.wait
    params: {{dialTimeoutSeconds: {dial_timeout}}}
    next: {{Answered: [is_live], Timeout: [break_agent], Failed: [break_agent]}}
  - name: break_agent
    op: dial.break
    params: {{options: {{dialBreakReason: no_answer}}}}
  - name: is_live
    op: core.if
    params:
      conditions:
        - {{left: "{{{{ $('dispatch_entry').item.json.legId }}}}", operator: notEmpty, type: string}}
    next: {{"true": [bridge_agent], "false": [callback_agent]}}
  - name: bridge_agent
    op: call.bridge
    params:
      legAId: "{{{{ $('dispatch_entry').item.json.legId }}}}"
      legBId: "{{{{ $('wait_agent').item.json.legId }}}}"
    next: {{Success: [agent_hold]}}
  - name: agent_hold
    op: call.wait
    params:
      timeoutSeconds: 120
      legIds: ["{{{{ $('wait_agent').item.json.legId }}}}"]
      options: {{interruptReasons: [call_bridge_removed_peer_ended]}}
    next: {{Interrupted: [hangup_agent], Timeout: [hangup_agent]}}
  - name: hangup_agent
    op: call.hangup
    params: {{options: {{legId: "{{{{ $('wait_agent').item.json.legId }}}}"}}}}
  - name: callback_agent
    op: call.hangup
    params: {{options: {{legId: "{{{{ $('wait_agent').item.json.legId }}}}"}}}}
  - name: offline_is_live
    op: core.if
    params:
      conditions:
        - {{left: "{{{{ $json.legId }}}}", operator: notEmpty, type: string}}
    next: {{"true": [hangup_caller]}}
  - name: hangup_caller
    op: call.hangup
"""


def start(server_factory, tmp_path: Path, *, extensions: str = "1001", retries: int = 3, pause: float = 30,
          dial_timeout: float = 20):
    flow = tmp_path / "queue-flow.yaml"
    flow.write_text(FLOW.format(extensions=extensions, retries=retries, pause=pause, dial_timeout=dial_timeout))
    return server_factory(flows=[str(flow)], logging={"level": "debug", "pjsip_level": 1})


def test_a_free_agent_is_dispatched_without_placed_and_both_tones_cross(server_factory, tmp_path):
    server = start(server_factory, tmp_path)
    caller_pcap = pcap_of(tmp_path, "caller", 440, 8)
    with agent(server, tmp_path) as phone:
        caller = uac_call(f"127.0.0.1:{server.sip_port}", caller_pcap, caller="5551234", hold_ms=7000, timeout_s=30)
        with LoopbackCapture(f"udp and (dst port {caller.media_port} or dst port {phone.media_port})",
                             tmp_path / "rtp.pcap") as cap:
            with caller:
                caller_result = caller.wait(30)
            phone_result = phone.wait(15)  # the flow hangs the agent up when the caller has gone
    assert caller_result.ok, str(caller_result)
    assert phone_result.ok, str(phone_result) + server.text()[-6000:]
    events = queue_events(server)
    assert [b for b, _ in events] == ["Dispatch"]  # no Placed: an agent was free at once
    dispatch = events[0][1]
    assert dispatch["mode"] == "live" and dispatch["legId"].startswith("leg_") and dispatch["dialId"].startswith("dial_")
    assert (dispatch["callerNumber"], dispatch["trunkRef"]) == ("5551234", "trunk_main")
    streams = cap.streams()
    to_caller = np.concatenate([s.audio() for s in streams.values() if s.dst[1] == caller.media_port])
    to_agent = np.concatenate([s.audio() for s in streams.values() if s.dst[1] == phone.media_port])
    windows = lambda audio: [dominant_frequency(audio[i:i + 4000], 8000) for i in range(0, len(audio) - 4000, 2000)]
    assert any(abs(f - 1000) < 5 for f in windows(to_caller)), "the caller never heard the agent's 1 kHz"
    assert any(abs(f - 440) < 5 for f in windows(to_agent)), "the agent never heard the caller's 440 Hz"
    assert "queue queue_support entry" in server.text() and "taken by" in server.text()
    no_errors(server)


def test_with_the_agent_busy_the_caller_is_placed_then_dispatched_when_the_agent_frees_up(server_factory, tmp_path):
    server = start(server_factory, tmp_path)
    remote = f"127.0.0.1:{server.sip_port}"
    with agent(server, tmp_path, calls=2) as phone:
        first = uac_call(remote, pcap_of(tmp_path, "first", 440, 6), caller="5550001", hold_ms=5000, timeout_s=30)
        second = uac_call(remote, pcap_of(tmp_path, "second", 440, 12), caller="5550002", hold_ms=11000,
                          timeout_s=40)
        with first:
            wait_for(lambda: len(queue_events(server, "Dispatch")) == 1, 10, "the first caller's dispatch")
            wait_for(lambda: "node bridge_agent " in server.text(), 10, "the first caller's bridge")
            with second:
                wait_for(lambda: queue_events(server, "Placed"), 10, "the second caller to be placed")
                assert len(queue_events(server, "Dispatch")) == 1  # the agent is busy
                first_result = first.wait(30)
                # The first call ends, the flow hangs the agent up: the agent is free again.
                wait_for(lambda: len(queue_events(server, "Dispatch")) == 2, 15, "the second caller's dispatch")
                second_result = second.wait(40)
        phone_result = phone.wait(20)
    assert first_result.ok, str(first_result)
    assert second_result.ok, str(second_result)
    assert phone_result.ok and phone_result.successful == 2, str(phone_result)
    (placed,) = [p for _, p in queue_events(server, "Placed")]
    dispatches = [p for _, p in queue_events(server, "Dispatch")]
    assert placed["legId"] == dispatches[1]["legId"] != dispatches[0]["legId"]
    assert placed["callerNumber"] == "5550002"
    assert server.text().count("node bridge_agent ") == 2
    no_errors(server)


def test_no_agent_registered_sends_the_caller_offline(server_factory, tmp_path):
    server = start(server_factory, tmp_path)
    caller = uac_until_bye(f"127.0.0.1:{server.sip_port}", pcap_of(tmp_path, "caller", 440, 3), caller="5551234",
                           bye_timeout_ms=15000, timeout_s=25)
    with caller:
        result = caller.wait(25)
    assert result.ok, str(result)  # the flow hung up on Offline
    events = queue_events(server)
    assert [b for b, _ in events] == ["Offline"]
    offline = events[0][1]
    assert offline["mode"] == "live" and offline["legId"].startswith("leg_") and offline["callerNumber"] == "5551234"
    assert "node hangup_caller " in server.text()
    no_errors(server)


def test_an_agent_not_answering_is_retried_after_the_cooldown_then_offline(server_factory, tmp_path):
    server = start(server_factory, tmp_path, retries=1, pause=1, dial_timeout=2)
    with agent(server, tmp_path, answer=False, calls=2) as phone:
        caller = uac_until_bye(f"127.0.0.1:{server.sip_port}", pcap_of(tmp_path, "caller", 440, 10),
                               caller="5551234", bye_timeout_ms=30000, timeout_s=40)
        with caller:
            result = caller.wait(40)
        phone_result = phone.wait(15)
    assert result.ok, str(result)
    assert phone_result.ok and phone_result.successful == 2, str(phone_result)  # INVITE, CANCEL, twice
    assert [b for b, _ in queue_events(server)] == ["Dispatch", "Placed", "Dispatch", "Offline"]
    text = server.text()
    assert text.count("finalized failed (no_answer)") == 2
    assert "retry 1 of 1 in 1 s" in text and "offline (queue_retries_exhausted)" in text
    # The retry waited for the 1 s cooldown after the first dial was broken.
    broken = log_time(text, "finalized failed (no_answer)")
    redispatched = log_time(text, "queue queue_support: Dispatch", nth=1)
    assert redispatched - broken >= 0.9, (broken, redispatched)
    no_errors(server)


def test_callback_after_hang_up_is_dispatched_without_leg_when_an_agent_registers(server_factory, tmp_path):
    server = start(server_factory, tmp_path, extensions="1001,1002", pause=1)
    remote = f"127.0.0.1:{server.sip_port}"
    with agent(server, tmp_path, "1001") as busy_agent:
        first = uac_call(remote, pcap_of(tmp_path, "first", 440, 30), caller="5550001", hold_ms=25000, timeout_s=40)
        with first:
            wait_for(lambda: "node bridge_agent " in server.text(), 10, "the first caller to be with agent 1001")
            # The second caller waits, presses 9 (callback) and hangs up.
            second = uac_call(remote, pcap_of(tmp_path, "second", 440, 4, dtmf=[("9", 1.5, 200)]),
                              caller="5550002", hold_ms=3500, timeout_s=20)
            with second:
                second_result = second.wait(20)
            assert second_result.ok, str(second_result)
            wait_for(lambda: "waits for a callback" in server.text(), 5, "the entry to become a callback")
            assert "node callback_on " in server.text()
            assert len(queue_events(server, "Dispatch")) == 1
            with agent(server, tmp_path, "1002") as free_agent:
                wait_for(lambda: len(queue_events(server, "Dispatch")) == 2, 15, "the callback dispatch")
                free_result = free_agent.wait(15)  # answered, then hung up by the flow
            first.stop()
        busy_agent.stop()
    assert free_result.ok, str(free_result)
    placed = queue_events(server, "Placed")
    assert [p["callerNumber"] for _, p in placed] == ["5550002"]
    callback = queue_events(server, "Dispatch")[1][1]
    assert callback["mode"] == "callback" and "legId" not in callback
    assert (callback["callerNumber"], callback["trunkRef"]) == ("5550002", "trunk_main")
    assert "node callback_agent " in server.text()
    no_errors(server)


def test_a_waiting_callback_survives_a_restart_and_is_dispatched_after_it(server_factory, tmp_path):
    server = start(server_factory, tmp_path, dial_timeout=60)
    with agent(server, tmp_path, answer=False) as ringing:
        # The caller is dispatched to an agent who does not answer, asks for a callback (9) and
        # stays on the line: the server stops with the live entry flagged for callback.
        caller = uac_until_bye(f"127.0.0.1:{server.sip_port}", pcap_of(tmp_path, "caller", 440, 6,
                                                                         dtmf=[("9", 1.5, 200)]),
                               caller="5551234", bye_timeout_ms=30000, timeout_s=40)
        with caller:
            wait_for(lambda: "callback enabled for queue entry" in server.text(), 10, "the callback flag")
            assert server.stop() == 0
            caller_result = caller.wait(15)  # BYE from the stopping server
        ringing.wait(15)
    assert caller_result.ok, str(caller_result)
    first_run = server.text()
    assert [b for b, _ in queue_events(server)] == ["Dispatch"]

    restarted = start(server_factory, tmp_path, dial_timeout=60)
    assert restarted.wait_for_log("live entries turned into callbacks", 10), restarted.text()[-3000:]
    assert "1 live entries turned into callbacks" in restarted.text()
    time.sleep(0.5)
    assert queue_events(restarted) == []  # no agent has registered again yet: it waits
    with agent(restarted, tmp_path) as phone:
        wait_for(lambda: queue_events(restarted, "Dispatch"), 15, "the callback dispatch after the restart")
        phone_result = phone.wait(15)
    assert phone_result.ok, str(phone_result)
    (dispatch,) = [p for _, p in queue_events(restarted, "Dispatch")]
    assert dispatch["mode"] == "callback" and "legId" not in dispatch and dispatch["callerNumber"] == "5551234"
    assert "node callback_agent " in restarted.text()
    no_errors(restarted)
    assert "Traceback" not in first_run
