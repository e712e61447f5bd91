"""Issue 13, defect 2: `sip.session_timers` is real (RFC 4028).

With `off`, neither the 200 softswitch answers a timer-asking caller with nor the INVITE it sends
an agent carries a timer header (before, pjsua's default put Session-Expires 1800 and Min-SE 90
in every INVITE whatever the setting said). With `required`, a caller without timer support is
refused with 421 Extension Required, and a Session-Expires under Min-SE with 422. The long calls
(a refresh, an expiry) are in tests/test_interop_timers_sipp.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.actors import register_phone, uas_answer
from tests.support.callcentre import pcap_of
from tests.support.ports import free_port
from tests.support.sipp import Sipp
from tests.support.siptrace import first, trace

pytestmark = pytest.mark.sipp

BRIDGE_FLOW = """
name: timers
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
    params: {callMode: extension, extensionNumbers: "1001"}
    next: {Result: [wait], Unavailable: [bye]}
  - name: wait
    op: dial.wait
    params: {dialTimeoutSeconds: 10}
    next: {Answered: [bridge], Timeout: [bye], Failed: [bye]}
  - name: bridge
    op: call.bridge
    params: {legAId: "{{ $('answer').item.json.legId }}", legBId: "{{ $json.legId }}"}
    next: {Success: [hold]}
  - name: hold
    op: call.wait
    params: {timeoutSeconds: 10, legIds: ["{{ $('bridge').item.json.legIdB }}"]}
    next: {Ended: [bye], Timeout: [bye]}
  - name: bye
    op: call.hangup
"""

ASKS_TIMER = {"h1": "Supported: timer", "h2": "Session-Expires: 90;refresher=uac"}


def _timer_headers(message: str) -> list[str]:
    """The header lines of a SIP message that speak of session timers."""
    head = message.split("\n\n", 1)[0]
    return [line for line in head.splitlines()
            if re.match(r"(?i)(session-expires|x|min-se):", line)
            or (re.match(r"(?i)(supported|k|require):", line) and re.search(r"(?i)\btimer\b", line))]


def test_off_puts_no_timer_header_in_the_answer_nor_in_the_agents_invite(server_factory, tmp_path: Path):
    flow = tmp_path / "flow.yaml"
    flow.write_text(BRIDGE_FLOW)
    server = server_factory(sip={"session_timers": False}, flows=[str(flow)])
    port = free_port("both")
    assert register_phone(f"127.0.0.1:{server.sip_port}", "1001", port).ok
    tone = pcap_of(tmp_path, "tone", 1000, 3)
    agent = uas_answer(tone, local_port=port, hangup_after_ms=1500, timeout_s=20, trace_dir=tmp_path / "agent")
    caller = Sipp("uac_timer_call", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=20, service="2000",
                  variables={"caller": "5551234", "bye_timeout_ms": 15000, **ASKS_TIMER}, keys={"pcap": tone},
                  trace_dir=tmp_path / "caller")
    with agent, caller:
        caller_result, agent_result = caller.wait(25), agent.wait(25)
    assert caller_result.ok and agent_result.ok, f"{caller_result}\n{agent_result}"
    _, answer = first(trace(caller), "received", "SIP/2.0 200")
    _, invite = first(trace(agent), "received", "INVITE ")
    assert _timer_headers(answer) == [] and _timer_headers(invite) == [], (answer, invite)


def test_supported_answers_a_timer_request_and_offers_timers_to_the_agent(server_factory, tmp_path: Path):
    """The default: what pjsua always did (Session-Expires 1800, Min-SE 90), now by choice."""
    flow = tmp_path / "flow.yaml"
    flow.write_text(BRIDGE_FLOW)
    server = server_factory(flows=[str(flow)])
    port = free_port("both")
    assert register_phone(f"127.0.0.1:{server.sip_port}", "1001", port).ok
    tone = pcap_of(tmp_path, "tone", 1000, 3)
    agent = uas_answer(tone, local_port=port, hangup_after_ms=1500, timeout_s=20, trace_dir=tmp_path / "agent")
    caller = Sipp("uac_timer_call", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=20, service="2000",
                  variables={"caller": "5551234", "bye_timeout_ms": 15000, **ASKS_TIMER}, keys={"pcap": tone},
                  trace_dir=tmp_path / "caller")
    with agent, caller:
        caller_result, agent_result = caller.wait(25), agent.wait(25)
    assert caller_result.ok and agent_result.ok, f"{caller_result}\n{agent_result}"
    _, answer = first(trace(caller), "received", "SIP/2.0 200")
    _, invite = first(trace(agent), "received", "INVITE ")
    assert any(re.match(r"(?i)session-expires: 90;refresher=uac", h) for h in _timer_headers(answer)), answer
    assert any(re.match(r"(?i)session-expires: 1800", h) for h in _timer_headers(invite)), invite
    assert any(re.match(r"(?i)min-se: 90", h) for h in _timer_headers(invite)), invite


@pytest.mark.parametrize(("headers", "status", "told"), [
    ({"h1": "Supported: 100rel", "h2": "X-Timers: none"}, 421, r"(?im)^require:.*\btimer\b"),
    ({"h1": "Supported: timer", "h2": "Session-Expires: 60"}, 422, r"(?im)^min-se: 120\b"),
], ids=["no-timer-support-421", "too-small-422"])
def test_required_refuses_a_caller_without_usable_timers(server_factory, tmp_path: Path, headers, status, told):
    server = server_factory(sip={"session_timers": "required", "session_expires": 600, "min_se": 120})
    caller = Sipp("uac_timer_refused", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=15, service="2000",
                  variables={"caller": "5551234", "cancel_after_ms": 5000, **headers}, trace_dir=tmp_path / "caller")
    with caller:
        result = caller.wait(20)
    assert result.ok, str(result)
    assert result.log_values("final_status") == [str(status)], result.logs
    _, refusal = first(trace(caller), "received", f"SIP/2.0 {status}")
    assert re.search(told, refusal), refusal
