"""Cyclic garbage is collected on the UA thread only, whichever thread made it or allocates
(a cycle holding a bridge port, collected on the clock thread mid-tick, frees the port under
the bridge)."""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.native


class _Cycle:
    def __init__(self, seen: list[str]) -> None:
        self.me = self
        self.seen = seen

    def __del__(self) -> None:
        self.seen.append(threading.current_thread().name)


def test_cycles_made_and_dropped_on_another_thread_are_collected_on_the_ua_thread(ua):
    seen: list[str] = []
    # Allocations far past the collector's threshold, made on the other thread and kept until
    # the end: freed at once, they would take the count back under the threshold before the
    # UA loop looked.
    kept: list = []

    def churn() -> None:
        for _ in range(50):
            _Cycle(seen)  # garbage at once: only the cyclic collector can free it
        for i in range(5000):
            kept.append((i, str(i)))

    worker = threading.Thread(target=churn, name="not-ua")
    worker.start()
    worker.join(10)
    deadline = time.monotonic() + 5
    while len(seen) < 50 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(seen) == 50
    assert set(seen) == {"ua"}, set(seen)
