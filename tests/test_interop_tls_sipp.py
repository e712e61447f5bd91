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

from tests.support.audio import has_tone
import pytest
import soundfile as sf

from tests.support import softphone
from tests.support.callcentre import heard, json_lines
from tests.support.interop import AGENT_HZ, CALLER_HZ, demo_server, phones, rtp_capture, tone_wav
from tests.support.ports import free_port

pytestmark = [pytest.mark.sipp, pytest.mark.interop,
              pytest.mark.skipif(not softphone.available(), reason="linphone-daemon is not installed")]

# SDES with the key exchange in the (TLS-protected) SDP; mandatory: no plain RTP fallback.
SRTP_PHONE = {"sip": {"media_encryption": "srtp", "media_encryption_mandatory": "1"}}


def make_certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made now with the openssl CLI."""
    cert, key = tmp_path / "softswitch.crt", tmp_path / "softswitch.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def tls_settings(tmp_path: Path, tls_port: int) -> dict[str, object]:
    """--set pairs turning TLS on (the certificate before the port: each --set is checked as applied)."""
    cert, key = make_certificate(tmp_path)
    return {"sip__tls__certificate": cert, "sip__tls__private_key": key, "sip__tls_port": tls_port}


def test_tls_registration_and_a_tls_srtp_call_through_the_demo(tmp_path):
    tls_port = free_port("tcp")
    secure = {"trunks__trunk_main__srtp": "mandatory", "extension_sets": "{internal: {srtp: mandatory}}"}
    with demo_server(tmp_path, **tls_settings(tmp_path, tls_port), **secure) as server, \
            phones(tmp_path, dict(name="agent1001", transport="tls", auto_answer=True, settings=SRTP_PHONE),
                   dict(name="caller", user="5551234", transport="tls", settings=SRTP_PHONE)) as (agent, caller):
        agent.wait_registered(agent.register("1001", "pass1001", f"127.0.0.1:{tls_port}"), 10)
        with rtp_capture(tmp_path, caller, name="to-caller") as cap:
            call_id = caller.call(f"sip:support@127.0.0.1:{tls_port};transport=tls")
            caller.wait_call_state("LinphoneCallStreamsRunning", call_id)
            caller.play(tone_wav(tmp_path / "caller.wav", CALLER_HZ), call_id)
            time.sleep(1.0)  # the menu prompt has started
            caller.dtmf("1")
            agent_call = agent.wait_incoming(timeout=20)  # over TLS: the agent listens on nothing else
            agent.wait_call_state("LinphoneCallStreamsRunning", agent_call)
            agent.play(tone_wav(tmp_path / "agent.wav", AGENT_HZ), agent_call)
            time.sleep(5.0)  # bridged talk
            caller.terminate(call_id)
            caller.wait_event("LinphoneCallEnd", call_id, timeout=10)
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
    # Ciphertext decoded as G.711 is noise: its loudest bin lands near a tone in some half second
    # by chance (the dominant-frequency test `heard` did once in CI), but no half second holds a
    # tone's energy, which every half second of the plain tone does.
    windows = [wire[i:i + 4000] for i in range(0, len(wire) - 4000 + 1, 2000)]
    assert windows
    assert not any(has_tone(w, 8000, f) for w in windows for f in (AGENT_HZ, CALLER_HZ))
