"""Bounds on TCP and TLS connections per source address (native/tcpguard.c), on real SIP.

Each test starts softswitch with small limits and short timeouts and talks to it from its own
loopback addresses (127.0.0.30-39): a flood of connections from one address is cut to the
limit while another address is still answered; a half-sent INVITE and a silent connection are
closed; phones registered over TCP from one address (an office behind NAT), more than the
unauthenticated limit, keep their connections and are reached over them.
"""

from __future__ import annotations

import os
import re
import select
import socket
import ssl
import time
import uuid

import pytest

from tests.support.ports import free_port
from tests.support.sipclient import SipClient
from tests.support.waiting import wait_for
from tests.test_interop_tls_sipp import make_certificate

pytestmark = pytest.mark.sipp

MAX_PER_SOURCE = 4
MAX_PENDING = 3
LIMITS = {"tcp_max_connections_per_source": MAX_PER_SOURCE, "tcp_max_pending_per_source": MAX_PENDING,
          "tcp_request_timeout_seconds": 1, "tcp_first_request_timeout_seconds": 2}


def guarded_server(server_factory, **sections):
    return server_factory(security=LIMITS, metrics={"http_listen": f"127.0.0.1:{free_port('tcp')}"}, **sections)


def server_fds(server) -> int:
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


def connect(server, ip: str, port: int | None = None) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port or server.sip_port), timeout=5, source_address=(ip, 0))


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed this connection (EOF or reset), without waiting."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return False
        while True:
            chunk = sock.recv(65535)
            if not chunk:
                return True
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
    except ssl.SSLWantReadError:
        return False
    except (ConnectionError, ssl.SSLError, OSError):
        return True


