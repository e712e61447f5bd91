"""A real phone behind NAT (liblinphone) as agent 1001, through the assembled demo.

The agent phone sits behind a NAT that knows nothing about SIP: the phone writes its private
address (127.0.0.77, an unused loopback address standing in for 10.x/192.168.x) in Via, Contact
and SDP, while everything it sends reaches softswitch from 127.0.0.1 (SIP through the NAT's
mapped port, RTP from its own port). Nothing listens at 127.0.0.77: a request or RTP sent to
the advertised address is lost, as behind a real NAT. softswitch must:
  - answer and call the phone at its source (rport/received, the NAT's mapped port);
  - send it OPTIONS keep-alives at `registrar.keepalive.interval_seconds` (1 s here), which keep
    the mapping open and which the phone answers;
  - send RTP where the phone's RTP comes from (symmetric RTP), so the bridged call has audio both
    ways, and never keep sending to 127.0.0.77 once the phone's RTP arrived.
liblinphone 5.1 ignores `[net] nat_address` (its NAT policy replaced the firewall policy) and
cannot bind its RTP apart from the address it advertises, so the NAT box below writes the phone's
own address as the private one in what the phone sends, as the phone behind a home router would
have written it.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time

import pytest

from tests.support import softphone
from tests.support.capture import LoopbackCapture
from tests.support.keepalive import counters, first_arrivals
from tests.support.interop import AGENT_HZ, CALLER_HZ, demo_server, heard_between, mostly, phones, tone_wav

pytestmark = [pytest.mark.sipp, pytest.mark.interop,
              pytest.mark.skipif(not softphone.available(), reason="linphone-daemon not installed")]

PRIVATE = "127.0.0.77"  # the phone's "private" address: unused loopback, nothing listens there
INTERVAL = 1  # registrar.keepalive.interval_seconds in this test


class PhoneNat:
    """A one-phone UDP NAT in front of a phone's SIP socket on 127.0.0.1.

    The phone sends its SIP to `inside_port`; the NAT forwards it to softswitch from its mapped
    port (`outside_port`) and forwards whatever comes back to the mapped port to the phone. In
    what the phone sends, its own address (127.0.0.1:<sip port>, and 127.0.0.1 in SDP) becomes
    PRIVATE, the address a phone behind NAT advertises; in what it receives, the reverse."""

    def __init__(self, phone_port: int, server_port: int) -> None:
        self.phone = ("127.0.0.1", phone_port)
        self.server = ("127.0.0.1", server_port)
        self.inside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.inside.bind(("127.0.0.1", 0))
        self.outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.outside.bind(("127.0.0.1", 0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="phone-nat", daemon=True)

    @property
    def inside_port(self) -> int:
        return self.inside.getsockname()[1]

    @property
    def outside_port(self) -> int:
        return self.outside.getsockname()[1]

    def __enter__(self) -> "PhoneNat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.inside.close()
        self.outside.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.inside, self.outside], [], [], 0.1)
            for sock in ready:
                try:
                    data, source = sock.recvfrom(65535)
                except OSError:
                    continue
                if sock is self.inside and source == self.phone:
                    self.outside.sendto(self._private(data), self.server)
                elif sock is self.outside:
                    self.inside.sendto(self._public(data), self.phone)

    def _private(self, data: bytes) -> bytes:
        port = self.phone[1]
        data = data.replace(b"127.0.0.1:%d" % port, f"{PRIVATE}:{port}".encode())
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep or not body:
            return data
        body = body.replace(b"IN IP4 127.0.0.1\r\n", f"IN IP4 {PRIVATE}\r\n".encode())
        head = re.sub(rb"(?im)^(Content-Length|l)[ \t]*:[ \t]*\d+", lambda m: m.group(1) + b": %d" % len(body), head)
        return head + sep + body

    def _public(self, data: bytes) -> bytes:
        port = self.phone[1]
        return data.replace(f"{PRIVATE}:{port}".encode(), b"127.0.0.1:%d" % port)


def test_a_natted_agent_phone_gets_keepalives_and_a_queue_call_with_audio_both_ways(tmp_path):
    with demo_server(tmp_path, registrar__keepalive__interval_seconds=INTERVAL) as server, \
            phones(tmp_path, {"name": "caller", "user": "5551234"},
                   {"name": "agent", "auto_answer": True,
                    # A NAT-unaware phone: it does not learn its public address from rport.
                    "settings": {"net": {"enable_nat_helper": "0"}, "sip": {"enable_nat_helper": "0"}}}
                   ) as (caller, agent), \
            PhoneNat(agent.sip_port, server.sip_port) as nat:
        ranges = " or ".join(f"udp dst portrange {p.rtp_port}-{p.rtp_port + 19}" for p in (caller, agent))
        flt = (f"{ranges} or (udp and dst host 127.0.0.1 and dst port {agent.sip_port}) or (udp and dst host {PRIVATE})"
               f" or (udp and src portrange {agent.rtp_port}-{agent.rtp_port + 19})")
        with LoopbackCapture(flt, tmp_path / "nat.pcap") as cap:
            agent.wait_registered(agent.register("1001", "pass1001", f"127.0.0.1:{nat.inside_port}"), 10)
            t_registered = time.time()
            call = caller.call(f"sip:100@127.0.0.1:{server.sip_port}")
            caller.wait_event("LinphoneCallStreamsRunning", call, 15)
            caller.keep_playing(tone_wav(tmp_path / "caller.wav", CALLER_HZ), call)
            time.sleep(1.0)
            caller.dtmf("1")
            agent_call = agent.wait_event("LinphoneCallIncomingReceived", timeout=30).call_id
            agent.wait_event("LinphoneCallStreamsRunning", agent_call, 15)
            agent.keep_playing(tone_wav(tmp_path / "agent.wav", AGENT_HZ), agent_call)
            t_answered = time.time()
            time.sleep(4.5)
            t_end = time.time()
            caller.terminate(call)
            time.sleep(0.5)
        seen = counters(server)

    # Keep-alives: OPTIONS reached the phone through its NAT about every second, and it answered.
    options = first_arrivals(cap, agent.sip_port, b"OPTIONS")
    options = [t for t in options if t >= t_registered]
    gaps = [b - a for a, b in zip(options, options[1:])]
    assert len(options) >= 4 and all(0.75 * INTERVAL <= g <= 2.0 * INTERVAL for g in gaps), gaps
    assert seen.get("options_answered", 0) >= len(options) - 1, seen
    # The call reached the phone through its NAT, and the bridged audio flows both ways from the
    # first second after the answer.
    assert mostly(heard_between(cap, caller, t_answered + 1.0, t_end), AGENT_HZ), "caller did not hear the agent"
    assert mostly(heard_between(cap, agent, t_answered + 1.0, t_end), CALLER_HZ), "agent did not hear the caller"
    # Nothing went to the advertised private address but the RTP softswitch sent before it latched
    # to where the phone's RTP comes from; no SIP at all. pjmedia switches at the first packet, or,
    # when the packets' SSRC is not the one the SDP's a=ssrc announced (liblinphone's, after pjsua's
    # codec-lock UPDATE), after PJMEDIA_RTP_NAT_PROBATION_CNT (10) of them: 0.2 s of its RTP.
    private = [p for p in cap.packets() if p.dst_ip == PRIVATE]
    assert not [p for p in private if not agent.rtp_port <= p.dst_port < agent.rtp_port + 20], \
        [(p.dst, p.payload[:40]) for p in private][:5]
    from_phone = [p.ts for p in cap.packets() if p.src_ip == "127.0.0.1" and p.dst_ip == "127.0.0.1"
                  and agent.rtp_port <= p.src_port < agent.rtp_port + 20]
    assert from_phone, "the phone sent no RTP"
    late = [round(p.ts - from_phone[0], 3) for p in private if p.ts > from_phone[0] + 1.0]
    assert not late and len(private) <= 50, \
        f"{len(private)} RTP packets to {PRIVATE}, of them after the phone's RTP had come for 1 s: {late[:10]}"


def test_a_phone_registered_over_tcp_answers_options_keepalives_over_its_own_connection(tmp_path):
    # liblinphone registers over a connection from an ephemeral port (its Contact names that port
    # once it learnt it from rport, so the binding is not NATed: keep-alives to every binding here).
    # Nothing listens on that port, so an OPTIONS can reach the phone only over the connection the
    # REGISTER came on.
    with demo_server(tmp_path, registrar__keepalive__interval_seconds=INTERVAL,
                     registrar__keepalive__nat_only="false") as server, \
            phones(tmp_path, {"name": "agent", "transport": "tcp"}) as (agent,):
        agent.wait_registered(agent.register("1001", "pass1001", f"127.0.0.1:{server.sip_port}"), 10)

        deadline = time.monotonic() + 10
        while counters(server).get("options_answered", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        seen = counters(server)
        assert seen.get("options_answered", 0) >= 3 and seen.get("options_failed", 0) == 0, seen
        assert agent.registration_state() == "LinphoneRegistrationOk"
