"""Minimal libpcap writer/reader and RTP analysis (no scapy).

Writing: SIPp's ``play_pcap_audio`` replays the UDP payloads of a classic Ethernet/IPv4/UDP pcap
with the pcap's timing, so a test actor's media is whatever RTP we put in the file.
Reading: tests capture loopback with tcpdump and check what the server really sent.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from tests.support.audio import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

Address = tuple[str, int]

# Link types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL = 0  # BSD loopback: 4-byte host-order address family
LINKTYPE_EN10MB = 1  # Ethernet, also what tcpdump gives on Linux "lo"
LINKTYPE_RAW = 101  # bare IPv4/IPv6
LINKTYPE_LOOP = 108  # OpenBSD loopback: 4-byte network-order family
LINKTYPE_LINUX_SLL = 113  # "any" device, v1 cooked header
LINKTYPE_IPV4 = 228
LINKTYPE_LINUX_SLL2 = 276  # "any" device, v2 cooked header

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D

PT_PCMU = 0
PT_PCMA = 8
PT_TELEPHONE_EVENT = 101
CODECS = {"PCMU": PT_PCMU, "PCMA": PT_PCMA}
DTMF_EVENTS = "0123456789*#ABCD"  # RFC 4733 event codes 0..15


# --- writing ---------------------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _udp_frame(src: Address, dst: Address, payload: bytes, ip_id: int) -> bytes:
    """Ethernet + IPv4 + UDP frame with valid IP and UDP checksums."""
    src_ip = ipaddress.IPv4Address(src[0]).packed
    dst_ip = ipaddress.IPv4Address(dst[0]).packed
    udp_len = 8 + len(payload)
    pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", src[1], dst[1], udp_len, 0) + payload
    udp_sum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", udp_sum) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, ip_id & 0xFFFF, 0x4000, 64, 17, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    ether = b"\x00\x00\x00\x00\x00\x02" + b"\x00\x00\x00\x00\x00\x01" + b"\x08\x00"
    return ether + ip + udp


def write_udp_pcap(path: str | Path, datagrams: Iterable[tuple[float, Address, Address, bytes]]) -> None:
    """Write (timestamp, src, dst, payload) UDP datagrams as an Ethernet pcap (microseconds)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, 65535, LINKTYPE_EN10MB))
        for n, (ts, src, dst, payload) in enumerate(datagrams):
            frame = _udp_frame(src, dst, payload, n)
            usec_total = int(round(ts * 1_000_000))
            sec, usec = divmod(usec_total, 1_000_000)
            f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)


