"""Conference-bridge wiring by slot id. Every audio source and sink softswitch uses (call legs,
players, recorders, frame ports) is a slot on the one pjsua bridge; joining legs, playing a
prompt or tapping audio is connecting slots.

Mirrors: a call recording must hear everything softswitch sends to a leg (prompts, tones, the
bridged peer). A mirror registered on a leg's slot receives every source connected into that
slot, because `connect`/`disconnect` repeat each change for the slot's mirrors. The table lives
in a `Bridge` owned by the UserAgent and carried by its thread (the only thread allowed to touch
the bridge), so every caller of the module's `connect`/`disconnect` (players, flow bridges,
tones, tests) gets mirroring without passing the UA around, and two UAs never share a table.

Media updates: pjsua rebuilds a call's stream on most re-INVITEs and UPDATEs (hold, resume, a
codec change, a new RTP address, the codec lock it sends itself after a multi-codec answer). The
rebuilt stream is a new bridge port, often with the same slot number, and the old port's
connections are gone. The table is also the record of what softswitch meant to connect, so a leg
hands it every media update (`reapply` for the same slot, `move` for a new one) and every
connection, mirror, player, tap and frame port of that leg is made again exactly as it was.
Connections can be `suspend`ed (a held leg's audio into its peer) without leaving the table.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import _softswitch_native as native

log = logging.getLogger("softswitch.media")

# Stale sources (ports removed by pjsua, which drops their connections without telling us) are
# pruned from a slot's source set when it grows past this.
_PRUNE_AT = 16


@dataclass
class Wiring:
    """What the table held for one port, kept while the port does not exist (a call on
    `a=inactive` hold has no stream) and put back under the slot of the port that replaces it."""

    sources: dict[int, float] = field(default_factory=dict)  # src -> level, into the port
    destinations: dict[int, float] = field(default_factory=dict)  # dst -> level, out of it
    mirrors: set[int] = field(default_factory=set)  # slots copying what is sent into the port
    mirror_of: set[int] = field(default_factory=set)  # slots whose input this port copies
    held_in: set[int] = field(default_factory=set)  # suspended sources into the port
    held_out: set[int] = field(default_factory=set)  # suspended destinations out of it


class Bridge:
    """The UA's connections into slots that matter to mirrors, and the mirrors themselves.

    `_sources[dst]` maps what `connect` sent into `dst` to its level (checked against the
    bridge's own listener lists before use: pjsua reuses slot ids, and removing a port drops its
    connections silently). `_mirrors[dst]` are the slots that copy everything sent into `dst`,
    at the same levels (a ducked prompt is ducked in the recording too).
    """

    def __init__(self) -> None:
        self._sources: dict[int, dict[int, float]] = {}
        self._mirrors: dict[int, set[int]] = {}
        # (src, dst) pairs kept in the table but not connected on the bridge (hold).
        self._suspended: set[tuple[int, int]] = set()

    @staticmethod
    def install_on_current_thread() -> "Bridge":
        """A fresh table bound to the calling (UA) thread; the module functions use it there."""
        bridge = Bridge()
        threading.current_thread().softswitch_bridge = bridge  # type: ignore[attr-defined]
        return bridge

    # ---- wiring -----------------------------------------------------------------------------
    def connect(self, src: int, dst: int, level: float = 1.0) -> None:
        if (src, dst) not in self._suspended:
            native.conf_connect(src, dst, level)
        sources = self._sources.setdefault(dst, {})
        sources[src] = level
        if len(sources) > _PRUNE_AT:
            self._live_sources(dst)
        for mirror in self._mirrors.get(dst, ()):
            if mirror != src:
                _quiet_connect(src, mirror, level)

    def disconnect(self, src: int, dst: int) -> None:
        if self._suspended and (src, dst) in self._suspended:
            self._suspended.discard((src, dst))
            _quiet_disconnect(src, dst)
        else:
            native.conf_disconnect(src, dst)
        sources = self._sources.get(dst)
        if sources is not None:
            sources.pop(src, None)
            if not sources:
                del self._sources[dst]
        for mirror in self._mirrors.get(dst, ()):
            _quiet_disconnect(src, mirror)

    def adjust_level(self, src: int, dst: int, level: float) -> None:
        """Rescale one existing connection (ducking), and its mirrored copies."""
        native.conf_adjust_conn_level(src, dst, level)
        sources = self._sources.get(dst)
        if sources is not None and src in sources:
            sources[src] = level
        for mirror in self._mirrors.get(dst, ()):
            try:
                native.conf_adjust_conn_level(src, mirror, level)
            except RuntimeError as exc:
                log.debug("mirror level %d -> %d failed: %s", src, mirror, exc)

    # ---- hold -------------------------------------------------------------------------------
    def suspend(self, src: int, dst: int) -> None:
        """Stop src -> dst on the bridge but keep it in the table, so `resume` (or a media
        update's `reapply`) knows what to restore. Mirrored copies stay: a recording of dst keeps
        what dst is sent, and while suspended that is not src."""
        if (src, dst) in self._suspended:
            return
        self._suspended.add((src, dst))
        _quiet_disconnect(src, dst)
        for mirror in self._mirrors.get(dst, ()):
            if mirror != src:
                _quiet_disconnect(src, mirror)

    def resume(self, src: int, dst: int) -> None:
        if (src, dst) not in self._suspended:
            return
        self._suspended.discard((src, dst))
        level = self._sources.get(dst, {}).get(src)
        if level is None:
            return  # disconnected meanwhile: nothing to restore
        _quiet_connect(src, dst, level)
        for mirror in self._mirrors.get(dst, ()):
            if mirror != src:
                _quiet_connect(src, mirror, level)

    # ---- media updates ----------------------------------------------------------------------
    def reapply(self, slot: int) -> int:
        """Make every connection into and out of `slot` again (and their mirrored copies), as
        the table has them: the port behind `slot` was rebuilt and lost them. Connecting what is
        still connected changes nothing. Returns how many connections were made."""
        made = 0
        for src, level in list(self._sources.get(slot, {}).items()):
            if (src, slot) not in self._suspended:
                made += _quiet_connect(src, slot, level)
                for mirror in self._mirrors.get(slot, ()):
                    if mirror != src:
                        _quiet_connect(src, mirror, level)
        for dst, sources in list(self._sources.items()):
            level = sources.get(slot)
            if level is None or dst == slot or (slot, dst) in self._suspended:
                continue
            made += _quiet_connect(slot, dst, level)
            for mirror in self._mirrors.get(dst, ()):
                if mirror != slot:
                    _quiet_connect(slot, mirror, level)
        return made

    def detach(self, slot: int) -> "Wiring":
        """Take everything the table holds for `slot` out of it (nothing is disconnected: the
        port is already gone, and its number may be another port's by now). `attach` puts it
        back under the slot of the port that replaces it."""
        wiring = Wiring(sources=self._sources.pop(slot, {}), mirrors=self._mirrors.pop(slot, set()))
        for dst in [d for d, srcs in self._sources.items() if slot in srcs]:
            wiring.destinations[dst] = self._sources[dst].pop(slot)
            if not self._sources[dst]:
                del self._sources[dst]
        for key in [k for k, mirrors in self._mirrors.items() if slot in mirrors]:
            wiring.mirror_of.add(key)
            self._mirrors[key].discard(slot)
            if not self._mirrors[key]:
                del self._mirrors[key]
        for pair in [p for p in self._suspended if slot in p]:
            self._suspended.discard(pair)
            (wiring.held_in if pair[1] == slot else wiring.held_out).add(pair[0] if pair[1] == slot else pair[1])
        return wiring

    def attach(self, wiring: "Wiring", slot: int) -> int:
        """The connections of a detached port, made again for the port now at `slot`."""
        self._sources.setdefault(slot, {}).update(wiring.sources)
        if not self._sources[slot]:
            del self._sources[slot]
        for dst, level in wiring.destinations.items():
            self._sources.setdefault(dst, {})[slot] = level
        if wiring.mirrors:
            self._mirrors.setdefault(slot, set()).update(wiring.mirrors)
        for key in wiring.mirror_of:
            self._mirrors.setdefault(key, set()).add(slot)
        self._suspended |= {(src, slot) for src in wiring.held_in} | {(slot, dst) for dst in wiring.held_out}
        return self.reapply(slot)

    def move(self, old: int, new: int) -> int:
        """A rebuilt port got a new slot number: what `old` had now belongs to `new`."""
        if old == new:
            return self.reapply(new)
        return self.attach(self.detach(old), new)

    def forget(self, slot: int) -> None:
        """The port behind `slot` is gone for good (its call ended, its player closed): drop it
        from the table, so a later port given the same number inherits none of it."""
        self.detach(slot)

    # ---- mirrors ----------------------------------------------------------------------------
    def add_mirror(self, slot: int, mirror: int) -> None:
        """From now on `mirror` receives whatever is connected into `slot`, already connected
        sources included."""
        self._mirrors.setdefault(slot, set()).add(mirror)
        for src, level in self._live_sources(slot).items():
            if src != mirror:
                _quiet_connect(src, mirror, level)

    def remove_mirror(self, slot: int, mirror: int) -> None:
        mirrors = self._mirrors.get(slot)
        if mirrors is None or mirror not in mirrors:
            return
        mirrors.discard(mirror)
        if not mirrors:
            del self._mirrors[slot]
        for src in self._sources.get(slot, {}):
            _quiet_disconnect(src, mirror)

    def mirrors_of(self, slot: int) -> frozenset[int]:
        return frozenset(self._mirrors.get(slot, ()))

    def _live_sources(self, dst: int) -> dict[int, float]:
        sources = self._sources.get(dst)
        if not sources:
            return {}
        for src in list(sources):
            if (src, dst) in self._suspended:
                continue  # held: not on the bridge, but still meant
            try:
                alive = dst in native.conf_listeners(src)
            except RuntimeError:  # the source port is gone
                alive = False
            if not alive:
                del sources[src]
        if not sources:
            del self._sources[dst]
            return {}
        return sources


def _quiet_connect(src: int, dst: int, level: float = 1.0) -> int:
    try:
        native.conf_connect(src, dst, level)
        return 1
    except RuntimeError as exc:  # a mirror must never break the connection it copies
        log.debug("mirror connect %d -> %d failed: %s", src, dst, exc)
        return 0


def _quiet_disconnect(src: int, dst: int) -> None:
    try:
        native.conf_disconnect(src, dst)
    except RuntimeError:
        pass


def current() -> Bridge | None:
    """The Bridge of the calling thread (the UA thread), if its UserAgent installed one."""
    return getattr(threading.current_thread(), "softswitch_bridge", None)


def connect(src: int, dst: int, level: float = 1.0) -> None:
    """Audio flows src -> dst (scaled by `level`), and into dst's mirrors."""
    bridge = current()
    if bridge is None:
        native.conf_connect(src, dst, level)
    else:
        bridge.connect(src, dst, level)


def disconnect(src: int, dst: int) -> None:
    bridge = current()
    if bridge is None:
        native.conf_disconnect(src, dst)
    else:
        bridge.disconnect(src, dst)


def adjust_level(src: int, dst: int, level: float) -> None:
    """Rescale the existing connection src -> dst (and its mirrored copies)."""
    bridge = current()
    if bridge is None:
        native.conf_adjust_conn_level(src, dst, level)
    else:
        bridge.adjust_level(src, dst, level)


def suspend(src: int, dst: int) -> None:
    """Hold src -> dst off the bridge, remembered for `resume` (see Bridge.suspend)."""
    bridge = current()
    if bridge is None:
        _quiet_disconnect(src, dst)
    else:
        bridge.suspend(src, dst)


def resume(src: int, dst: int, level: float = 1.0) -> None:
    bridge = current()
    if bridge is None:
        native.conf_connect(src, dst, level)
    else:
        bridge.resume(src, dst)


def listeners(slot: int) -> list[int]:
    return native.conf_listeners(slot)


def capacity() -> int:
    return native.conf_max_ports()


def active_ports() -> int:
    return native.conf_active_ports()


def clear_end_of_file(player_slot: int) -> None:
    """Take a file player's end-of-file callback away, events already queued included. A looping
    player then rewinds without the empty frame pjmedia inserts at each wrap; a closing player
    is no longer called back from pjmedia's event thread."""
    native.player_clear_eof(player_slot)
