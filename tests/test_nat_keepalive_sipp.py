"""Keep-alives to registered phones behind NAT, end to end on real SIP (SIPp phones).

A phone whose Contact names another port than the one its REGISTER came from is behind NAT:
softswitch sends it OPTIONS keep-alives at `registrar.keepalive.interval_seconds` to where its
packets came from. A phone that stops answering them is unreachable after `max_failures` and
queues do not ring it (the caller hears the offline announcement) until it answers again.
"""

from __future__ import annotations


import pytest

from tests.support.callcentre import json_lines, pcap_of, queue_events
from tests.support.actors import uac_until_bye
from tests.support.capture import LoopbackCapture
from tests.support.keepalive import counters, first_arrivals
from tests.support.ports import free_port
from tests.support.server import REPO
from tests.support.sipp import Sipp
from tests.support.waiting import wait_for

pytestmark = pytest.mark.sipp

STEP_1 = REPO / "flows" / "part-1-step-1-trunk-to-queue-basic.yaml"  # 2: Sales, queue_sales rings 1003


def register_natted(server, user: str, source_port: int, contact_port: int) -> None:
    """REGISTER from `source_port` with Via and Contact naming `contact_port` (nobody listens there)
    and no rport: the answers reach the phone only at its source address."""
    sipp = Sipp("register_uac_nat", f"127.0.0.1:{server.sip_port}", local_port=source_port,
                auth=(user, f"pass{user}"), calls=1, timeout_s=10,
                variables={"user": user, "domain": "127.0.0.1", "expires": 3600, "contact_port": contact_port})
    with sipp:
        result = sipp.wait(15)
    assert result.ok, str(result)


def test_a_natted_phone_gets_options_keepalives_and_once_it_stops_answering_is_not_rung(server_factory, tmp_path):
    server = server_factory(flows=[str(STEP_1)], registrar={"keepalive": {"interval_seconds": 1, "max_failures": 2}},
                            records={"call_records": str(tmp_path / "calls.jsonl")},
                            metrics={"http_listen": f"127.0.0.1:{free_port('tcp')}"})
    source, contact = free_port("both"), free_port("both")
    with LoopbackCapture(f"udp and dst port {source}", tmp_path / "phone.pcap") as cap:
        register_natted(server, "1003", source, contact)
        # The phone answers three keep-alives on the port it registered from, then goes away.
        with Sipp("uas_answer_options", local_port=source, calls=3, timeout_s=15) as phone:
            answered = phone.wait(20)
        assert answered.ok, str(answered)
        wait_for(lambda: counters(server).get("became_unreachable", 0) >= 1, 10,
                 "the phone to be marked unreachable after two unanswered keep-alives")
        # A caller asks for Sales: the queue's only agent is unreachable, so it is offline.
        caller = uac_until_bye(f"127.0.0.1:{server.sip_port}", pcap_of(tmp_path, "caller", 440, 12, [("2", 1.0, 200)]),
                               caller="5551234", bye_timeout_ms=25000, timeout_s=35)
        with caller:
            called = caller.wait(35)
    assert called.ok, str(called)
    assert [b for b, _ in queue_events(server)] == ["Offline"]
    (record,) = json_lines(tmp_path / "calls.jsonl")
    assert record["queue"]["outcome"] == "offline" and [leg["role"] for leg in record["legs"]] == ["caller"]
    # What reached the phone's port: keep-alives about a second apart, never an INVITE.
    options = first_arrivals(cap, source, b"OPTIONS")
    gaps = [b - a for a, b in zip(options, options[1:])]
    assert len(options) >= 5 and all(0.75 <= g <= 2.0 for g in gaps), gaps
    assert not first_arrivals(cap, source, b"INVITE")
    seen = counters(server)
    assert seen["options_answered"] >= 3 and seen["options_failed"] >= 2, seen
    assert seen["became_unreachable"] == 1, seen
    # An OPTIONS to the unreachable phone is in flight now: the server still stops cleanly.
    assert server.stop() == 0, server.text()[-3000:]


def test_crlf_keepalives_reach_a_natted_phone_at_its_source_and_never_make_it_unreachable(server_factory, tmp_path):
    server = server_factory(registrar={"keepalive": {"method": "crlf", "interval_seconds": 1, "max_failures": 1}},
                            metrics={"http_listen": f"127.0.0.1:{free_port('tcp')}"})
    source, contact = free_port("both"), free_port("both")
    with LoopbackCapture(f"udp and dst port {source}", tmp_path / "phone.pcap") as cap:
        register_natted(server, "1001", source, contact)
        wait_for(lambda: counters(server).get("crlf_sent", 0) >= 3, 10, "three CRLF keep-alives")
    pings = [p.ts for p in cap.packets() if p.dst_port == source and p.payload == b"\r\n\r\n"]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert len(pings) >= 3 and all(0.75 <= g <= 2.0 for g in gaps), gaps
    seen = counters(server)
    # Nobody answers a CRLF, and nobody has to: the phone stays reachable, and no OPTIONS went out.
    assert seen["became_unreachable"] == 0 and seen["options_sent"] == 0, seen
    assert server.status()["registrations"]["extensions"] == ["1001"]


def test_an_unreachable_phone_is_offline_for_queues_and_back_online_when_it_answers_again(ua):
    """On the in-process UA: what the queues read (`Extensions`) follows reachability."""
    from softswitch.sip.extensions import AvailabilityChanged

    changes: list[AvailabilityChanged] = []

    def setup():
        ua.registrar._native.configure_keepalive(method="options", interval_seconds=1.0, nat_only=True,
                                                 max_failures=1, from_uri="sip:softswitch@127.0.0.1")
        return ua.extensions.subscribe(lambda c: changes.append(c) if c.extension == "1002" else None)

    unsubscribe = ua.run_sync(setup)
    source, contact = free_port("both"), free_port("both")
    server = type("S", (), {"sip_port": ua.config.sip.udp_port})
    try:
        register_natted(server, "1002", source, contact)
        assert ua.run_sync(lambda: ua.extensions.online("1002"))
        # Nobody answers on the source port: one unanswered keep-alive makes it unreachable.
        wait_for(lambda: any(c.reason == "unreachable" for c in changes), 10, "1002 to become unreachable")
        assert ua.run_sync(lambda: (ua.extensions.online("1002"), ua.extensions.free("1002"),
                                    ua.dialer.extension_endpoints(["1002"]))) == (False, False, [])
        # The phone is back and answers the next keep-alives: online and free again.
        with Sipp("uas_answer_options", local_port=source, calls=3, timeout_s=10) as phone:
            wait_for(lambda: any(c.reason == "reachable" for c in changes), 10, "1002 to be reachable again")
            assert ua.run_sync(lambda: (ua.extensions.online("1002"), ua.extensions.free("1002"))) == (True, True)
            assert phone.wait(15).ok
        seen = [(c.reason, c.online) for c in changes if c.reason != "registered"]
        assert seen[:2] == [("unreachable", False), ("reachable", True)], seen
    finally:
        ua.run_sync(unsubscribe)
        ua.run_sync(lambda: ua.registrar.apply_config(ua.config))
        sipp = Sipp("register_uac_nat", f"127.0.0.1:{ua.config.sip.udp_port}", local_port=source,
                    auth=("1002", "pass1002"), calls=1, timeout_s=10,
                    variables={"user": "1002", "domain": "127.0.0.1", "expires": 0, "contact_port": contact})
        with sipp:
            sipp.wait(15)
