"""RFC 4475's 49 torture messages over UDP and TCP at a live server while a call is up.

Each message (tests/fixtures/rfc4475/<name>.dat, transcribed from the RFC) goes from a source that
is not a trunk; the answer on the wire is checked against what the RFC says a robust element
answers (a set where the RFC allows several, or where softswitch answers an earlier check first:
an unauthenticated INVITE is challenged with 407 before its body is looked at). Responses, and
messages the RFC expects no answer to, must get none. The server must stay up, and the live call's
audio must go on without a gap.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.support.actors import uac_call
from tests.support.callcentre import pcap_of
from tests.support.capture import LoopbackCapture
from tests.support.fuzz import fuzz_sections, parse_reply, split_stream
from tests.support.server import sip_options_ok
from tests.support.waiting import wait_for

pytestmark = pytest.mark.sipp

FIXTURES = Path(__file__).parent / "fixtures" / "rfc4475"
SOURCE_IP = "127.0.0.2"  # not a trunk (the live call's trunk is 127.0.0.1)
LIVE_CALL_MS = 40_000
MAX_RTP_GAP_MS = 100
SILENCE = frozenset()  # no answer at all
ANSWER_WAIT_S = 2.0  # for an answer expected
SILENCE_WAIT_S = 0.6  # to see that none comes


@dataclass(frozen=True)
class Case:
    name: str
    section: str
    kind: str  # "request" or "response"
    udp: frozenset  # acceptable final status codes over UDP (empty: no answer)
    tcp: frozenset | None = None  # over TCP, when it differs
    why: str = ""


def c(name, section, kind, udp, tcp=None, why=""):
    return Case(name, section, kind, frozenset(udp), None if tcp is None else frozenset(tcp), why)


# What a robust element answers (RFC 4475 section 3, and RFC 3261 where 4475 defers to it).
CASES = [
    # 3.1.1 valid messages: answered as any request of their kind (no 400)
    c("wsinv", "3.1.1.1", "request", {407, 481},
      why="valid INVITE with a To tag: 481 for a dialog we do not know (or a challenge)"),
    c("intmeth", "3.1.1.2", "request", {501, 405}, why="unknown method: 501 with Allow"),
    c("esc01", "3.1.1.3", "request", {407}),
    c("escnull", "3.1.1.4", "request", {401}, why="valid REGISTER: challenged"),
    c("esc02", "3.1.1.5", "request", {501, 405}, why="RE%47IST%45R is an unknown method"),
    c("lwsdisp", "3.1.1.6", "request", {200}),
    c("longreq", "3.1.1.7", "request", {407}),
    c("dblreq", "3.1.1.8", "request", {401}, why="the REGISTER is answered; the trailing INVITE is noise over UDP"),
    c("semiuri", "3.1.1.9", "request", {200, 404}),
    c("transports", "3.1.1.10", "request", {200}),
    c("mpart01", "3.1.1.11", "request", {200, 202, 403, 404, 405, 415, 488, 501},
      {None, 200, 202, 403, 404, 405, 415, 488, 501},
      why="the TCP copy has the UDP copy's branch: pjsip takes it for a retransmission of that stateful "
          "MESSAGE transaction and resends the 200 to the UDP source (alone, over TCP, it gets 200)"),
    c("unreason", "3.1.1.12", "response", SILENCE, why="a response to no request: absorbed"),
    c("noreason", "3.1.1.13", "response", SILENCE),
    # 3.1.2 invalid messages: 400 (505 for the version), never a 2xx
    c("badinv01", "3.1.2.1", "request", {400}),
    c("clerr", "3.1.2.2", "request", {400}, SILENCE, why="over TCP the server waits for the 9999 octets"),
    c("ncl", "3.1.2.3", "request", {400}, SILENCE, why="over TCP pjsip cannot frame it and waits (pjsip decides)"),
    c("scalar02", "3.1.2.4", "request", {400}),
    c("scalarlg", "3.1.2.5", "response", SILENCE),
    c("quotbal", "3.1.2.6", "request", {400}),
    c("ltgtruri", "3.1.2.7", "request", {400}),
    c("lwsruri", "3.1.2.8", "request", {400}),
    c("lwsstart", "3.1.2.9", "request", {400}),
    c("trws", "3.1.2.10", "request", {400}),
    c("escruri", "3.1.2.11", "request", {400}),
    c("baddate", "3.1.2.12", "request", {400}),
    c("regbadct", "3.1.2.13", "request", {400}),
    c("badaspec", "3.1.2.14", "request", {400}),
    c("baddn", "3.1.2.15", "request", {400}),
    c("badvers", "3.1.2.16", "request", {505}),
    c("mismatch01", "3.1.2.17", "request", {400}),
    c("mismatch02", "3.1.2.18", "request", {400, 501}),
    c("bigcode", "3.1.2.19", "response", SILENCE),
    # 3.2 transaction layer
    c("badbranch", "3.2.1", "request", {200}, why="a branch that is only the cookie is still a request"),
    # 3.3 application layer
    c("insuf", "3.3.1", "request", {400}, why="no Call-ID, From or To"),
    c("unkscm", "3.3.2", "request", {416}),
    c("novelsc", "3.3.3", "request", {416}),
    c("unksm2", "3.3.4", "request", {400, 401, 416}),
    c("bext01", "3.3.5", "request", {420}),
    c("invut", "3.3.6", "request", {407, 415}, why="415, after the challenge every unauthenticated INVITE gets"),
    c("regaut01", "3.3.7", "request", {401}),
    c("multi01", "3.3.8", "request", {400}, SILENCE,
      why="over TCP its l: 154 is 2 octets more than sent: the server waits for them"),
    c("mcl01", "3.3.9", "request", {400}),
    c("bcast", "3.3.10", "response", SILENCE),
    c("zeromf", "3.3.11", "request", {200, 483}),
    c("cparam01", "3.3.12", "request", {401}),
    c("cparam02", "3.3.13", "request", {401}),
    c("regescrt", "3.3.14", "request", {401}),
    c("sdp01", "3.3.15", "request", {406, 488}),
    # 3.4 backward compatibility
    c("inv2543", "3.4.1", "request", {407}, SILENCE, why="RFC 2543 INVITE; over TCP it has no Content-Length"),
]


def load(name: str) -> bytes:
    return (FIXTURES / f"{name}.dat").read_bytes()


def call_id_of(data: bytes) -> str | None:
    m = re.search(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*(\S+)", data)
    return m.group(1).decode("latin-1") if m else None


def finals_for(messages: list[bytes], call_id: str | None) -> list[int]:
    codes = []
    for raw in messages:
        reply = parse_reply(raw)
        if reply and reply.status and reply.status >= 200 and (call_id is None or reply.call_id == call_id):
            codes.append(reply.status)
    return codes


def send_udp(server_port: int, data: bytes, wait_s: float) -> list[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((SOURCE_IP, 0))
        sock.sendto(data, ("127.0.0.1", server_port))
        return receive(sock, call_id_of(data), wait_s, stream=False)


def send_tcp(server_port: int, data: bytes, wait_s: float) -> list[int]:
    with socket.create_connection(("127.0.0.1", server_port), timeout=5, source_address=(SOURCE_IP, 0)) as sock:
        sock.sendall(data)
        return receive(sock, call_id_of(data), wait_s, stream=True)


def receive(sock: socket.socket, call_id: str | None, wait_s: float, stream: bool) -> list[int]:
    deadline, buffer, codes = time.monotonic() + wait_s, b"", []
    while time.monotonic() < deadline and not codes:
        sock.settimeout(max(0.02, deadline - time.monotonic()))
        try:
            data = sock.recv(65535)
        except (socket.timeout, TimeoutError, ConnectionResetError):
            break
        if not data:
            break
        if stream:
            messages, buffer = split_stream(buffer + data)
        else:
            messages = [data]
        codes += finals_for(messages, call_id)
    return codes


def rtp_gap_ms(cap: LoopbackCapture, port: int, start: float, end: float) -> float:
    streams = list(cap.streams(dst_port=port).values())
    assert streams, "no RTP reached the live caller"
    times = np.sort(np.concatenate([s.arrival_times() for s in streams]))
    window = times[(times >= start) & (times <= end)]
    assert window.size > 2, "no RTP to the live caller while the messages were sent"
    return float(np.max(np.diff(np.concatenate([[start], window, [end]]))) * 1000)


def test_the_fixtures_are_the_49_messages_of_rfc4475():
    names = {p.stem for p in FIXTURES.glob("*.dat")}
    assert names == {case.name for case in CASES} and len(names) == 49
    for name in names:
        data = load(name)
        head = data.split(b"\r\n\r\n", 1)[0]
        assert b"\n" not in head.replace(b"\r\n", b""), f"{name}: header lines not CRLF"
    # the <hex> octets of 3.1.1.2 survived the transcription
    assert b'"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"' in load("intmeth")
    assert load("noreason").startswith(b"SIP/2.0 100 \r\n") and b"SIP/2.0  \r\n" in load("trws")


def test_the_rfc4475_messages_get_the_answers_the_rfc_expects_over_udp_and_tcp(server_factory, tmp_path):
    server = server_factory(**fuzz_sections(tmp_path))
    remote = f"127.0.0.1:{server.sip_port}"
    live = uac_call(remote, pcap_of(tmp_path, "live-caller", 440, LIVE_CALL_MS / 1000 + 1), number="5550100",
                    caller="5551234", hold_ms=LIVE_CALL_MS, timeout_s=LIVE_CALL_MS / 1000 + 60)
    wrong: list[str] = []
    with LoopbackCapture(f"udp and dst port {live.media_port}", tmp_path / "live.pcap") as cap, live:
        wait_for(lambda: "via trunk trunk_main" in server.text(), 15, "the live call to reach the flow")
        time.sleep(1.0)
        started = time.time()
        for transport, send in (("UDP", send_udp), ("TCP", send_tcp)):
            for case in CASES:
                expected = case.udp if transport == "UDP" or case.tcp is None else case.tcp
                codes = send(server.sip_port, load(case.name), ANSWER_WAIT_S if expected else SILENCE_WAIT_S)
                ok = (not codes and (not expected or None in expected)) or (bool(codes) and codes[0] in expected)
                if not ok:
                    wrong.append(f"{transport} {case.name} ({case.section} {case.kind}): got {codes or 'no answer'}, "
                                 f"expected {sorted(expected) or 'no answer'}")
                assert server.proc.poll() is None, f"the server died on {case.name} over {transport}"
        ended = time.time()
        result = live.wait(LIVE_CALL_MS / 1000 + 30)
    assert wrong == [], "\n".join(wrong)
    assert server.proc.poll() is None and sip_options_ok(server.sip_port, timeout=2.0)
    assert result.ok, str(result)
    gap = rtp_gap_ms(cap, live.media_port, started, ended)
    assert gap <= MAX_RTP_GAP_MS, f"RTP gap of {gap:.0f} ms on the live call"
    metrics = server.metrics()
    answered = {k: v for k, v in metrics.items() if "edge_answer_" in k}
    assert any('edge_answer_400' in k for k in answered), metrics


def test_an_oversized_tcp_request_gets_513_and_its_connection_is_closed(server_factory, tmp_path):
    server = server_factory(**fuzz_sections(tmp_path))
    filler = "X-Filler: " + "a" * 9000 + "\r\n"
    request = (f"OPTIONS sip:probe@127.0.0.1:{server.sip_port} SIP/2.0\r\n"
               f"Via: SIP/2.0/TCP {SOURCE_IP}:5060;branch=z9hG4bKbig1\r\nMax-Forwards: 70\r\n"
               f"From: <sip:big@{SOURCE_IP}>;tag=big\r\nTo: <sip:probe@127.0.0.1>\r\nCall-ID: oversized-1\r\n"
               f"CSeq: 1 OPTIONS\r\n{filler}Content-Length: 0\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.sip_port), timeout=5, source_address=(SOURCE_IP, 0)) as sock:
        sock.sendall(request)
        received, closed = b"", False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = sock.recv(65535)
            except (socket.timeout, TimeoutError):
                break
            except ConnectionResetError:
                closed = True
                break
            if not data:
                closed = True
                break
            received += data
    messages, _ = split_stream(received)
    assert [parse_reply(m).status for m in messages][:1] == [513], received[:300]
    assert closed, "the connection stayed open after the oversized request"
    assert server.proc.poll() is None and sip_options_ok(server.sip_port, timeout=2.0)


def options(transport: str, call_id: str, extra: str = "", body: str = "") -> bytes:
    return (f"OPTIONS sip:probe@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} {SOURCE_IP}:5060;branch=z9hG4bK{call_id}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@{SOURCE_IP}>;tag={call_id}\r\nTo: <sip:probe@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n{extra}Content-Length: {len(body)}\r\n\r\n{body}").encode()


def test_an_oversized_udp_datagram_gets_513(server_factory, tmp_path):
    # pjsip reads 8,000 octets of a datagram; the kernel drops the rest
    server = server_factory(**fuzz_sections(tmp_path))
    in_body = options("UDP", "big-body", body="b" * 9000)
    in_headers = options("UDP", "big-headers", extra="X-Filler: " + "h" * 9000 + "\r\n")
    assert send_udp(server.sip_port, in_body, ANSWER_WAIT_S) == [513]
    assert send_udp(server.sip_port, in_headers, ANSWER_WAIT_S) == [513]
    assert send_udp(server.sip_port, options("UDP", "small", body="b" * 7000), ANSWER_WAIT_S) == [200]
    assert server.proc.poll() is None


def test_require_lists_only_what_is_unsupported_and_pjsip_extensions_pass(server_factory, tmp_path):
    server = server_factory(**fuzz_sections(tmp_path))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((SOURCE_IP, 0))
        sock.sendto(options("UDP", "req-known", extra="Require: 100rel, timer, replaces\r\n"), ("127.0.0.1", server.sip_port))
        sock.sendto(options("UDP", "req-mixed", extra="Require: timer, foo-ext\r\n"), ("127.0.0.1", server.sip_port))
        replies = {}
        deadline = time.monotonic() + 5
        while len(replies) < 2 and time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                reply = parse_reply(sock.recv(65535))
            except (socket.timeout, TimeoutError):
                break
            if reply and reply.status and reply.status >= 200:
                replies[reply.call_id] = reply
    assert replies["req-known"].status == 200  # what pjsip supports is not refused
    assert replies["req-mixed"].status == 420
    assert replies["req-mixed"].header("Unsupported").replace(" ", "") == "foo-ext"
