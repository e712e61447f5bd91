"""Conference-bridge wiring by slot id. Every audio source and sink softswitch uses (call legs,
players, recorders, frame ports) is a slot on the one pjsua bridge; joining legs, playing a
prompt or tapping audio is connecting slots.

Mirrors: a call recording must hear everything softswitch sends to a leg (prompts, tones, the
bridged peer). A mirror registered on a leg's slot receives every source connected into that
slot, because `connect`/`disconnect` repeat each change for the slot's mirrors. The table lives
in a `Bridge` owned by the UserAgent and carried by its thread (the only thread allowed to touch
the bridge), so every caller of the module's `connect`/`disconnect` (players, flow bridges,
tones, tests) gets mirroring without passing the UA around, and two UAs never share a table.
"""

from __future__ import annotations

import logging
import threading

import _softswitch_native as native

log = logging.getLogger("softswitch.media")

# Stale sources (ports removed by pjsua, which drops their connections without telling us) are
# pruned from a slot's source set when it grows past this.
_PRUNE_AT = 16


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

    @staticmethod
    def install_on_current_thread() -> "Bridge":
        """A fresh table bound to the calling (UA) thread; the module functions use it there."""
        bridge = Bridge()
        threading.current_thread().softswitch_bridge = bridge  # type: ignore[attr-defined]
        return bridge

    # ---- wiring -----------------------------------------------------------------------------
    def connect(self, src: int, dst: int, level: float = 1.0) -> None:
        native.conf_connect(src, dst, level)
        sources = self._sources.setdefault(dst, {})
        sources[src] = level
        if len(sources) > _PRUNE_AT:
            self._live_sources(dst)
        for mirror in self._mirrors.get(dst, ()):
            if mirror != src:
                _quiet_connect(src, mirror, level)

    def disconnect(self, src: int, dst: int) -> None:
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

    def sources_of(self, slot: int) -> frozenset[int]:
        """The slots connected into `slot` through this table that are still connected."""
        return frozenset(self._live_sources(slot))

    def _live_sources(self, dst: int) -> dict[int, float]:
        sources = self._sources.get(dst)
        if not sources:
            return {}
        for src in list(sources):
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


def _quiet_connect(src: int, dst: int, level: float = 1.0) -> None:
    try:
        native.conf_connect(src, dst, level)
    except RuntimeError as exc:  # a mirror must never break the connection it copies
        log.debug("mirror connect %d -> %d failed: %s", src, dst, exc)


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


def listeners(slot: int) -> list[int]:
    return native.conf_listeners(slot)


def capacity() -> int:
    return native.conf_max_ports()


def active_ports() -> int:
    return native.conf_active_ports()


def build_limits() -> dict:
    """The limits compiled into the pjproject build (calls, players, recorders, bridge ports)."""
    return native.limits()


def clear_end_of_file(player_slot: int) -> None:
    """Take a file player's end-of-file callback away, events already queued included. A looping
    player then rewinds without the empty frame pjmedia inserts at each wrap; a closing player
    is no longer called back from pjmedia's event thread."""
    native.player_seamless_loop(player_slot)
