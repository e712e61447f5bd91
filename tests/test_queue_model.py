"""Queue entries: the explicit state machine of §3.1 and the Queue trigger payloads of §2.4."""

from __future__ import annotations

import pytest

from softswitch.queue.model import (DialConfig, EntryMode, EntryState, InvalidTransition, QueueDispatch,
                                    QueueEntry, QueueOffline, QueuePlaced)


class Ticket:
    def __init__(self) -> None:
        self.released = 0

    def release(self) -> None:
        self.released += 1


def entry(**kw) -> QueueEntry:
    values = dict(id="queue_entry_1", scope="flow", ref="support", trunk_ref="trunk_main",
                  dial=DialConfig(caller_number="5551234", caller_name="Alice"), created_at=1000.0, position=1,
                  leg_id="leg_1")
    values.update(kw)
    return QueueEntry(**values)


def test_a_new_entry_is_live_idle_without_callback():
    e = entry()
    assert (e.mode, e.state, e.callback_enabled, e.retry_count, e.placed_published) == (
        EntryMode.LIVE, EntryState.IDLE, False, 0, False)


def test_dispatching_reserves_the_extensions_and_idle_frees_them():
    e = entry(retry_not_before=2000.0)
    e.to_dispatching("dial_1", ("1001", "1002"))
    assert e.dispatching and e.dispatched_dial_id == "dial_1" and e.reserved_extensions == ("1001", "1002")
    assert e.retry_not_before == 0.0
    with pytest.raises(InvalidTransition):
        e.to_dispatching("dial_2", ("1001",))  # one operator dial at a time
    e.to_idle()
    assert e.state is EntryState.IDLE and e.dispatched_dial_id is None and e.reserved_extensions == ()


def test_callback_keeps_the_position_and_lets_go_of_the_caller():
    ticket = Ticket()
    e = entry(retention=ticket, callback_enabled=True, position=7)
    e.to_dispatching("dial_1", ("1001",))
    e.to_callback()
    assert (e.mode, e.state, e.leg_id, e.position) == (EntryMode.CALLBACK, EntryState.IDLE, None, 7)
    assert ticket.released == 1 and e.retention is None
    with pytest.raises(InvalidTransition):
        e.to_callback()  # already a callback entry


def test_rejoin_resets_counters_but_keeps_callback_enabled():
    e = entry(callback_enabled=True, retry_count=2, placed_published=True, retry_not_before=5.0)
    with pytest.raises(InvalidTransition):
        e.to_rejoined("leg_2", Ticket())  # only a callback entry can be rejoined
    e.to_callback()
    new_ticket = Ticket()
    e.to_rejoined("leg_2", new_ticket)
    assert (e.mode, e.state, e.leg_id, e.retention) == (EntryMode.LIVE, EntryState.IDLE, "leg_2", new_ticket)
    assert (e.retry_count, e.placed_published, e.retry_not_before, e.callback_enabled) == (0, False, 0.0, True)


def test_ended_is_final_and_releases_once():
    ticket = Ticket()
    e = entry(retention=ticket)
    e.to_ended()
    e.to_ended()
    assert e.ended and ticket.released == 1
    for move in (lambda: e.to_dispatching("d", ()), e.to_idle, e.to_callback):
        with pytest.raises(InvalidTransition):
            move()


def test_dial_config_survives_json():
    config = DialConfig(call_strategy="sequential", caller_number="5551234", caller_name="Alice",
                        custom_headers=(("X-Queue", "support"),), sequential_attempt_timeout_s=12, sequential_gap_s=1)
    assert DialConfig.from_json(config.to_json()) == config


def test_trigger_payloads_follow_the_reference():
    caller = dict(scope="flow", ref="support", caller_number="5551234", caller_name="Alice", trunk_ref="trunk_main")
    placed = QueuePlaced(**caller, leg_id="leg_1")
    assert placed.branch == "Placed"
    assert placed.payload() == {"ref": "support", "legId": "leg_1", "callerNumber": "5551234",
                                "callerName": "Alice", "trunkRef": "trunk_main"}
    assert placed.sip_pbx() == {"ref": "support", "legId": "leg_1"}
    live = QueueDispatch(**caller, mode="live", dial_id="dial_1", leg_id="leg_1")
    assert live.payload() == {"ref": "support", "mode": "live", "dialId": "dial_1", "legId": "leg_1",
                              "callerNumber": "5551234", "callerName": "Alice", "trunkRef": "trunk_main"}
    assert live.sip_pbx() == {"ref": "support", "dialId": "dial_1", "legId": "leg_1"}
    callback = QueueDispatch(**caller, mode="callback", dial_id="dial_2")
    assert "legId" not in callback.payload() and callback.payload()["mode"] == "callback"
    offline = QueueOffline(**caller, mode="callback")
    assert offline.branch == "Offline" and "legId" not in offline.payload()
    assert offline.payload()["trunkRef"] == "trunk_main"
