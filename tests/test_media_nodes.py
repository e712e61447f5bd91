"""Pieces of the media nodes that need no call: the worker pool that keeps downloads and
encoding off the UA thread, and header lists as flows write them."""

from __future__ import annotations

import threading
import time

from softswitch.flow.media import MediaWorkers, _headers


def test_media_work_runs_on_a_bounded_set_of_worker_threads():
    workers = MediaWorkers(size=3)
    results: list[tuple[object, object]] = []
    names: set[str] = set()
    done = threading.Event()
    lock = threading.Lock()

    def job(n: int):
        names.add(threading.current_thread().name)
        time.sleep(0.01)
        if n == 7:
            raise ValueError("bad download")
        return n * n

    def finished(result, error):
        with lock:
            results.append((result, error))
            if len(results) == 20:
                done.set()

    for n in range(20):
        workers.submit(lambda n=n: job(n), finished)
    assert done.wait(10)
    assert len(names) <= 3 and all(name.startswith("media-io") for name in names)
    assert sorted(r for r, e in results if e is None) == sorted(n * n for n in range(20) if n != 7)
    errors = [e for r, e in results if e is not None]
    assert len(errors) == 1 and "bad download" in str(errors[0])


def test_http_headers_come_as_name_value_records_or_a_mapping():
    assert _headers([{"name": "Authorization", "value": "Bearer x"}, {"name": "X-Empty"}, {"value": "no name"}]) == (
        ("Authorization", "Bearer x"), ("X-Empty", ""))
    assert _headers({"Accept": "audio/wav"}) == (("Accept", "audio/wav"),)
    assert _headers(None) == ()
