"""SIGHUP reloads the flow files of a running server without dropping live calls: a call in
progress finishes the path of the flow it started on, the next call takes the new flow, and a
flow file that does not load leaves the current flows in place with every error logged."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import numpy as np
import pytest

from tests.support.pcap import write_rtp_pcap
from tests.support.sipp import Sipp

pytestmark = pytest.mark.sipp

# Same flow name and trigger in both versions, as an edit in place would be; the nodes that
# hang up differ, so the log shows which version each call ran.
FLOW_V1 = """
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
      timeoutSeconds: 20
      rules: [{pattern: "1", label: Support}]
    next: {Support: [v1_bye], Timeout: [v1_bye]}
  - name: v1_bye
    op: call.hangup
"""

FLOW_V2 = FLOW_V1.replace("v1_bye", "v2_bye")

# v2 with a mistake on line 17 (the rule's branch leads nowhere).
FLOW_V2_BROKEN = FLOW_V1.replace("next: {Support: [v1_bye], Timeout: [v1_bye]}",
                                 "next: {Support: [v2_missing], Timeout: [v1_bye]}")


def start_server(server_factory, tmp_path: Path, text: str):
    flow = tmp_path / "flow.yaml"
    flow.write_text(text)
    server = server_factory(flows=[str(flow)], logging={"level": "debug", "pjsip_level": 1})
    return server, flow


def caller(server, tmp_path: Path, name: str, digit_at_s: float, seconds: float) -> Sipp:
    """A trunk caller that presses 1 at `digit_at_s` and waits for the server's BYE."""
    pcap = tmp_path / f"{name}.pcap"
    write_rtp_pcap(pcap, np.zeros(int(8000 * seconds), dtype=np.int16), dtmf=[("1", digit_at_s, 160)])
    return Sipp("uac_call_until_bye", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=40,
                variables={"caller": "5551234", "bye_timeout_ms": 30000}, keys={"pcap": pcap})


def reload(server, flow: Path, text: str) -> None:
    flow.write_text(text)
    server.proc.send_signal(signal.SIGHUP)


def test_a_live_call_finishes_on_the_old_flow_and_the_next_call_takes_the_new_one(server_factory, tmp_path):
    server, flow = start_server(server_factory, tmp_path, FLOW_V1)
    first = caller(server, tmp_path, "first", digit_at_s=6.0, seconds=8.0)
    with first:
        assert server.wait_for_log("node menu (call.wait)", 15), server.text()
        reload(server, flow, FLOW_V2)
        assert server.wait_for_log("flows reloaded: 1 flow (menu), 1 trigger (trunk trunk_main)", 10), server.text()
        result = first.wait(40)
    assert result.ok, str(result)
    text = server.text()
    # The digit arrived after the reload, and the call still took v1's branch.
    assert text.index("flows reloaded") < text.index("node v1_bye"), text
    assert "node v2_bye" not in text

    second = caller(server, tmp_path, "second", digit_at_s=1.0, seconds=3.0)
    with second:
        result = second.wait(40)
    assert result.ok, str(result)
    assert server.wait_for_log("node v2_bye", 5), server.text()
    assert server.text().count("node v1_bye") == 1


def test_a_broken_flow_file_keeps_the_old_flows_and_logs_each_error_with_file_and_line(server_factory, tmp_path):
    server, flow = start_server(server_factory, tmp_path, FLOW_V1)
    reload(server, flow, FLOW_V2_BROKEN)
    assert server.wait_for_log("keeping the current flows", 10), server.text()
    # FILE:LINE: node NAME: message, for the line where the dangling target is written.
    line = next(n for n, text in enumerate(FLOW_V2_BROKEN.splitlines(), 1) if "v2_missing" in text)
    assert re.search(rf"{re.escape(str(flow))}:{line}: node menu: .*v2_missing", server.text()), server.text()
    assert "flows reloaded" not in server.text()

    call = caller(server, tmp_path, "after", digit_at_s=1.0, seconds=3.0)
    with call:
        result = call.wait(40)
    assert result.ok, str(result)
    assert server.wait_for_log("node v1_bye", 5), server.text()
    assert server.proc.poll() is None


def test_a_call_on_a_trigger_that_the_reload_removes_still_finishes(server_factory, tmp_path):
    server, flow = start_server(server_factory, tmp_path, FLOW_V1)
    first = caller(server, tmp_path, "first", digit_at_s=5.0, seconds=7.0)
    with first:
        assert server.wait_for_log("node menu (call.wait)", 15), server.text()
        reload(server, flow, FLOW_V2.replace("ref: trunk_main", "ref: trunk_other"))
        assert server.wait_for_log("removed trunk trunk_main", 10), server.text()
        result = first.wait(40)
    assert result.ok, str(result)
    assert "node v1_bye" in server.text()

    # No trigger for trunk_main any more: the next call is refused, as with no flow at all.
    refused = Sipp("uac_expect_failure", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=20,
                   variables={"caller": "5551234", "cancel_after_ms": 5000})
    with refused:
        result = refused.wait(20)
    assert result.log_values("final_status") == ["480"], str(result)
