"""The operator endpoint on real calls: SIPp callers held by a flow or queued behind a ringing agent,
an agent phone registered with digest; /metrics, /status and `softswitch status --json` report
what the test did, while the calls are up and after they have gone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.actors import uac_call
from tests.support.callcentre import agent, pcap_of
from tests.support.ports import free_port
from tests.support.server import sample_key
from tests.support.waiting import wait_for

pytestmark = pytest.mark.sipp

HELD, QUEUED = 3, 2  # callers to 2000 (answered and held) and to 3000 (answered and queued)
HOLD_MS = 20000

FLOW = """
name: metrics
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [answer]}
  - name: support
    trigger: queue
    params: {ref: queue_support, queueExtensions: "1001"}
    next: {Dispatch: [wait_agent]}
nodes:
  - name: answer
    op: call.answer
    next: {Result: [route]}
  - name: route
    op: core.if
    params:
      conditions:
        - {left: "{{ $('trunk_main').item.json.calledNumber }}", operator: equals, right: "3000", type: string}
    next: {"true": [put], "false": [hold]}
  - name: put
    op: queue.putLeg
    params: {ref: queue_support}
    next: {Result: [queued_hold]}
  - name: queued_hold
    op: call.wait
    params: {timeoutSeconds: 120}
  - name: hold
    op: call.wait
    params: {timeoutSeconds: 120}
  - name: wait_agent
    op: dial.wait
    params: {dialTimeoutSeconds: 120}
"""


def labelled(samples: dict[str, float], name: str, **labels: str) -> float:
    return samples.get(sample_key(name, labels), 0.0)


def family_total(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def test_metrics_and_status_report_live_calls_registrations_queue_and_sip_responses(server_factory, tmp_path: Path):
    http_port = free_port("tcp")
    flow = tmp_path / "metrics-flow.yaml"
    flow.write_text(FLOW)
    server = server_factory(flows=[str(flow)], metrics={"http_listen": f"127.0.0.1:{http_port}"})
    remote = f"127.0.0.1:{server.sip_port}"
    pcap = pcap_of(tmp_path, "caller", 440, 2)
    queue = {"flow": "metrics", "queue": "queue_support"}

    phone = agent(server, tmp_path, "1001", answer=False, calls=QUEUED, timeout_s=90)  # registers, then rings
    held = uac_call(remote, pcap, number="2000", caller="5550001", hold_ms=HOLD_MS, calls=HELD, timeout_s=90)
    queued = uac_call(remote, pcap, number="3000", caller="5550002", hold_ms=HOLD_MS, calls=QUEUED, timeout_s=90)
    with phone, held, queued:
        # Up: every caller answered, the queue has both callers (one rings the agent, one waits).
        def all_up() -> bool:
            got = server.metrics()
            return (got["softswitch_inbound_calls_active"] == HELD + QUEUED
                    and labelled(got, "softswitch_queue_size", **queue) == QUEUED
                    and labelled(got, "softswitch_legs_active", direction="outbound", transport="sip") == 1)

        wait_for(all_up, timeout=30, what="every call up, both queued callers in the queue, the agent ringing")
        up = server.metrics()
        assert up["softswitch_metrics_stale"] == 0
        assert labelled(up, "softswitch_legs_active", direction="inbound", transport="sip") == HELD + QUEUED
        assert up["softswitch_registrations"] == 1 and up["softswitch_registered_extensions"] == 1
        assert labelled(up, "softswitch_queue_waiting", **queue) == QUEUED
        assert labelled(up, "softswitch_queue_callbacks_pending", **queue) == 0
        assert labelled(up, "softswitch_queue_longest_wait_seconds", **queue) > 0
        assert labelled(up, "softswitch_legs_answered_total", direction="inbound", transport="sip") == HELD + QUEUED
        assert labelled(up, "softswitch_sip_responses_total", direction="sent", code="200") >= HELD + QUEUED + 1
        assert labelled(up, "softswitch_sip_responses_total", direction="sent", code="401") >= 1  # REGISTER challenge
        assert labelled(up, "softswitch_sip_responses_total", direction="received", code="180") >= 1  # the agent rings
        assert family_total(up, "softswitch_errors_total") == 0, server.text()[-4000:]
        assert up["softswitch_flow_executions_active"] >= HELD + QUEUED
        assert up['softswitch_loop_lag_seconds_bucket{le="+Inf"}'] == up["softswitch_loop_lag_seconds_count"] > 0

        status = server.status()
        assert status["stale"] is False and status["listen"]["sip"]["udp"] == server.sip_port
        assert status["counts"]["inboundCallsActive"] == HELD + QUEUED
        assert status["registrations"] == {"bindings": 1, "extensions": ["1001"]}
        (q,) = status["queues"]
        assert (q["ref"], q["waiting"], q["callbacksPending"], q["stats"]["size"]) == ("queue_support", QUEUED, 0, QUEUED)
        cli = subprocess.run([sys.executable, "-m", "softswitch", "status", "--json", "--url", server.http_url],
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        from_cli = json.loads(cli.stdout)
        assert from_cli["counts"]["inboundCallsActive"] == HELD + QUEUED
        assert from_cli["registrations"] == status["registrations"]
        assert [(x["ref"], x["waiting"]) for x in from_cli["queues"]] == [("queue_support", QUEUED)]
        queues_doc = json.loads(server.http_get("/queues")[1])
        assert [(x["ref"], x["stats"]["size"]) for x in queues_doc["queues"]] == [("queue_support", QUEUED)]
        assert server.http_get("/healthz") == (200, "ok\n")

        held_result, queued_result = held.wait(60), queued.wait(60)
        assert held_result.ok, str(held_result)
        assert queued_result.ok, str(queued_result)
        phone.stop()

    # Down: nothing live, every leg ended and counted once.
    wait_for(lambda: server.metrics()["softswitch_inbound_calls_active"] == 0
             and family_total(server.metrics(), "softswitch_legs_active") == 0, timeout=15, what="every leg gone")
    down = server.metrics()
    assert labelled(down, "softswitch_legs_ended_total", direction="inbound", transport="sip") == HELD + QUEUED
    assert family_total(down, "softswitch_legs_ended_total") == family_total(down, "softswitch_legs_created_total")
    assert labelled(down, "softswitch_leg_hangups_total", reason="remote_hangup") >= HELD + QUEUED
    assert labelled(down, "softswitch_queue_size", **queue) == 0
    assert family_total(down, "softswitch_errors_total") == 0, server.text()[-4000:]
