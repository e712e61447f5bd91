"""Prompt players: a WAV file played into one or more bridge slots, with end-of-file delivered
to the UA thread. The end-of-file callback runs on the bridge's clock thread, so it only posts
a command; everything else happens on the UA loop. A looping player never ends by itself
(its end-of-file callback is cleared, so pjmedia rewinds without an empty frame)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pjsua2 as pj

from . import bridge

if TYPE_CHECKING:
    from ..sip.endpoint import UserAgent

log = logging.getLogger("softswitch.media")


# How long a closed player's pjsua2 object outlives its close. pjmedia delivers end-of-file on
# its event thread, after the clock thread posted it; a player destroyed while that callback
# runs is called back from freed memory (a soak crashed in the player's dealloc). Closing clears
# the callback first, so only one already running can still arrive.
PLAYER_RETIRE_S = 1.0


def _no_eof() -> None:
    pass


class _EofPlayer(pj.AudioMediaPlayer):
    def __init__(self, on_eof: Callable[[], None]) -> None:
        super().__init__()
        self._on_eof = on_eof

    def onEof2(self) -> None:  # pjmedia's event thread: hand over, nothing else
        try:
            self._on_eof()
        except Exception:
            pass


class PromptPlayer:
    """Plays a file once (or looped) into bridge slots; `on_done` runs on the UA thread."""

    def __init__(self, ua: "UserAgent", path: Path, *, loop: bool = False,
                 on_done: Callable[["PromptPlayer"], None] | None = None, unlink: bool = False) -> None:
        """`unlink=True` deletes the file once it is open (a temporary file: the player keeps
        reading it through its descriptor, and nothing is left behind even after a crash)."""
        self.ua = ua
        self.path = Path(path)
        self.loop = loop
        self._on_done = on_done
        self.finished = False
        self._targets: list[int] = []
        if not self.path.is_file():
            raise FileNotFoundError(f"prompt file not found: {self.path}")
        self._player = _EofPlayer(lambda: ua.call_soon(self._eof))
        try:
            self._player.createPlayer(str(self.path), 0 if loop else pj.PJMEDIA_FILE_NO_LOOP)
        except pj.Error as exc:
            raise ValueError(f"cannot play {self.path}: {exc.reason} (8/16 kHz mono 16-bit WAV expected)") from None
        finally:
            if unlink:
                self.path.unlink(missing_ok=True)
        self.slot: int = self._player.getPortId()
        if loop:
            bridge.clear_end_of_file(self.slot)
        ua.keep(self)

    def play_to(self, slot: int, level: float = 1.0) -> None:
        bridge.connect(self.slot, slot, level)
        self._targets.append(slot)

    def set_level(self, slot: int, level: float) -> None:
        """Rescale what this player sends to one target (ducking); the others are untouched."""
        if slot in self._targets and not self.finished:
            bridge.adjust_level(self.slot, slot, level)

    def stop(self) -> None:
        """Stop now (no `on_done`); resources are freed on the next loop turn."""
        if not self.finished:
            self.finished = True
            self.ua.release(self)

    def _eof(self) -> None:
        if self.finished or self.loop:
            return
        self.finished = True
        self.ua.release(self)
        if self._on_done is not None:
            self._on_done(self)

    def close(self) -> None:
        """Disconnect now (the bridge stops pulling frames, so no new end-of-file is posted);
        destroy the pjsua2 player a moment later, once a callback already posted has run."""
        self.finished = True
        player, self._player = self._player, None
        if player is None:
            return
        try:
            bridge.clear_end_of_file(self.slot)
        except (RuntimeError, ValueError) as exc:
            log.debug("player on slot %d: clearing end-of-file: %s", self.slot, exc)
        for slot in self._targets:
            try:
                bridge.disconnect(self.slot, slot)
            except RuntimeError:
                pass  # that slot's port is gone already (the leg ended)
        self._targets.clear()
        player._on_eof = _no_eof
        self.ua.retire_later(player, PLAYER_RETIRE_S)
