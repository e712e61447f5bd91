"""Dial nodes on real calls: a caller from SIPp runs a flow that dials out through a trunk to a
SIPp UAS (answers, never answers, rejects) or to an extension nobody registered."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from tests.support.actors import uas_answer, uas_no_answer, uas_reject
from tests.support.pcap import write_rtp_pcap
from tests.support.ports import free_port_block
from tests.support.sipp import Sipp

pytestmark = pytest.mark.sipp

HEAD = """
name: dialing
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [answer]}
nodes:
  - name: answer
    op: call.answer
    next: {Result: [dial]}
"""

BYE_CALLER = """
  - name: {name}
    op: call.hangup
    params: {{options: {{legId: "{{{{ $('answer').item.json.legId }}}}"}}}}
"""


def bye(*names: str) -> str:
    return "".join(BYE_CALLER.format(name=n) for n in names)


ANSWER_FLOW = HEAD + """
  - name: dial
    op: dial.make
    params: {callMode: trunk, ref: trunk_main, destination: "2000"}
    next: {Result: [wait]}
  - name: wait
    op: dial.wait
    params: {dialTimeoutSeconds: 5}
    next: {Answered: [bye_dialed], Timeout: [bye_timeout], Failed: [bye_failed]}
  - name: bye_dialed
    op: call.hangup
    next: {Result: [bye_caller]}
""" + bye("bye_caller", "bye_timeout", "bye_failed")

TIMEOUT_FLOW = HEAD + """
  - name: dial
    op: dial.make
    params: {callMode: trunk, ref: trunk_main, destination: "2000"}
    next: {Result: [wait]}
  - name: wait
    op: dial.wait
    params: {dialTimeoutSeconds: 2}
    next: {Answered: [bye_answered], Timeout: [break], Failed: [bye_failed]}
  - name: break
    op: dial.break
    next: {Result: [pause]}
  - name: pause
    op: call.wait
    params: {timeoutSeconds: 0.5, legIds: ["{{ $('answer').item.json.legId }}"]}
    next: {Timeout: [bye_caller]}
""" + bye("bye_caller", "bye_answered", "bye_failed")

REJECT_FLOW = HEAD + """
  - name: dial
    op: dial.make
    params: {callMode: trunk, ref: trunk_main, destination: "2000"}
    next: {Result: [wait]}
  - name: wait
    op: dial.wait
    params: {dialTimeoutSeconds: 5, waitEventOutputs: [rejected]}
    next: {Rejected: [wait_again], Answered: [bye_answered], Timeout: [bye_timeout], Failed: [bye_failed_first]}
  - name: wait_again
    op: dial.wait
    params: {dialTimeoutSeconds: 5}
    next: {Answered: [bye_answered], Timeout: [bye_timeout], Failed: [bye_failed]}
""" + bye("bye_failed", "bye_answered", "bye_timeout", "bye_failed_first")

EXTENSION_FLOW = HEAD + """
  - name: dial
    op: dial.make
    params: {callMode: extension, extensionNumbers: "1003"}
    next: {Result: [bye_result], Unavailable: [hold]}
  - name: hold
    op: call.wait
    params: {timeoutSeconds: 1.5, legIds: ["{{ $('answer').item.json.legId }}"]}
    next: {Timeout: [bye_unavailable]}
""" + bye("bye_result", "bye_unavailable")


# Each dial shows its own caller's leg id as the caller number, so every agent-side leg needs an
# account of its own (From comes from the account) for as long as it lasts.
CALLER_ID_FLOW = HEAD + """
  - name: dial
    op: dial.make
    params:
      callMode: trunk
      ref: trunk_main
      destination: "2000"
      options: {callerNumber: "{{ $('answer').item.json.legId }}"}
    next: {Result: [wait]}
  - name: wait
    op: dial.wait
    params: {dialTimeoutSeconds: 15}
    next: {Answered: [hold], Timeout: [bye_timeout], Failed: [bye_failed]}
  - name: hold
    op: call.wait
    params: {timeoutSeconds: 4.5, legIds: ["{{ $('answer').item.json.legId }}"]}
    next: {Timeout: [bye_dialed]}
  - name: bye_dialed
    op: call.hangup
    params: {options: {legId: "{{ $('wait').item.json.legId }}"}}
    next: {Result: [bye_caller]}
