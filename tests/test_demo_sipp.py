"""The demo flows of flows/ end to end on real SIP (shared/spec/demos.md).

Every actor is a SIPp instance on 127.0.0.1 with its own tone: the caller on trunk_main sends
440 Hz, the agents (extensions 1001-1003, registered with digest) answer with 1 kHz, and the
customer called back on trunk_main answers with 660 Hz. The server runs the shipped flow files;
where a row would take minutes with the demo's timers (20 s dial waits, 30 s retry cooldown)
the test runs a copy of the flow with only those numbers shortened, and says so.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from tests.support.actors import uac_call, uac_until_bye, uas_answer, uas_no_answer, uas_reject
from tests.support import callcentre
from tests.support.callcentre import heard, log_time, no_errors, pcap_of, queue_events, ran, received
from tests.support.audio import dominant_frequency
from tests.support.capture import LoopbackCapture
from tests.support.ports import free_port, free_port_block
from tests.support.server import REPO, ServerProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.sipp

FLOWS = REPO / "flows"
STEP_1 = FLOWS / "part-1-step-1-trunk-to-queue-basic.yaml"
ASSEMBLED = FLOWS / "part-3-step-4-routing-queue-ai-recording-tools-callback.yaml"
CALLER, AGENT, CUSTOMER = 440, 1000, 660


# ---- actors and evidence ---------------------------------------------------------------------

def agent(*args, **kw):
    """An agent phone (tests/support/callcentre.py) that stays up long enough for these rows."""
    kw.setdefault("timeout_s", 90)
    return callcentre.agent(*args, **kw)


def press(digit: str, at: float) -> tuple[str, float, int]:
    return (digit, at, 200)


def shortened(tmp_path: Path, flow: Path, **changes: dict) -> Path:
    """A copy of a shipped flow with some node params changed (timers only)."""
    doc = yaml.safe_load(flow.read_text())
    for node in doc["nodes"]:
        for key, value in changes.get(node["name"], {}).items():
            if key == "options":
                node.setdefault("params", {}).setdefault("options", {}).update(value)
            else:
                node.setdefault("params", {})[key] = value
    path = tmp_path / flow.name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start(server_factory, flow: Path, customer_port: int | None = None):
    sections: dict = {"flows": [str(flow)], "logging": {"level": "debug", "pjsip_level": 1}}
    if customer_port is not None:
        # Callbacks leave through trunk_main towards the provider (a SIPp UAS here).
        sections["connections"] = {"provider": {"sip_server": "127.0.0.1", "port": customer_port, "register": False}}
        sections["trunks"] = {"trunk_main": {"address": "127.0.0.1", "port": 0, "connection": "provider"}}
    return server_factory(**sections)


def live_legs_at_end(server) -> int:
    """Legs still up when the server stopped (it logs how many calls it hung up)."""
    server.stop()
    found = re.findall(r"hanging up (\d+) live calls?", server.text())
    return int(found[-1]) if found else 0


# ---- part 1 step 1: trunk to queue, basic ------------------------------------------------------

def test_step1_free_agent_is_dispatched_without_placed_and_both_tones_cross(server_factory, tmp_path):
    server = start(server_factory, STEP_1)
    with agent(server, tmp_path) as phone:
        caller = uac_call(f"127.0.0.1:{server.sip_port}", pcap_of(tmp_path, "caller", CALLER, 10, [press("1", 1.0)]),
                          caller="5551234", hold_ms=9000, timeout_s=30)
        with LoopbackCapture(f"udp and (dst port {caller.media_port} or dst port {phone.media_port})",
                             tmp_path / "captured.pcap") as cap:
            with caller:
                caller_result = caller.wait(30)
            phone_result = phone.wait(20)  # the agent leg is hung up after the free-TTL
    assert caller_result.ok, str(caller_result)
    assert phone_result.ok, str(phone_result) + server.text()[-6000:]
    assert [b for b, _ in queue_events(server)] == ["Dispatch"]  # no Placed: the agent was free
    assert ran(server, "put_support") == 1 and ran(server, "bridge_agent") == 1
    assert heard(received(cap, caller.media_port), AGENT), "the caller never heard the agent"
    assert heard(received(cap, phone.media_port), CALLER), "the agent never heard the caller"
    no_errors(server)


def test_step1_all_agents_busy_caller_hears_music_and_position_every_30s_then_is_bridged(server_factory, tmp_path):
    server = start(server_factory, STEP_1)
    remote = f"127.0.0.1:{server.sip_port}"
    with agent(server, tmp_path, calls=2) as phone:
        first = uac_call(remote, pcap_of(tmp_path, "first", CALLER, 42, [press("1", 1.0)]), caller="5550001",
                         hold_ms=40000, timeout_s=70)
        second = uac_call(remote, pcap_of(tmp_path, "second", CALLER, 60, [press("1", 1.0)]), caller="5550002",
                          hold_ms=55000, timeout_s=80)
        with LoopbackCapture(f"udp and dst port {second.media_port}", tmp_path / "to-second.pcap") as cap:
            with first:
                wait_for(lambda: ran(server, "bridge_agent") == 1, 15, "the first caller to be bridged")
                with second:
                    wait_for(lambda: queue_events(server, "Placed"), 15, "the second caller to be placed")
                    # Position prompts at the start of the hold loop and again 30 s later.
                    wait_for(lambda: ran(server, "play_stat") >= 2, 45, "a second position prompt")
                    first_result = first.wait(40)
                    # The first caller hung up: the agent is hung up too, and the queue dispatches.
                    wait_for(lambda: ran(server, "bridge_agent") == 2, 30, "the second caller to be bridged")
                    second_result = second.wait(60)
        phone_result = phone.wait(30)
    assert first_result.ok and second_result.ok, f"{first_result}\n{second_result}"
    assert phone_result.ok and phone_result.successful == 2, str(phone_result)
    assert [b for b, _ in queue_events(server)] == ["Dispatch", "Placed", "Dispatch"]
    # The first caller heard one position prompt before its dispatch; the second heard two, a
    # 30 s wait (plus the prompts) apart.
    times = [log_time(server.text(), ": node play_stat (", nth=n) for n in range(ran(server, "play_stat"))]
    assert len(times) == 3 and 30 <= times[2] - times[1] <= 40, times
    audio = received(cap, second.media_port)
    music = tone_frames(audio, (261.63, 329.63, 392.0, 523.25))
    assert music > 20, "no hold music reached the waiting caller"
    assert heard(audio[-5 * 8000:], AGENT), "the second caller was not bridged to the agent"
    no_errors(server)


def tone_frames(audio: np.ndarray, freqs: tuple[float, ...], window: int = 1600) -> int:
    """How many 200 ms windows are dominated by one of `freqs` (the hold music's notes)."""
    return sum(1 for i in range(0, len(audio) - window, window)
               if np.abs(audio[i:i + window]).max() > 200
               and min(abs(dominant_frequency(audio[i:i + window], 8000) - f) for f in freqs) < 12)


def test_step1_no_agent_registered_plays_offline_after_stopping_music_then_hangs_up(server_factory, tmp_path):
    server = start(server_factory, STEP_1)
    caller = uac_until_bye(f"127.0.0.1:{server.sip_port}", pcap_of(tmp_path, "caller", CALLER, 12, [press("2", 1.0)]),
                           caller="5551234", bye_timeout_ms=25000, timeout_s=35)
    with LoopbackCapture(f"udp and dst port {caller.media_port}", tmp_path / "captured.pcap") as cap:
        with caller:
            result = caller.wait(35)
    assert result.ok, str(result)  # the flow hung up after the offline prompt
    events = queue_events(server)
    assert [b for b, _ in events] == ["Offline"] and events[0][1]["legId"].startswith("leg_")
    assert ran(server, "play_offline") == 1 and ran(server, "hangup") == 1
    offline = sf.read(REPO / "prompts" / "offline.wav", dtype="int16")[0]
    audio = received(cap, caller.media_port)
    # The whole offline prompt reached the caller (no music mixed over its end).
    assert len(audio) >= len(offline), (len(audio), len(offline))
    assert tone_frames(audio[-len(offline) // 2:], (261.63, 329.63, 392.0, 523.25)) <= 1


def test_step1_agent_not_answering_is_broken_retried_after_cooldown_then_offline(server_factory, tmp_path):
    # Shortened timers: dial wait 2 s (demo: 20 s), cooldown 1 s and 1 retry (demo: 30 s and 3).
    flow = shortened(tmp_path, STEP_1, wait_agent={"dialTimeoutSeconds": 2},
                     put_support={"options": {"retryPauseSeconds": 1, "retryAttempts": 1}})
    server = start(server_factory, flow)
    with agent(server, tmp_path, answer=False, calls=2) as phone:
        caller = uac_until_bye(f"127.0.0.1:{server.sip_port}",
                               pcap_of(tmp_path, "caller", CALLER, 20, [press("1", 1.0)]),
                               caller="5551234", bye_timeout_ms=40000, timeout_s=50)
        with caller:
            result = caller.wait(50)
        phone_result = phone.wait(20)
    assert result.ok, str(result)
    assert phone_result.ok and phone_result.successful == 2, str(phone_result)  # INVITE + CANCEL, twice
    assert [b for b, _ in queue_events(server)] == ["Dispatch", "Placed", "Dispatch", "Offline"]
    assert ran(server, "break_agent") == 2 and ran(server, "play_offline") == 1


def test_step1_runs_the_same_when_imported_from_its_n8n_twin(server_factory, tmp_path):
    imported = tmp_path / "imported.yaml"
    twin = REPO / "tests" / "fixtures" / "n8n" / "part-1-step-1-trunk-to-queue-basic.json"
    subprocess.run([sys.executable, "-m", "softswitch", "import-n8n", str(twin), "-o", str(imported)],
                   cwd=REPO, check=True, timeout=60)
    server = start(server_factory, imported)
    with agent(server, tmp_path) as phone:
        caller = uac_call(f"127.0.0.1:{server.sip_port}", pcap_of(tmp_path, "caller", CALLER, 8, [press("1", 1.0)]),
                          caller="5551234", hold_ms=7000, timeout_s=30)
        with caller:
            caller_result = caller.wait(30)
        phone_result = phone.wait(20)
    assert caller_result.ok and phone_result.ok, f"{caller_result}\n{phone_result}"
    assert [b for b, _ in queue_events(server)] == ["Dispatch"] and ran(server, "bridge_agent") == 1
    no_errors(server)


# ---- part 3 step 4: the assembled demo -----------------------------------------------------------

def recording_of(server, tmp_path: Path, leg_id: str) -> tuple[np.ndarray, int]:
    path = tmp_path / "recordings" / f"{leg_id}.wav"
    wait_for(lambda: path.is_file(), 10, f"the recording {path}")
    return sf.read(path, dtype="int16")


def caller_leg_ids(server) -> list[str]:
    return re.findall(r"(leg_\w+): flow part-3-step-4", server.text())


def test_assembled_live_dispatch_is_recorded_caller_on_channel_1_agent_on_channel_2(server_factory, tmp_path):
    server = start(server_factory, ASSEMBLED)
    with agent(server, tmp_path) as phone:
        caller = uac_call(f"127.0.0.1:{server.sip_port}", pcap_of(tmp_path, "caller", CALLER, 14, [press("1", 1.0)]),
                          caller="5551234", hold_ms=12000, timeout_s=40)
        with caller:
            caller_result = caller.wait(40)
        phone_result = phone.wait(20)
    assert caller_result.ok and phone_result.ok, f"{caller_result}\n{phone_result}"
    (dispatch,) = [p for _, p in queue_events(server, "Dispatch")]
    assert dispatch["mode"] == "live"
    server.stop()
    audio, rate = recording_of(server, tmp_path, dispatch["legId"])
    assert rate == 8000 and audio.ndim == 2 and audio.shape[1] == 2
    assert abs(len(audio) / rate - 12.0) < 1.0, len(audio) / rate  # the call lasted 12 s
    inbound, outbound = audio[:, 0], audio[:, 1]
    assert abs(dominant_frequency(inbound[2 * rate:], rate) - CALLER) < 5
    # While bridged (the last seconds), channel 2 is the agent's 1 kHz, channel 1 still the caller.
    assert abs(dominant_frequency(outbound[-4 * rate:-rate], rate) - AGENT) < 5
    assert abs(dominant_frequency(inbound[-4 * rate:-rate], rate) - CALLER) < 5
    assert ran(server, "bridge_agent") == 1 and ran(server, "dial_customer") == 0


def quick_callbacks(tmp_path: Path, **changes: dict) -> Path:
    """The assembled demo with a 2 s retry cooldown (demo: 30 s): a callback entry is dispatched
    once the cooldown after the caller's hang-up has passed."""
    return shortened(tmp_path, ASSEMBLED, put_support={"options": {"retryPauseSeconds": 2}}, **changes)


def _callback_run(server_factory, tmp_path: Path, customer_factory, *, flow: Path | None = None) -> dict:
    """Agent 1001 busy with a first caller; a second caller presses 1, then 9 (callback) and
    hangs up; then agent 1002 registers and the callback is dispatched to it."""
    customer_port = free_port("both")
    server = start(server_factory, flow or quick_callbacks(tmp_path), customer_port=customer_port)
    try:
        return _callback_steps(server, tmp_path, customer_factory, customer_port)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- server log (tail) ---\n{server.text()[-8000:]}") from None


def _callback_steps(server, tmp_path: Path, customer_factory, customer_port: int) -> dict:
    remote = f"127.0.0.1:{server.sip_port}"
    out: dict = {"server": server}
    with customer_factory(customer_port) as customer, agent(server, tmp_path, "1001") as busy:
        first = uac_call(remote, pcap_of(tmp_path, "first", CALLER, 60, [press("1", 1.0)]), caller="5550001",
                         hold_ms=58000, timeout_s=80)
        with first:
            wait_for(lambda: ran(server, "bridge_agent") == 1, 15, "the first caller with agent 1001")
            second = uac_call(remote, pcap_of(tmp_path, "second", CALLER, 12, [press("1", 1.0), press("9", 9.0)]),
                              caller="5550002", hold_ms=11500, timeout_s=30)
            with second:
                out["second"] = second.wait(30)
            wait_for(lambda: "waits for a callback" in server.text(), 10, "the callback entry")
            with agent(server, tmp_path, "1002") as free_agent:
                out["agent_port"] = free_agent.media_port
                with LoopbackCapture(f"udp and (dst port {free_agent.media_port} or dst port {customer.media_port})",
                                     tmp_path / "callback.pcap") as cap:
                    wait_for(lambda: len(queue_events(server, "Dispatch")) == 2, 20, "the callback dispatch")
                    out["agent"] = free_agent.wait(60)
                    out["customer"] = customer.wait(30)
                out["cap"] = cap
            first.stop()
        busy.stop()
    out["customer_media_port"] = customer.media_port
    return out


def test_assembled_callback_after_hang_up_calls_the_customer_back_and_bridges_the_agent(server_factory, tmp_path):
    customer_pcap = pcap_of(tmp_path, "customer", CUSTOMER, 20)
    run = _callback_run(server_factory, tmp_path,
                        lambda port: uas_answer(customer_pcap, local_port=port, hangup_after_ms=8000, timeout_s=90))
    server = run["server"]
    assert run["second"].ok, str(run["second"])
    assert run["agent"].ok, str(run["agent"])
    assert run["customer"].ok, str(run["customer"])
    callback = queue_events(server, "Dispatch")[1][1]
    assert callback["mode"] == "callback" and "legId" not in callback
    assert callback["callerNumber"] == "5550002" and callback["trunkRef"] == "trunk_main"
    assert ran(server, "dial_customer") == 1 and ran(server, "bridge_customer") == 1
    assert heard(received(run["cap"], run["agent_port"]), CUSTOMER), "the agent never heard the customer"
    assert heard(received(run["cap"], run["customer_media_port"]), AGENT), "the customer never heard the agent"
    no_errors(server)


@pytest.mark.parametrize("outcome", ["no_answer", "reject"])
def test_assembled_callback_customer_not_answering_plays_unavailable_prompt(server_factory, tmp_path, outcome):
    # Shortened: the customer dial waits 4 s (demo: 30 s).
    flow = quick_callbacks(tmp_path, wait_customer={"dialTimeoutSeconds": 4})
    factory = ((lambda port: uas_no_answer(local_port=port, timeout_s=90)) if outcome == "no_answer"
               else (lambda port: uas_reject(486, ring_ms=500, local_port=port, timeout_s=90)))
    run = _callback_run(server_factory, tmp_path, factory, flow=flow)
    server = run["server"]
    assert run["agent"].ok, str(run["agent"])  # answered, heard the prompt, then got a BYE
    assert run["customer"].ok, str(run["customer"])  # CANCEL (no answer) or its own 486
    assert ran(server, "break_customer") == 1 and ran(server, "play_cust_unv") == 1
    assert ran(server, "hangup_agent") == 1 and ran(server, "bridge_customer") == 0
    unavailable = sf.read(REPO / "prompts" / "customer_unavailable.wav", dtype="int16")[0]
    to_agent = received(run["cap"], run["agent_port"])
    assert np.abs(to_agent).max() > 1000 and len(to_agent) >= len(unavailable) * 0.8
    assert live_legs_at_end(server) == 0, "a leg was left open"


def test_assembled_callback_caller_calling_again_rejoins_at_the_old_position(server_factory, tmp_path):
    server = start(server_factory, ASSEMBLED)
    remote = f"127.0.0.1:{server.sip_port}"
    with agent(server, tmp_path, "1001") as busy:
        first = uac_call(remote, pcap_of(tmp_path, "first", CALLER, 45, [press("1", 1.0)]), caller="5550001",
                         hold_ms=40000, timeout_s=60)
        with first:
            wait_for(lambda: ran(server, "bridge_agent") == 1, 15, "agent 1001 to be busy")
            # B queues (position 1), asks for a callback and hangs up.
            b = uac_call(remote, pcap_of(tmp_path, "b", CALLER, 12, [press("1", 1.0), press("9", 9.0)]),
                         caller="5550002", hold_ms=11500, timeout_s=30)
            with b:
                b.wait(30)
            wait_for(lambda: "waits for a callback" in server.text(), 10, "B's callback entry")
            # C queues behind B's callback entry.
            c = uac_call(remote, pcap_of(tmp_path, "c", CALLER, 14, [press("1", 1.0)]), caller="5550003",
                         hold_ms=12000, timeout_s=30)
            with c:
                wait_for(lambda: len(queue_events(server, "Placed")) == 2, 15, "C to be placed")
                # B calls again: the new call takes over the callback entry, ahead of C.
                b2 = uac_call(remote, pcap_of(tmp_path, "b2", CALLER, 10, [press("1", 1.0)]), caller="5550002",
                              hold_ms=8000, timeout_s=30)
                with b2:
                    wait_for(lambda: len(placements(server)) == 4, 15, "B's second call to be queued")
                    b2.wait(30)
                c.wait(30)
            first.stop()
        busy.stop()
    numbers = dict(re.findall(r"(leg_\w+): INVITE from <sip:(\d+)@", server.text()))
    got = [(numbers[leg], what, entry, position) for leg, what, entry, position in placements(server)]
    (b_first,) = [g for g in got if g[0] == "5550002" and g[1] == "queued"]
    (b_again,) = [g for g in got if g[0] == "5550002" and g[1] != "queued"]
    (c_entry,) = [g for g in got if g[0] == "5550003"]
    assert b_again[2] == b_first[2], "B's new call did not take over the callback entry"
    assert (b_first[3], c_entry[3], b_again[3]) == (1, 2, 1), got
    assert "rejoin" in b_again[1], got


def placements(server) -> list[tuple[str, str, str, int]]:
    """(legId, how, entryId, position) of every queue placement the server logged."""
    return [(leg, how, entry, int(pos)) for leg, how, entry, pos in
            re.findall(r"(leg_\w+): (\w+) in queue queue_support \(flow [^)]*\) as (queue_entry_\w+), position (\d+)",
                       server.text())]


def test_assembled_restart_keeps_a_waiting_callback_and_dispatches_it(server_factory, tmp_path):
    customer_port = free_port("both")
    flow = quick_callbacks(tmp_path)
    server = start(server_factory, flow, customer_port=customer_port)
    caller = uac_call(f"127.0.0.1:{server.sip_port}",
                      pcap_of(tmp_path, "caller", CALLER, 12, [press("1", 1.0), press("9", 9.0)]),
                      caller="5551234", hold_ms=11500, timeout_s=30)
    with agent(server, tmp_path, "1001", answer=False) as ringing:
        with caller:
            assert caller.wait(30).ok
        wait_for(lambda: "waits for a callback" in server.text() or "callback enabled" in server.text(), 10,
                 "the callback entry")
        assert server.stop() == 0
        ringing.stop()
    customer_pcap = pcap_of(tmp_path, "customer", CUSTOMER, 20)
    restarted = start(server_factory, flow, customer_port=customer_port)
    assert restarted.wait_for_log("queue", 10)
    with uas_answer(customer_pcap, local_port=customer_port, hangup_after_ms=4000, timeout_s=60) as customer:
        with agent(restarted, tmp_path, "1002") as phone:
            wait_for(lambda: queue_events(restarted, "Dispatch"), 20, "the callback dispatch after the restart")
            customer_result = customer.wait(40)
            phone.wait(20)
    (dispatch,) = [p for _, p in queue_events(restarted, "Dispatch")]
    assert dispatch["mode"] == "callback" and dispatch["callerNumber"] == "5551234"
    assert customer_result.ok, str(customer_result)
    assert ran(restarted, "bridge_customer") == 1


def test_assembled_every_call_leaves_a_stereo_wav_as_long_as_the_call(server_factory, tmp_path):
    server = start(server_factory, ASSEMBLED)
    remote = f"127.0.0.1:{server.sip_port}"
    holds = {"5550001": 4000, "5550002": 7000, "5550003": 10000}
    callers = [uac_call(remote, pcap_of(tmp_path, n, CALLER, h / 1000 + 1), caller=n, hold_ms=h, timeout_s=30)
               for n, h in holds.items()]
    for c in callers:
        c.start()
    results = [c.wait(30) for c in callers]
    assert all(r.ok for r in results), "\n".join(map(str, results))
    server.stop()
    legs = dict(re.findall(r"(leg_\w+): INVITE from \S*?(555000\d)", server.text()))
    assert len(legs) == 3, legs
    for leg_id, number in legs.items():
        audio, rate = recording_of(server, tmp_path, leg_id)
        assert audio.ndim == 2 and audio.shape[1] == 2
        assert abs(len(audio) / rate - holds[number] / 1000) < 1.0, (number, len(audio) / rate)


def test_builtin_default_config_runs_the_assembled_demo(tmp_path):
    """`softswitch run` with no config: demo agents and flows work at once (ports moved off 5060)."""
    port, rtp = free_port("both"), free_port_block(400, "udp")
    overrides = {"sip.udp_port": port, "sip.tcp_port": port, "sip.rtp_port_start": rtp, "sip.rtp_port_count": 400,
                 "directories.recordings": tmp_path / "recordings", "directories.state": tmp_path / "state",
                 "records.call_records": tmp_path / "calls.jsonl", "records.queue_events": tmp_path / "queue.jsonl",
                 "logging.level": "debug"}
    args = [a for key, value in overrides.items() for a in ("--set", f"{key}={value}")]
    server = ServerProcess(None, args, port=port).start()
    try:
        with agent(server, tmp_path, "1001") as phone:
            caller = uac_call(f"127.0.0.1:{port}", pcap_of(tmp_path, "caller", CALLER, 8, [press("1", 1.0)]),
                              caller="5551234", hold_ms=7000, timeout_s=30)
            with caller:
                caller_result = caller.wait(30)
            phone_result = phone.wait(20)
    finally:
        server.stop()
    assert caller_result.ok and phone_result.ok, f"{caller_result}\n{phone_result}\n{server.text()[-4000:]}"
    assert "flow part-3-step-4-routing-queue-ai-recording-tools-callback" in server.text()
    assert ran(server, "bridge_agent") == 1
    (recording,) = (tmp_path / "recordings").glob("leg_*.wav")  # the trunk call (agents' set records nothing)
    audio, rate = sf.read(recording, dtype="int16")
    assert audio.shape[1] == 2 and abs(len(audio) / rate - 7.0) < 1.0
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    trunk_calls = [c for c in calls if c["from"] == "5551234"]
    assert len(trunk_calls) == 1 and trunk_calls[0]["queue"]["outcome"] == "taken", calls
