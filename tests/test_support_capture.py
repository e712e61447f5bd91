"""Tests of tests/support/capture.py: loopback capture with tcpdump (needs root or CAP_NET_RAW)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support.capture import CaptureError, LoopbackCapture
from tests.support.ports import free_port


def _capture(tmp_path: Path, filter_: str) -> LoopbackCapture:
    cap = LoopbackCapture(filter_, tmp_path / "cap.pcap")
    try:
        cap.command()
    except CaptureError as exc:
        pytest.skip(str(exc))
    return cap


def test_every_datagram_sent_inside_the_block_is_captured(tmp_path: Path) -> None:
    port, other = free_port(), free_port()
    with _capture(tmp_path, f"udp and dst port {port}") as cap, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        # A burst right after start and right before stop: the edges are what can be lost.
        for i in range(3000):
            tx.sendto(b"pkt%d" % i, ("127.0.0.1", port))
        tx.sendto(b"not me", ("127.0.0.1", other))
    packets = cap.packets()
    assert [p.payload for p in packets] == [b"pkt%d" % i for i in range(3000)]
    assert all(p.dst == ("127.0.0.1", port) for p in packets)
    assert cap.streams() == {}  # not RTP
    assert "listening on" in cap.stderr


def test_bad_filter_is_a_clear_error(tmp_path: Path) -> None:
    cap = _capture(tmp_path, "udp and nonsense-term-xyz")
    with pytest.raises(CaptureError, match="tcpdump exited"):
        cap.start()
    cap.stop()  # harmless after a failed start


def test_missing_tcpdump_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("os.path.exists", lambda p: False)
    with pytest.raises(CaptureError, match="not installed"):
        LoopbackCapture("udp", tmp_path / "x.pcap").start()