""" + bye("bye_caller", "bye_timeout", "bye_failed")


def start(server_factory, tmp_path: Path, text: str, uas: Sipp | None = None):
    flow = tmp_path / "flow.yaml"
    flow.write_text(text)
    sections: dict = {"flows": [str(flow)], "logging": {"level": "debug", "pjsip_level": 1}}
    if uas is not None:
        sections["connections"] = {"uas": {"sip_server": "127.0.0.1", "port": uas.local_port}}
        sections["trunks"] = {"trunk_main": {"address": "127.0.0.1", "port": 0, "connection": "uas"}}
    return server_factory(**sections)


def call(server, tmp_path: Path, timeout_s: float = 15):
    """The caller waits for our BYE in 1 s receive ticks; a BYE right on a tick is "unexpected"
    to SIPp, so the flows hang up half-way between whole seconds (1.5 s, 2.5 s)."""
    pcap = tmp_path / "caller.pcap"
    write_rtp_pcap(pcap, np.zeros(8000, dtype=np.int16))
    uac = Sipp("uac_call_until_bye", f"127.0.0.1:{server.sip_port}", calls=1,
               variables={"caller": "5551234", "bye_timeout_ms": int(timeout_s * 1000)}, keys={"pcap": pcap},
               timeout_s=timeout_s + 5)
    with uac:
        return uac.wait(timeout_s + 5)


def ran(server, *nodes: str) -> None:
    text = server.text()
    for node in nodes:
        assert f"node {node} " in text, (node, text[-3000:])


def did_not_run(server, *nodes: str) -> None:
    text = server.text()
    for node in nodes:
        assert f"node {node} " not in text, node
    assert " ERROR " not in text and "Traceback" not in text, text[-3000:]


def test_dial_answered_then_both_legs_hung_up(server_factory, tmp_path):
    pcap = tmp_path / "uas.pcap"
    write_rtp_pcap(pcap, np.zeros(8000, dtype=np.int16))
    with uas_answer(pcap, answer_delay_ms=1500, timeout_s=20, trace_dir=tmp_path / "uas") as uas:
        server = start(server_factory, tmp_path, ANSWER_FLOW, uas)
        result = call(server, tmp_path)
        uas_result = uas.wait(10)
    assert result.ok, str(result)
    assert uas_result.ok, str(uas_result)  # answered, then got our BYE
    assert server.wait_for_log("node bye_caller", 5)
    ran(server, "dial", "wait", "bye_dialed", "bye_caller")
    did_not_run(server, "bye_timeout", "bye_failed")
    assert "Traceback" not in server.text()


def test_dial_timeout_then_break_cancels_the_ringing_attempt(server_factory, tmp_path):
    with uas_no_answer(timeout_s=20, trace_dir=tmp_path / "uas") as uas:
        server = start(server_factory, tmp_path, TIMEOUT_FLOW, uas)
        result = call(server, tmp_path)
        uas_result = uas.wait(10)
    assert result.ok, str(result)
    assert uas_result.ok, str(uas_result)  # INVITE, then CANCEL
    assert server.wait_for_log("node bye_caller", 5)
    ran(server, "wait", "break", "bye_caller")
    did_not_run(server, "bye_answered", "bye_failed")
    assert "finalized failed (broken)" in server.text()


def test_dial_rejected_branch_then_failed_with_the_sip_reason(server_factory, tmp_path):
    with uas_reject(486, ring_ms=1500, timeout_s=20, trace_dir=tmp_path / "uas") as uas:
        server = start(server_factory, tmp_path, REJECT_FLOW, uas)
        result = call(server, tmp_path)
        uas_result = uas.wait(10)
    assert result.ok, str(result)
    assert uas_result.ok, str(uas_result)
    assert server.wait_for_log("node bye_failed", 5)
    ran(server, "wait", "wait_again", "bye_failed")
    did_not_run(server, "bye_answered", "bye_timeout", "bye_failed_first")
    text = server.text()
    assert "dial.wait wait: Rejected" in text and "dial.wait wait_again: Failed" in text
    assert "'reason': 'sip_486'" in text.split("dial.wait wait_again: Failed", 1)[1].split("\n", 1)[0]


def test_dial_to_an_unregistered_extension_is_unavailable(server_factory, tmp_path):
    server = start(server_factory, tmp_path, EXTENSION_FLOW)
    result = call(server, tmp_path)
    assert result.ok, str(result)
    assert server.wait_for_log("node bye_unavailable", 5)
    assert "(free_ttl)" not in server.text()  # the flow hung the caller up, not the free-TTL
    did_not_run(server, "bye_result")


MASTER_FLOW = HEAD + """
  - name: dial
    op: dial.make
    params: {callMode: trunk, ref: trunk_main, destination: "2000"}
    next: {Result: [wait]}
  - name: wait
    op: dial.wait
    params: {dialTimeoutSeconds: 10, legId: "{{ $('answer').item.json.legId }}"}
    next: {Answered: [bye_answered], Interrupted: [break], Timeout: [bye_timeout], Failed: [bye_failed]}
  - name: break
    op: dial.break