def rtp_header(pt: int, seq: int, ts: int, ssrc: int, marker: bool = False) -> bytes:
    """Fixed 12-byte RTP header (version 2, no CSRC/extension/padding)."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | (pt & 0x7F), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)


def write_rtp_pcap(
    path: str | Path,
    samples_int16: np.ndarray,
    *,
    codec: str = "PCMU",
    ptime_ms: int = 20,
    ssrc: int = 0x5EED0001,
    src: Address = ("127.0.0.1", 6000),
    dst: Address = ("127.0.0.1", 7000),
    dtmf: Sequence[tuple[str, float, int]] = (),
    seq0: int = 1000,
    ts0: int = 16000,
    start_time: float = 1_700_000_000.0,
    dtmf_pt: int = PT_TELEPHONE_EVENT,
) -> int:
    """Write 8 kHz G.711 RTP for ``samples_int16`` (padded to whole packets); return packet count.

    ``dtmf`` holds (digit, start_second, duration_ms) RFC 4733 events: one event packet per ptime
    (marker on the first, duration growing), the last one with the E bit sent three times, one
    per ptime. Audio packets in those slots are replaced, as a phone would do.
    """
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, not {codec!r}")
    encode = ulaw_encode if codec == "PCMU" else alaw_encode
    spp = 8 * ptime_ms  # samples per packet at 8 kHz
    pcm = np.asarray(samples_int16, dtype=np.int16)
    n_frames = max(1, -(-pcm.size // spp))
    pcm = np.concatenate([pcm, np.zeros(n_frames * spp - pcm.size, dtype=np.int16)])
    payloads: list[tuple[int, bool, int, bytes]] = [  # (pt, marker, rtp ts offset, payload)
        (CODECS[codec], i == 0, i * spp, encode(pcm[i * spp : (i + 1) * spp]).tobytes()) for i in range(n_frames)
    ]
    for digit, start_s, duration_ms in dtmf:
        code = DTMF_EVENTS.index(digit.upper())
        first = int(round(start_s * 1000 / ptime_ms))
        n_event = max(1, int(round(duration_ms / ptime_ms)))
        for k in range(n_event + 2):
            slot = first + k
            if slot >= n_frames:
                raise ValueError(f"DTMF {digit!r} at {start_s}s does not fit in the audio")
            end = k >= n_event - 1
            duration = min(k + 1, n_event) * spp
            body = struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration)
            payloads[slot] = (dtmf_pt, k == 0, first * spp, body)
    datagrams = []
    for i, (pt, marker, ts_offset, body) in enumerate(payloads):
        header = rtp_header(pt, seq0 + i, ts0 + ts_offset, ssrc, marker)
        datagrams.append((start_time + i * ptime_ms / 1000.0, src, dst, header + body))
    write_udp_pcap(path, datagrams)
    return len(datagrams)


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    """One captured UDP datagram."""

    ts: float
    src: Address
    dst: Address
    payload: bytes

    @property
    def src_ip(self) -> str:
        return self.src[0]

    @property
    def src_port(self) -> int:
        return self.src[1]

    @property
    def dst_ip(self) -> str:
        return self.dst[0]

    @property
    def dst_port(self) -> int:
        return self.dst[1]


def _network_layer(linktype: int, frame: bytes, little: bool) -> tuple[int, bytes] | None:
    """(ethertype-like protocol, L3 bytes) for a link-layer frame, or None if not IP."""
    if linktype == LINKTYPE_EN10MB:
        offset, proto = 14, struct.unpack_from("!H", frame, 12)[0] if len(frame) >= 14 else 0
        while proto in (0x8100, 0x88A8) and len(frame) >= offset + 4:  # VLAN tags
            proto = struct.unpack_from("!H", frame, offset + 2)[0]
            offset += 4
        return proto, frame[offset:]
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(frame) < 4:
            return None
        family = struct.unpack_from("<I" if (little and linktype == LINKTYPE_NULL) else "!I", frame)[0]
        return (0x0800 if family == 2 else 0x86DD if family in (10, 24, 28, 30) else 0), frame[4:]
    if linktype == LINKTYPE_LINUX_SLL:
        return (struct.unpack_from("!H", frame, 14)[0], frame[16:]) if len(frame) >= 16 else None
    if linktype == LINKTYPE_LINUX_SLL2:
        return (struct.unpack_from("!H", frame, 0)[0], frame[20:]) if len(frame) >= 20 else None
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, 12, 14):
        version = frame[0] >> 4 if frame else 0
        return (0x0800 if version == 4 else 0x86DD if version == 6 else 0), frame
    raise ValueError(f"unsupported pcap link type {linktype}")


def _udp(proto: int, l3: bytes) -> tuple[Address, Address, bytes] | None:
    """Source, destination and payload of an unfragmented UDP datagram in an IP packet."""
    if proto == 0x0800 and len(l3) >= 20:
        ihl = (l3[0] & 0x0F) * 4
        total_len, frag = struct.unpack_from("!H2xH", l3, 2)
        if l3[9] != 17 or frag & 0x3FFF:  # not UDP, or a fragment
            return None
        src_ip, dst_ip = str(ipaddress.IPv4Address(l3[12:16])), str(ipaddress.IPv4Address(l3[16:20]))
        udp = l3[ihl:total_len]
    elif proto == 0x86DD and len(l3) >= 40:
        if l3[6] != 17:  # only UDP directly after the fixed header
            return None
        src_ip, dst_ip = str(ipaddress.IPv6Address(l3[8:24])), str(ipaddress.IPv6Address(l3[24:40]))
        udp = l3[40 : 40 + struct.unpack_from("!H", l3, 4)[0]]
    else:
        return None
    if len(udp) < 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", udp)
    return (src_ip, sport), (dst_ip, dport), udp[8:length]


def read_pcap(path: str | Path) -> list[Packet]:
    """UDP datagrams from a classic pcap file (any byte order, us or ns timestamps)."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        return []  # tcpdump killed before writing its header, or nothing written
    magic_le = struct.unpack_from("<I", data)[0]
    if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
        endian = "<"
    elif struct.unpack_from(">I", data)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file (pcapng is not supported)")
    magic = struct.unpack_from(endian + "I", data)[0]
    divisor = 1e9 if magic == PCAP_MAGIC_NS else 1e6
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    packets: list[Packet] = []
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, incl_len, _orig = struct.unpack_from(endian + "IIII", data, offset)
        frame = data[offset + 16 : offset + 16 + incl_len]
        offset += 16 + incl_len
        if len(frame) < incl_len:
            break  # truncated last record (capture stopped mid-write)
        l3 = _network_layer(linktype, frame, endian == "<")
        udp = _udp(*l3) if l3 else None
        if udp:
            packets.append(Packet(sec + frac / divisor, *udp))
    return packets


# --- RTP -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RtpPacket:
    """A parsed RTP packet; ``arrival`` is the capture timestamp when known."""

    pt: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes
    csrcs: tuple[int, ...] = ()
    arrival: float = 0.0


def parse_rtp(payload: bytes, arrival: float = 0.0) -> RtpPacket | None:
    """Parse RTP (version 2, CSRCs, header extension, padding); None if not RTP (or RTCP)."""
    if len(payload) < 12 or payload[0] >> 6 != 2:
        return None
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", payload)
    pt = b1 & 0x7F
    if 72 <= pt <= 76:  # RTCP SR/RR/SDES/BYE/APP sharing the port (RFC 5761)
        return None
    offset = 12 + 4 * (b0 & 0x0F)
    if len(payload) < offset:
        return None
    csrcs = struct.unpack_from(f"!{b0 & 0x0F}I", payload, 12)
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if len(payload) < offset + 4:
            return None
        offset += 4 + 4 * struct.unpack_from("!H", payload, offset + 2)[0]
    end = len(payload)
    if b0 & 0x20:  # padding: last byte counts padding bytes
        end -= payload[-1]
    if end < offset:
        return None
    return RtpPacket(pt, bool(b1 & 0x80), seq, ts, ssrc, payload[offset:end], tuple(csrcs), arrival)


