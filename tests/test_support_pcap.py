"""Tests of tests/support/pcap.py: RTP pcap writing, pcap reading, RTP stream analysis."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.support.audio import alaw_decode, alaw_encode, dominant_frequency, tone, ulaw_decode, ulaw_encode
from tests.support.pcap import (
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    Packet,
    parse_rtp,
    read_pcap,
    rtp_header,
    rtp_streams,
    write_rtp_pcap,
    write_udp_pcap,
)


def _records(path: Path) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(global header, [(record header, frame)]) of a little-endian pcap."""
    data = path.read_bytes()
    records, offset = [], 24
    while offset < len(data):
        incl = struct.unpack_from("<I", data, offset + 8)[0]
        records.append((data[offset : offset + 16], data[offset + 16 : offset + 16 + incl]))
        offset += 16 + incl
    return data[:24], records


def _relink(src: Path, dst: Path, linktype: int, header_for: "callable[[bytes], bytes]") -> None:
    """Rewrite an Ethernet pcap with another link-layer header in front of each IP packet."""
    ghdr, records = _records(src)
    out = bytearray(ghdr[:20] + struct.pack("<I", linktype))
    for rec, frame in records:
        ip = frame[14:]
        new = header_for(ip) + ip
        out += rec[:8] + struct.pack("<II", len(new), len(new)) + new
    dst.write_bytes(bytes(out))


def test_written_pcap_reads_back_with_20ms_timing(tmp_path: Path) -> None:
    x = tone(440, 1.0)
    path = tmp_path / "a.pcap"
    n = write_rtp_pcap(path, x, codec="PCMU", ssrc=0x1234, src=("127.0.0.1", 6000), dst=("127.0.0.1", 7002))
    packets = read_pcap(path)
    assert n == len(packets) == 50
    assert all(p.src == ("127.0.0.1", 6000) and p.dst == ("127.0.0.1", 7002) for p in packets)
    assert np.allclose(np.diff([p.ts for p in packets]), 0.020, atol=1e-6)
    rtp = [parse_rtp(p.payload) for p in packets]
    assert all(r is not None for r in rtp)
    assert [r.marker for r in rtp] == [True] + [False] * 49
    assert {r.pt for r in rtp} == {0} and {r.ssrc for r in rtp} == {0x1234}
    assert np.all(np.diff([r.seq for r in rtp]) == 1)
    assert np.all(np.diff([r.timestamp for r in rtp]) == 160)
    assert all(len(r.payload) == 160 for r in rtp)


@pytest.mark.parametrize("codec,encode,decode", [("PCMU", ulaw_encode, ulaw_decode), ("PCMA", alaw_encode, alaw_decode)])
def test_decoded_stream_is_the_coded_tone(tmp_path: Path, codec: str, encode, decode) -> None:
    x = tone(1000, 0.99)  # not a whole number of packets: the last one is padded
    path = tmp_path / "b.pcap"
    write_rtp_pcap(path, x, codec=codec)
    (stream,) = rtp_streams(read_pcap(path)).values()
    assert stream.payload_types() == {0 if codec == "PCMU" else 8}
    audio = stream.audio()
    assert audio.size == 8000
    assert np.array_equal(audio[: x.size], decode(encode(x)))
    assert not audio[x.size :].any() if codec == "PCMU" else np.abs(audio[x.size :]).max() <= 8
    assert dominant_frequency(audio, 8000) == pytest.approx(1000, abs=2)
    assert stream.duration_seconds() == pytest.approx(1.0, abs=0.001)
    assert np.allclose(stream.arrival_gaps_ms(), 20.0, atol=0.01)


def test_dtmf_events(tmp_path: Path) -> None:
    path = tmp_path / "dtmf.pcap"
    write_rtp_pcap(path, tone(440, 2.0), dtmf=[("1", 0.5, 100), ("#", 1.0, 200), ("9", 1.5, 60)])
    (stream,) = rtp_streams(read_pcap(path)).values()
    assert stream.dtmf_digits() == "1#9"
    events = stream.dtmf_events()
    assert [(d, dur) for d, _ts, dur in events] == [("1", 800), ("#", 1600), ("9", 480)]
    assert [ts - events[0][1] for _d, ts, _dur in events] == [0, 4000, 8000]
    te = [p for p in stream.packets if p.pt == 101]
    assert len(te) == (5 + 2) + (10 + 2) + (3 + 2)  # one per 20 ms plus two extra end packets
    first = [p for p in te if p.payload[0] == 1]
    assert first[0].marker and not any(p.marker for p in first[1:])
    ends = [p for p in first if p.payload[1] & 0x80]
    assert len(ends) == 3 and len({p.payload for p in ends}) == 1
    # Audio packets of those slots are replaced, so the total stays one packet per 20 ms.
    assert len(stream.packets) == 100
    assert len(stream.audio_packets()) == 100 - len(te)
    assert np.all(np.diff([p.seq for p in stream.packets]) == 1)