""" + bye("bye_answered", "bye_timeout", "bye_failed")


def test_caller_hanging_up_interrupts_the_wait_and_the_break_cancels_the_dial(server_factory, tmp_path):
    from tests.support.actors import uac_call
    pcap = tmp_path / "caller.pcap"
    write_rtp_pcap(pcap, np.zeros(8000, dtype=np.int16))
    with uas_no_answer(timeout_s=20, trace_dir=tmp_path / "uas") as uas:
        server = start(server_factory, tmp_path, MASTER_FLOW, uas)
        with uac_call(f"127.0.0.1:{server.sip_port}", pcap, caller="5551234", hold_ms=1500, timeout_s=15) as uac:
            result = uac.wait(15)
        uas_result = uas.wait(10)
    assert result.ok, str(result)
    assert uas_result.ok, str(uas_result)  # INVITE, then CANCEL from the break
    assert server.wait_for_log("finalized failed (broken)", 5)
    ran(server, "wait", "break")
    did_not_run(server, "bye_answered", "bye_timeout", "bye_failed")
    assert "dial.wait wait: Interrupted" in server.text()
    assert "'interruptReason': 'call_ended'" in server.text()


def test_a_dial_finds_rtp_ports_past_long_calls_at_the_bottom_of_the_range(server_factory, tmp_path):
    # pjsua looks for RTP ports from a cursor of the dialing account and gives up after 100 busy
    # pairs. Our accounts (one per connection and caller ID) share one cursor, so a first dial from
    # a fresh account starts where the last call's ports are, not at the range's busy bottom.
    rtp_start = free_port_block(400, "udp")
    held = []  # the bottom 105 pairs, busy as if long calls held them
    try:
        for port in range(rtp_start, rtp_start + 210):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", port))
            held.append(sock)
        pcap = tmp_path / "uas.pcap"
        write_rtp_pcap(pcap, np.zeros(8000, dtype=np.int16))
        with uas_answer(pcap, timeout_s=30, trace_dir=tmp_path / "uas") as uas:
            flow = tmp_path / "flow.yaml"
            flow.write_text(ANSWER_FLOW)
            server = server_factory(
                flows=[str(flow)], logging={"level": "debug", "pjsip_level": 1},
                sip={"rtp_port_start": rtp_start, "rtp_port_count": 400},
                connections={"uas": {"sip_server": "127.0.0.1", "port": uas.local_port}},
                trunks={"trunk_main": {"address": "127.0.0.1", "port": 0, "connection": "uas"}})
            # The first caller's ports are searched from the bottom: 100 busy pairs, refused.
            assert not call(server, tmp_path, timeout_s=5).ok
            # The second caller's search goes on from pair 100 and finds pair 105; the dial to the
            # UAS (a new account) continues from there instead of the bottom.
            second = call(server, tmp_path, timeout_s=15)
            uas_result = uas.wait(10)
    finally:
        for sock in held:
            sock.close()
    assert second.ok, str(second)
    assert uas_result.ok, str(uas_result)
    ran(server, "dial", "wait", "bye_dialed", "bye_caller")
    assert "bye_failed" not in server.text()


def test_dials_with_many_different_caller_ids_at_once_are_all_placed(server_factory, tmp_path):
    # 80 conversations at once, each showing a different caller number (a queue's agents seeing
    # their customers): each holds a pjsua account for its whole length. With pjsua's 64 account
    # slots only 32 could be up at once.
    n = 80
    pcap = tmp_path / "silence.pcap"
    write_rtp_pcap(pcap, np.zeros(8000, dtype=np.int16))
    with uas_answer(pcap, calls=n, timeout_s=60, trace_dir=tmp_path / "uas") as uas:
        server = start(server_factory, tmp_path, CALLER_ID_FLOW, uas)
        callers = Sipp("uac_call_until_bye", f"127.0.0.1:{server.sip_port}", calls=n, rate=40, limit=n,
                       variables={"caller": "5551234", "bye_timeout_ms": 20000}, keys={"pcap": pcap},
                       timeout_s=60)
        with callers:
            result = callers.wait(60)
        uas_result = uas.wait(20)
    assert result.ok and result.successful == n, str(result)
    assert uas_result.ok and uas_result.successful == n, str(uas_result)
    text = server.text()
    assert "caller IDs are all in live calls" not in text
    assert text.count("node bye_caller ") == n and "node bye_failed " not in text
    answered_at_once = max_overlap(text)
    assert answered_at_once > 64, answered_at_once


def max_overlap(log: str) -> int:
    """The most dialed legs up at once, from the server's 'calling' and hang-up lines."""
    live, most = 0, 0
    for line in log.splitlines():
        if " node hold " in line:
            live += 1
            most = max(most, live)
        elif " node bye_dialed " in line:
            live -= 1
    return most