def _unwrap(values: Sequence[int], modulus: int) -> np.ndarray:
    """Unwrap sequence numbers or timestamps relative to the first value."""
    if not values:
        return np.zeros(0, dtype=np.int64)
    raw = np.asarray(values, dtype=np.int64)
    half = modulus // 2
    deltas = (np.diff(raw) + half) % modulus - half
    return np.concatenate([[0], np.cumsum(deltas)])


@dataclass
class RtpStream:
    """Packets of one RTP stream (one source address and SSRC), in arrival order."""

    src: Address
    dst: Address
    ssrc: int
    packets: list[RtpPacket] = field(default_factory=list)

    def payload_types(self) -> set[int]:
        return {p.pt for p in self.packets}

    def audio_packets(self) -> list[RtpPacket]:
        return [p for p in self.packets if p.pt in (PT_PCMU, PT_PCMA)]

    def audio(self, rate: int = 8000) -> np.ndarray:
        """Decoded G.711 audio ordered by sequence, gaps (by RTP timestamp) filled with silence."""
        pkts = self.audio_packets()
        if not pkts:
            return np.zeros(0, dtype=np.int16)
        order = np.argsort(_unwrap([p.seq for p in pkts], 1 << 16), kind="stable")
        pkts = [pkts[i] for i in order]
        offsets = _unwrap([p.timestamp for p in pkts], 1 << 32)
        offsets -= offsets.min()
        end = int(max(o + len(p.payload) for o, p in zip(offsets, pkts)))
        out = np.zeros(end, dtype=np.int16)
        for o, p in zip(offsets, pkts):
            decoded = ulaw_decode(p.payload) if p.pt == PT_PCMU else alaw_decode(p.payload)
            out[int(o) : int(o) + decoded.size] = decoded
        if rate != 8000:
            t_out = np.arange(int(out.size * rate / 8000)) / rate
            out = np.round(np.interp(t_out, np.arange(out.size) / 8000, out)).astype(np.int16)
        return out

    def arrival_times(self) -> np.ndarray:
        return np.array([p.arrival for p in self.packets], dtype=np.float64)

    def arrival_gaps_ms(self) -> np.ndarray:
        """Inter-arrival gaps of all packets in milliseconds (jitter/pacing checks)."""
        return np.diff(np.sort(self.arrival_times())) * 1000.0

    def duration_seconds(self) -> float:
        """First arrival to last arrival, plus the audio length of the last packet."""
        if not self.packets:
            return 0.0
        times = self.arrival_times()
        last = self.packets[int(np.argmax(times))]
        tail = len(last.payload) / 8000.0 if last.pt in (PT_PCMU, PT_PCMA) else 0.0
        return float(times.max() - times.min() + tail)

    def dtmf_events(self, pt: int = PT_TELEPHONE_EVENT) -> list[tuple[str, int, int]]:
        """RFC 4733 events as (digit, rtp timestamp, longest duration), one per event timestamp."""
        events: dict[int, tuple[str, int]] = {}
        for p in self.packets:
            if p.pt != pt or len(p.payload) < 4:
                continue
            code, _flags, duration = struct.unpack_from("!BBH", p.payload)
            if code >= len(DTMF_EVENTS):
                continue
            prev = events.get(p.timestamp)
            events[p.timestamp] = (DTMF_EVENTS[code], max(duration, prev[1] if prev else 0))
        t0 = self.packets[0].timestamp if self.packets else 0
        ordered = sorted(events.items(), key=lambda kv: (kv[0] - t0 + (1 << 31)) % (1 << 32))
        return [(digit, ts, duration) for ts, (digit, duration) in ordered]

    def dtmf_digits(self, pt: int = PT_TELEPHONE_EVENT) -> str:
        """The RFC 4733 digits of this stream in order, e.g. "19#"."""
        return "".join(digit for digit, _ts, _dur in self.dtmf_events(pt))


def rtp_streams(packets: Iterable[Packet], dst_port: int | None = None) -> dict[tuple[str, int, int], RtpStream]:
    """Group RTP packets by (source ip, source port, SSRC), optionally only those to ``dst_port``."""
    streams: dict[tuple[str, int, int], RtpStream] = {}
    for pkt in packets:
        if dst_port is not None and pkt.dst_port != dst_port:
            continue
        rtp = parse_rtp(pkt.payload, pkt.ts)
        if rtp is None:
            continue
        key = (pkt.src_ip, pkt.src_port, rtp.ssrc)
        stream = streams.get(key)
        if stream is None:
            stream = streams[key] = RtpStream(pkt.src, pkt.dst, rtp.ssrc)
        stream.packets.append(rtp)
    return streams
