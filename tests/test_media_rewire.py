"""The bridge table re-makes a leg's connections when pjsua rebuilds its stream (real conference
bridge, in-process endpoint, no SIP): frame ports stand in for the leg, its bridged peer, a
prompt player and a recorder's outbound tap. Removing the "leg" port and adding another (pjsua's
media update) drops every connection on the bridge; `move`/`reapply`/`detach`+`attach` make them
again exactly as they were, held connections stay held, and `forget` leaves a new port that
reuses the number with nothing."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.native


def _scene(ua):
    from softswitch.media import bridge
    from softswitch.media.frameport import FramePort

    leg = FramePort(ua, "leg", capacity_frames=16)
    peer = FramePort(ua, "peer", capacity_frames=16)
    prompt = FramePort(ua, "prompt", capacity_frames=16)
    tap = FramePort(ua, "recorder-out", capacity_frames=16)
    bridge.connect(leg.slot, peer.slot)
    bridge.connect(peer.slot, leg.slot)
    ua.bridge.add_mirror(leg.slot, tap.slot)
    bridge.connect(prompt.slot, leg.slot, 0.5)
    return leg, peer, prompt, tap


def _listeners(slot):
    import _softswitch_native as native
    return set(native.conf_listeners(slot))


def test_a_rebuilt_leg_port_gets_every_connection_back_under_its_new_slot(ua):
    def run():
        leg, peer, prompt, tap = _scene(ua)
        old = leg.slot
        leg.close()  # the port leaves the bridge: its connections go with it
        from softswitch.media.frameport import FramePort
        new_leg = FramePort(ua, "leg-rebuilt", capacity_frames=16)
        gone = (new_leg.slot not in _listeners(peer.slot), peer.slot not in _listeners(new_leg.slot))
        made = ua.bridge.move(old, new_leg.slot)
        after = {
            "leg->peer": peer.slot in _listeners(new_leg.slot),
            "peer->leg": new_leg.slot in _listeners(peer.slot),
            "peer->recorder": tap.slot in _listeners(peer.slot),
            "prompt->leg": new_leg.slot in _listeners(prompt.slot),
            "prompt->recorder": tap.slot in _listeners(prompt.slot),
            "mirror": ua.bridge.mirrors_of(new_leg.slot) == {tap.slot},
        }
        for port in (new_leg, peer, prompt, tap):
            port.stop()
        return gone, made, after

    gone, made, after = ua.run_sync(run)
    assert gone == (True, True)
    assert made >= 3
    assert all(after.values()), after


def test_reapply_on_the_same_slot_and_held_connections_stay_held(ua):
    def run():
        from softswitch.media import bridge
        leg, peer, prompt, tap = _scene(ua)
        bridge.suspend(leg.slot, peer.slot)  # the leg's phone holds: its audio stops reaching the peer
        import _softswitch_native as native
        native.conf_disconnect(peer.slot, leg.slot)  # as if the port were rebuilt under the same number
        native.conf_disconnect(prompt.slot, leg.slot)
        ua.bridge.reapply(leg.slot)
        held = peer.slot not in _listeners(leg.slot)
        restored = leg.slot in _listeners(peer.slot) and leg.slot in _listeners(prompt.slot)
        bridge.resume(leg.slot, peer.slot)
        resumed = peer.slot in _listeners(leg.slot)
        for port in (leg, peer, prompt, tap):
            port.stop()
        return held, restored, resumed

    assert ua.run_sync(run) == (True, True, True)


def test_a_port_without_audio_keeps_its_wiring_until_one_is_back(ua):
    """A call on a=inactive hold has no stream: its wiring leaves the table (the number may go to
    another port meanwhile) and comes back for the port that replaces it."""
    def run():
        from softswitch.media import bridge
        from softswitch.media.frameport import FramePort
        leg, peer, prompt, tap = _scene(ua)
        old = leg.slot
        leg.close()
        wiring = ua.bridge.detach(old)
        squatter = FramePort(ua, "another-port", capacity_frames=16)  # may get the old number
        bridge.connect(squatter.slot, tap.slot)
        squatter_ok = peer.slot not in _listeners(squatter.slot) and ua.bridge.mirrors_of(squatter.slot) == frozenset()
        back = FramePort(ua, "leg-back", capacity_frames=16)
        ua.bridge.attach(wiring, back.slot)
        restored = peer.slot in _listeners(back.slot) and back.slot in _listeners(peer.slot)
        for port in (squatter, back, peer, prompt, tap):
            port.stop()
        return squatter_ok, restored

    assert ua.run_sync(run) == (True, True)


def test_forget_leaves_nothing_for_a_port_that_reuses_the_number(ua):
    def run():
        from softswitch.media.frameport import FramePort
        leg, peer, prompt, tap = _scene(ua)
        old = leg.slot
        leg.close()
        ua.bridge.forget(old)  # the call ended
        newcomer = FramePort(ua, "newcomer", capacity_frames=16)
        ua.bridge.reapply(newcomer.slot)
        inherited = peer.slot in _listeners(newcomer.slot) or newcomer.slot in _listeners(peer.slot)
        for port in (newcomer, peer, prompt, tap):
            port.stop()
        return inherited

    assert ua.run_sync(run) is False