def options(ip: str, port: int, transport: str = "TCP") -> str:
    tag = uuid.uuid4().hex[:10]
    return (f"OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {ip}:5060;branch=z9hG4bK{tag};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@{ip}>;tag={tag}\r\nTo: <sip:probe@127.0.0.1>\r\n"
            f"Call-ID: {tag}@{ip}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


def half_invite(ip: str, port: int, transport: str = "TCP") -> bytes:
    """An INVITE cut off in its headers: the blank line and the body never come."""
    return (f"INVITE sip:1001@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {ip}:5060;branch=z9hG4bK{uuid.uuid4().hex[:10]};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:5551234@{ip}>;tag=x1\r\n").encode()


def answer_of(sock: socket.socket, timeout: float = 5.0) -> str | None:
    """The first response on a connection, or None if it closed (or nothing came in time)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65535)
            if not chunk:
                return None
            data += chunk
    except (TimeoutError, ConnectionError, OSError):
        return None
    return data.decode(errors="replace").split("\r\n", 1)[0]


def closed_counts(server) -> dict[str, float]:
    """Connections the guard closed, by reason (from /metrics; reasons with none left out)."""
    samples = server.metrics()
    return {m.group(1): v for k, v in samples.items()
            if v and (m := re.fullmatch(r'softswitch_sip_connections_closed_total\{reason="(\w+)"\}', k))}


def test_one_address_is_cut_to_its_limit_while_another_address_is_answered(server_factory):
    server = guarded_server(server_factory)
    baseline = server_fds(server)
    flood: list[socket.socket] = []
    try:
        # One address opens 30 connections, one after another, each asking OPTIONS.
        for _ in range(30):
            sock = connect(server, "127.0.0.30")
            sock.sendall(options("127.0.0.30", server.sip_port).encode())
            answer_of(sock, timeout=2.0)  # the first ones are answered; the rest may be closed first
            flood.append(sock)
        wait_for(lambda: sum(closed_by_server(s) for s in flood) >= 30 - MAX_PER_SOURCE, 10,
                 "the connections over the limit to be closed")
        still_open = [s for s in flood if not closed_by_server(s)]
        assert len(still_open) == MAX_PER_SOURCE
        # The server holds descriptors for those few only, not for the flood (the peer sees EOF
        # a moment before pjsip frees the socket).
        wait_for(lambda: server_fds(server) <= baseline + MAX_PER_SOURCE + 2, 5,
                 f"the server's descriptors to drop back to {baseline} + {MAX_PER_SOURCE} (+2)")
        # Another address is not affected by the first one's limit.
        other = SipClient(("127.0.0.1", server.sip_port), transport="tcp", local_ip="127.0.0.31")
        with other:
            other.send(other.request("OPTIONS", f"sip:127.0.0.1:{server.sip_port}", from_user="probe"))
            answer = other.final()
            assert answer is not None and answer.status == 200
        # The four that were let in still work.
        still_open[0].sendall(options("127.0.0.30", server.sip_port).encode())
        assert (answer_of(still_open[0]) or "").startswith("SIP/2.0 200")
    finally:
        for s in flood:
            s.close()
    assert closed_counts(server).get("connection_limit") == 30 - MAX_PER_SOURCE
    assert server.proc.poll() is None


def test_a_half_sent_invite_and_silent_connections_are_closed(server_factory):
    server = guarded_server(server_factory)
    port = server.sip_port
    half = connect(server, "127.0.0.34")
    half.sendall(half_invite("127.0.0.34", port))
    silent = connect(server, "127.0.0.34")
    # An OPTIONS answered, then the start of an INVITE in the same write: the rest never comes.
    answered_then_half = connect(server, "127.0.0.35")
    answered_then_half.sendall(options("127.0.0.35", port).encode() + half_invite("127.0.0.35", port))
    assert (answer_of(answered_then_half) or "").startswith("SIP/2.0 200")
    # Eight connections that send nothing from one address: three may wait, the rest are closed at once.
    crowd = [connect(server, "127.0.0.36") for _ in range(8)]
    try:
        every = [half, silent, answered_then_half, *crowd]
        wait_for(lambda: all(closed_by_server(s) for s in every), 10, "every idle or half-sent connection to close")
    finally:
        for s in [half, silent, answered_then_half, *crowd]:
            s.close()
    closed = closed_counts(server)
    assert closed.get("request_timeout") == 2, closed  # the two half INVITEs
    assert closed.get("pending_limit") == 8 - MAX_PENDING, closed
    assert closed.get("silent_timeout") == 1 + MAX_PENDING, closed
    # And the server still answers on TCP.
    with SipClient(("127.0.0.1", port), transport="tcp", local_ip="127.0.0.37") as probe:
        probe.send(probe.request("OPTIONS", f"sip:127.0.0.1:{port}", from_user="probe"))
        answer = probe.final()
    assert answer is not None and answer.status == 200


def test_requests_split_across_writes_keep_a_connection_open_while_each_completes(server_factory):
    """Every write ends in the middle of the next OPTIONS, for three times the request timeout:
    requests keep completing, so the connection is not the half-sent request the timeout is for."""
    server = guarded_server(server_factory)
    port = server.sip_port
    with connect(server, "127.0.0.32") as sock:
        pieces = [options("127.0.0.32", port).encode() for _ in range(13)]
        half = len(pieces[0]) // 2
        sock.sendall(pieces[0][:half])
        received = b""
        for previous, following in zip(pieces, pieces[1:]):
            time.sleep(0.25)
            sock.sendall(previous[half:] + following[:half])
            sock.settimeout(5)
            while received.count(b"SIP/2.0 200") < pieces.index(following):
                chunk = sock.recv(65535)
                assert chunk, "the server closed a connection whose requests kept completing"
                received += chunk
        assert not closed_by_server(sock)
    assert closed_counts(server) == {}


class TcpPhone:
    """A phone registered over its own TCP connection: it sends CRLF keep-alives (RFC 5626) and
    answers every request the server sends it over that connection with 200."""

    def __init__(self, port: int, ip: str, user: str) -> None:
        self.sip = SipClient(("127.0.0.1", port), transport="tcp", local_ip=ip)
        # A Contact port that is not the source port: the registrar sees the phone behind NAT and
        # keeps it reachable with OPTIONS over the phone's connection.
        resp = self.sip.register(user, f"pass{user}", contacts=[f"<sip:{user}@{ip}:5999;transport=tcp>"],
                                 expires=300)
        assert resp is not None and resp.status == 200, resp
        self.sock = self.sip.sock
        self.sock.setblocking(False)
        self.buffer = b""
        self.requests: list[str] = []
        self.closed = False

    def serve(self) -> None:
        """One turn: a CRLF keep-alive, then answer what has arrived."""
        if self.closed:
            return
        try:
            self.sock.sendall(b"\r\n\r\n")
            while True:
                chunk = self.sock.recv(65535)
                if not chunk:
                    self.closed = True
                    return
                self.buffer += chunk
        except BlockingIOError:
            pass
        except OSError:
            self.closed = True
            return
        while True:
            self.buffer = self.buffer.lstrip(b"\r\n")
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            length = int((re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head) or [0, b"0"])[1])
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            text = head.decode(errors="replace")
            if not text.startswith("SIP/2.0"):
                self.requests.append(text.split(" ", 1)[0])
                self.sock.sendall(self._ok(text))

    @staticmethod
    def _ok(request: str) -> bytes:
        keep = [line for line in request.split("\r\n")[1:]
                if line.split(":", 1)[0].strip().lower() in ("via", "v", "from", "f", "call-id", "i", "cseq")]
        to = next(line for line in request.split("\r\n") if line.split(":", 1)[0].strip().lower() in ("to", "t"))
        if ";tag=" not in to:
            to += ";tag=phone"
        return ("SIP/2.0 200 OK\r\n" + "\r\n".join(keep + [to, "Content-Length: 0", "", ""])).encode()

    def close(self) -> None:
        self.sip.close()


def test_phones_registered_from_one_address_keep_their_connections(server_factory):
    users = [f"20{n:02d}" for n in range(1, 9)]  # eight phones behind one address, over the limit of four
    server = guarded_server(server_factory,
                            extension_users={"office": [{"username": u, "password": f"pass{u}", "extension": u}
                                                        for u in users]},
                            registrar={"keepalive": {"interval_seconds": 1}})
    phones = [TcpPhone(server.sip_port, "127.0.0.38", u) for u in users]
    extras: list[socket.socket] = []
    try:
        # Well past both timeouts: keep-alives go both ways, every connection stays.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            for phone in phones:
                phone.serve()
            time.sleep(0.25)
        assert [p.closed for p in phones] == [False] * len(phones)
        # Each phone was reached over its own connection (the registrar's OPTIONS keep-alives).
        assert all("OPTIONS" in p.requests for p in phones), [p.requests for p in phones]
        status = server.status()
        assert status["registrations"]["extensions"] == users
        assert status["connections"]["trusted"] == len(phones) and status["connections"]["tcp"] == len(phones)
        # Registered phones do not use up the address's unauthenticated connections: four more
        # are let in and answered, the fifth is closed, and the phones are still connected.
        for _ in range(MAX_PER_SOURCE + 1):
            sock = connect(server, "127.0.0.38")
            sock.sendall(options("127.0.0.38", server.sip_port).encode())
            extras.append(sock)
        answers = [answer_of(s, timeout=2.0) for s in extras]
        assert sum(1 for a in answers if a and a.startswith("SIP/2.0 200")) >= MAX_PER_SOURCE
        wait_for(lambda: closed_by_server(extras[-1]), 5, "the connection over the limit to be closed")
        for phone in phones:
            phone.serve()
        assert [p.closed for p in phones] == [False] * len(phones)
        samples = server.metrics()
        assert samples["softswitch_sip_connections_trusted"] == len(phones)
        assert closed_counts(server) == {"connection_limit": 1}
    finally:
        for s in extras:
            s.close()
        for phone in phones:
            phone.close()


def test_tls_connections_have_the_same_limits(server_factory, tmp_path):
    cert, key = make_certificate(tmp_path)
    tls_port = free_port("tcp")
    server = guarded_server(server_factory, sip={"tls_port": tls_port,
                                                 "tls": {"certificate": str(cert), "private_key": str(key)}})
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE

    def tls_connect(ip: str) -> ssl.SSLSocket:
        return ctx.wrap_socket(connect(server, ip, tls_port))

    half = tls_connect("127.0.0.39")
    half.sendall(half_invite("127.0.0.39", tls_port, "TLS"))
    crowd = [tls_connect("127.0.0.39") for _ in range(5)]  # silent, with the half INVITE: 6 waiting, 3 allowed
    try:
        wait_for(lambda: sum(closed_by_server(s) for s in crowd) >= 3, 10, "the TLS connections over the limit to close")
        samples = server.metrics()
        assert samples['softswitch_sip_connections_open{transport="tls"}'] <= MAX_PENDING
        wait_for(lambda: all(closed_by_server(s) for s in [half, *crowd]), 10, "the rest to time out")
        with tls_connect("127.0.0.33") as probe:
            probe.sendall(options("127.0.0.33", tls_port, "TLS").encode())
            assert (answer_of(probe) or "").startswith("SIP/2.0 200")
    finally:
        for s in [half, *crowd]:
            s.close()
    closed = closed_counts(server)
    assert closed.get("request_timeout") == 1 and closed.get("pending_limit") == 3, closed
    assert closed.get("silent_timeout") == 2, closed