def test_dtmf_must_fit(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_rtp_pcap(tmp_path / "x.pcap", tone(440, 0.5), dtmf=[("5", 0.45, 100)])


def test_parse_rtp_header_variants() -> None:
    base = rtp_header(8, 7, 1000, 0xABCDEF01, marker=True)
    r = parse_rtp(base + b"\x01\x02")
    assert r is not None and (r.pt, r.marker, r.seq, r.timestamp, r.ssrc, r.payload) == (8, True, 7, 1000, 0xABCDEF01, b"\x01\x02")
    # Two CSRCs, a one-word header extension and 3 bytes of padding.
    b0 = 0x80 | 0x20 | 0x10 | 2
    pkt = bytes([b0]) + base[1:] + struct.pack("!II", 11, 22) + struct.pack("!HH", 0xBEDE, 1) + b"\0" * 4 + b"AB" + b"\0\0\x03"
    r = parse_rtp(pkt)
    assert r is not None and r.csrcs == (11, 22) and r.payload == b"AB"
    assert parse_rtp(b"INVITE sip:1000@127.0.0.1 SIP/2.0\r\n") is None  # SIP is version 1 by its first bits
    assert parse_rtp(bytes([0x80, 200]) + b"\0" * 10) is None  # RTCP sender report
    assert parse_rtp(base[:8]) is None
    assert parse_rtp(bytes([0x8F]) + base[1:]) is None  # 15 CSRCs announced, none present


def test_streams_are_split_by_source_and_ssrc_and_filtered(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    write_rtp_pcap(a, tone(440, 0.2), ssrc=1, src=("127.0.0.1", 4000), dst=("127.0.0.1", 5000))
    write_rtp_pcap(b, tone(660, 0.2), ssrc=2, src=("127.0.0.1", 4002), dst=("127.0.0.1", 5002))
    sip = Packet(0.0, ("127.0.0.1", 5060), ("127.0.0.1", 5000), b"SIP/2.0 200 OK\r\n\r\n")
    packets = read_pcap(a) + read_pcap(b) + [sip]
    streams = rtp_streams(packets)
    assert set(streams) == {("127.0.0.1", 4000, 1), ("127.0.0.1", 4002, 2)}
    only = rtp_streams(packets, dst_port=5002)
    assert list(only) == [("127.0.0.1", 4002, 2)]
    assert only[("127.0.0.1", 4002, 2)].dst == ("127.0.0.1", 5002)


def test_audio_orders_by_sequence_and_fills_gaps(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    x = tone(440, 1.0)
    write_rtp_pcap(path, x, seq0=65530, ts0=2**32 - 800)  # both wrap inside the stream
    packets = read_pcap(path)
    lost = {10, 11, 30}
    kept = [p for i, p in enumerate(packets) if i not in lost]
    kept[20], kept[21] = kept[21], kept[20]  # reordered on the way
    (stream,) = rtp_streams(kept).values()
    audio = stream.audio()
    expected = ulaw_decode(ulaw_encode(x))
    assert audio.size == x.size
    for i in range(50):
        chunk = audio[i * 160 : (i + 1) * 160]
        if i in lost:
            assert not chunk.any()
        else:
            assert np.array_equal(chunk, expected[i * 160 : (i + 1) * 160])
    assert stream.arrival_gaps_ms().max() == pytest.approx(60.0, abs=0.01)
    assert stream.audio(rate=16000).size == 2 * x.size


@pytest.mark.parametrize(
    "linktype,header",
    [
        (LINKTYPE_NULL, lambda ip: struct.pack("<I", 2)),
        (LINKTYPE_RAW, lambda ip: b""),
        (LINKTYPE_LINUX_SLL, lambda ip: struct.pack("!HHH8sH", 0, 772, 6, b"\0" * 8, 0x0800)),
        (LINKTYPE_LINUX_SLL2, lambda ip: struct.pack("!HHIHBB8s", 0x0800, 0, 1, 772, 0, 6, b"\0" * 8)),
    ],
)
def test_read_other_link_types(tmp_path: Path, linktype: int, header) -> None:
    eth = tmp_path / "eth.pcap"
    write_rtp_pcap(eth, tone(440, 0.1), src=("127.0.0.1", 1111), dst=("127.0.0.1", 2222))
    other = tmp_path / "other.pcap"
    _relink(eth, other, linktype, header)
    assert read_pcap(other) == read_pcap(eth)


def test_read_big_endian_nanosecond_pcap(tmp_path: Path) -> None:
    eth = tmp_path / "eth.pcap"
    write_udp_pcap(eth, [(1.5, ("127.0.0.1", 1), ("127.0.0.2", 2), b"hello")])
    ghdr, [(rec, frame)] = _records(eth)
    be = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1) + struct.pack(">IIII", 1, 500_000_000, len(frame), len(frame)) + frame
    path = tmp_path / "be.pcap"
    path.write_bytes(be)
    assert read_pcap(path) == [Packet(1.5, ("127.0.0.1", 1), ("127.0.0.2", 2), b"hello")]


def test_truncated_and_empty_files(tmp_path: Path) -> None:
    path = tmp_path / "t.pcap"
    write_rtp_pcap(path, tone(440, 0.1))
    data = path.read_bytes()
    path.write_bytes(data[:-30])  # capture stopped mid-record
    assert len(read_pcap(path)) == 4
    path.write_bytes(b"")
    assert read_pcap(path) == []
    path.write_bytes(b"\x0a\x0d\x0d\x0a" + b"\0" * 40)  # pcapng
    with pytest.raises(ValueError):
        read_pcap(path)


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed")
def test_tcpdump_reads_our_pcap_with_valid_checksums(tmp_path: Path) -> None:
    path = tmp_path / "d.pcap"
    write_rtp_pcap(path, tone(440, 0.2), dtmf=[("5", 0.0, 60)], src=("127.0.0.1", 6000), dst=("127.0.0.1", 7000))
    out = subprocess.run(["tcpdump", "-nn", "-vv", "-r", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if "127.0.0.1.6000 > 127.0.0.1.7000" in line]
    assert len(lines) == 10
    assert "bad" not in out.stdout.lower()
