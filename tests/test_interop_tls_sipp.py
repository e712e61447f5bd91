"""SIP over TLS and SRTP with a real, independent softphone (liblinphone's linphone-daemon).

The demo runs on the built-in default config with a TLS port and a certificate made for the test
(`openssl` into tmp_path, never a committed key). A phone registers as agent 1001 over TLS; a
second phone calls over TLS from 127.0.0.1 (trunk_main), presses 1, and is bridged to the agent,
both legs with mandatory SRTP. The RTP is encrypted, so what each side said is checked on
softswitch's split-stereo call recording, and the capture of the caller's RTP port shows that
the agent's tone cannot be decoded from the wire.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.support import softphone
from tests.support.audio import tone
from tests.support.callcentre import heard, json_lines
from tests.support.capture import LoopbackCapture
from tests.support.ports import free_port, free_port_block
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sipp, pytest.mark.interop,
              pytest.mark.skipif(not softphone.available(), reason="linphone-daemon is not installed")]

CALLER_HZ, AGENT_HZ = 440, 1000
# SDES with the key exchange in the (TLS-protected) SDP; mandatory: no plain RTP fallback.
SRTP_PHONE = {"sip": {"media_encryption": "srtp", "media_encryption_mandatory": "1"}}


def make_certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made now with the openssl CLI."""
    cert, key = tmp_path / "softswitch.crt", tmp_path / "softswitch.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def tls_demo(tmp_path: Path, **settings: object) -> tuple[ServerProcess, int]:
    """The built-in default config (the demo flows) with TLS on a free port; returns (server, tls port)."""
    cert, key = make_certificate(tmp_path)
    port, tls_port, rtp = free_port("both"), free_port("tcp"), free_port_block(400, "udp")
    overrides: dict[str, object] = {
        "sip.udp_port": port, "sip.tcp_port": port, "sip.rtp_port_start": rtp, "sip.rtp_port_count": 400,
        # The certificate before the port: every --set is checked as it is applied.
        "sip.tls.certificate": cert, "sip.tls.private_key": key, "sip.tls_port": tls_port,
        "registrar.algorithms": "[MD5]",
        "directories.recordings": tmp_path / "recordings", "directories.state": tmp_path / "state",
        "records.call_records": tmp_path / "calls.jsonl", "records.queue_events": tmp_path / "queue.jsonl",
        **settings,
    }
    args = [a for key_, value in overrides.items() for a in ("--set", f"{key_}={value}")]
    return ServerProcess(None, args, port=port).start(), tls_port


def wav(tmp_path: Path, name: str, freq: float, seconds: float = 40.0) -> Path:
    path = tmp_path / f"{name}.wav"
    sf.write(path, tone(freq, seconds), 8000, subtype="PCM_16")
    return path


def phone(tmp_path: Path, name: str, **kw) -> softphone.Linphone:
    return softphone.Linphone(tmp_path / name, name=name, transport="tls", settings=SRTP_PHONE, **kw).start()


def test_tls_registration_and_a_tls_srtp_call_through_the_demo(tmp_path):
    server, tls_port = tls_demo(tmp_path, **{"trunks.trunk_main.srtp": "mandatory",
                                            "extension_sets": "{internal: {srtp: mandatory}}"})
    agent = caller = None
    try:
        agent = phone(tmp_path, "agent1001", auto_answer=True)
        reg = agent.register("1001", "pass1001", f"127.0.0.1:{tls_port}")
        agent.wait_registered(reg)
        caller = phone(tmp_path, "caller", user="5551234")
        ports = f"{caller.rtp_port}-{caller.rtp_port + 19}"
        with LoopbackCapture(f"udp and dst portrange {ports}", tmp_path / "to-caller.pcap") as cap:
            call_id = caller.call(f"sip:support@127.0.0.1:{tls_port};transport=tls")
            caller.wait_call_state("LinphoneCallStreamsRunning", call_id)
            caller.play(wav(tmp_path, "caller", CALLER_HZ), call_id)
            time.sleep(1.0)  # the menu prompt has started
            caller.dtmf("1")
            agent_call = agent.wait_incoming(timeout=20)
            agent.wait_call_state("LinphoneCallStreamsRunning", agent_call)
            agent.play(wav(tmp_path, "agent", AGENT_HZ), agent_call)
            time.sleep(5.0)  # bridged talk
            caller.terminate(call_id)
            caller.wait_event("LinphoneCallEnd", call_id, timeout=10)
    finally:
        for p in (caller, agent):
            if p is not None:
                p.stop()
        server.stop()
    records = [r for r in json_lines(tmp_path / "calls.jsonl") if r.get("from") == "5551234"]
    assert len(records) == 1, (records, server.text()[-4000:])
    (recording,) = (tmp_path / "recordings").glob("leg_*.wav")
    audio, rate = sf.read(recording, dtype="int16")
    assert heard(audio[:, 0], CALLER_HZ), "the recording's caller channel does not have the caller's tone"
    assert heard(audio[:, 1], AGENT_HZ), "the recording's second channel does not have the agent's tone"
    # SRTP: the agent's tone reached the caller, but not as RTP anyone on the wire could decode.
    streams = list(cap.streams().values())
    assert streams, "no RTP towards the caller was captured"
    wire = np.concatenate([s.audio() for s in streams])
    assert not heard(wire, AGENT_HZ) and not heard(wire, CALLER_HZ)
