"""Opaque ids in the reference's shape, `<prefix>_<base36 time>_<base36 counter>` (§1.4):
`leg_…`, `dial_…`, `media_…`. One factory per UserAgent, so counters are not global state."""

from __future__ import annotations

import itertools
import time

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _DIGITS[r] + out
        if n == 0:
            return out


class IdFactory:
    def __init__(self) -> None:
        self._seq = itertools.count(1)

    def new(self, prefix: str) -> str:
        return f"{prefix}_{base36(int(time.time() * 1000))}_{base36(next(self._seq))}"
