"""Tests of the SIPp runner and scenarios: SIPp against SIPp over loopback, checked on the wire.

These prove the actors the softswitch tests rely on: a call carries each side's pcap audio
(and RFC 4733 DTMF) both ways, refusals and unanswered calls end cleanly, registration answers
a digest challenge, and the runner reports what happened.
"""

from __future__ import annotations

import time

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support import actors
from tests.support.audio import dominant_frequency, has_tone, tone
from tests.support.capture import CaptureError, LoopbackCapture
from tests.support.pcap import RtpStream, write_rtp_pcap
from tests.support.sipp import Sipp, SippResult, scenario_path, scenario_requirements

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed"),
    pytest.mark.timeout(120),
]

PCAP_SECONDS = 3.0
BOUND_S = 30  # SIPp's -timeout for every instance here


def _pcap(tmp_path: Path, name: str, freq: float, ssrc: int, dtmf: list[tuple[str, float, int]] | None = None) -> Path:
    path = tmp_path / name
    write_rtp_pcap(path, tone(freq, PCAP_SECONDS), ssrc=ssrc, dtmf=dtmf or [])
    return path


def _ok(result: SippResult) -> None:
    assert result.ok and result.successful == 1 and result.failed == 0, str(result)


def _single_stream(streams: dict[tuple[str, int, int], RtpStream], port: int) -> RtpStream:
    assert len(streams) == 1, f"expected one RTP stream to port {port}, got {list(streams)}"
    return next(iter(streams.values()))


def test_call_carries_both_pcaps_and_dtmf(tmp_path: Path) -> None:
    caller_pcap = _pcap(tmp_path, "caller.pcap", 440, 0x440, dtmf=[("5", 1.0, 100), ("#", 2.0, 100)])
    callee_pcap = _pcap(tmp_path, "callee.pcap", 1000, 0x1000)
    uas = actors.uas_answer(callee_pcap, answer_delay_ms=100, timeout_s=BOUND_S, trace_dir=tmp_path / "uas")
    uac = actors.uac_call(
        uas.address, caller_pcap, hold_ms=int(PCAP_SECONDS * 1000) + 700, timeout_s=BOUND_S, trace_dir=tmp_path / "uac"
    )
    capture = LoopbackCapture(f"udp and (port {uas.media_port} or port {uac.media_port})", tmp_path / "rtp.pcap")
    try:
        with capture, uas, uac:
            uac_result, uas_result = uac.wait(), uas.wait()
    except CaptureError as exc:
        pytest.skip(f"cannot capture on loopback: {exc}")
    _ok(uac_result)
    _ok(uas_result)

    to_uas = _single_stream(capture.streams(dst_port=uas.media_port), uas.media_port)
    to_uac = _single_stream(capture.streams(dst_port=uac.media_port), uac.media_port)
    # SIPp sends from its media port, so each side's RTP comes from where the other sends to.
    assert to_uas.src == ("127.0.0.1", uac.media_port) and to_uac.src == ("127.0.0.1", uas.media_port)
    assert (to_uas.ssrc, to_uac.ssrc) == (0x440, 0x1000)
    for stream, freq in ((to_uas, 440.0), (to_uac, 1000.0)):
        audio = stream.audio()
        assert dominant_frequency(audio, 8000) == pytest.approx(freq, abs=2.0)
        assert has_tone(audio, 8000, freq, min_ratio=0.8)
        assert stream.duration_seconds() == pytest.approx(PCAP_SECONDS, abs=0.5)
        assert np.percentile(stream.arrival_gaps_ms(), 99) < 30.0
    assert to_uas.dtmf_digits() == "5#"
    assert to_uac.dtmf_digits() == ""


def test_refused_call_is_a_failed_call_for_the_plain_caller(tmp_path: Path) -> None:
    pcap = _pcap(tmp_path, "caller.pcap", 440, 1)
    with actors.uas_reject(486, timeout_s=BOUND_S, trace_dir=tmp_path / "uas") as uas:
        with actors.uac_call(uas.address, pcap, hold_ms=1000, timeout_s=BOUND_S, trace_dir=tmp_path / "uac") as uac:
            uac_result = uac.wait()
        uas_result = uas.wait()
    assert uac_result.returncode == 1 and uac_result.failed == 1 and not uac_result.ok, str(uac_result)
    assert "486 Busy Here" in uac_result.errors
    _ok(uas_result)  # SIPp ACKed the rejection


@pytest.mark.parametrize("status,reason", [(486, "Busy Here"), (603, "Decline"), (404, "Not Found")])
def test_expected_refusal(tmp_path: Path, status: int, reason: str) -> None:
    with actors.uas_reject(status, ring_ms=200, timeout_s=BOUND_S, trace_dir=tmp_path / "uas") as uas:
        with actors.uac_expect_failure(uas.address, cancel_after_ms=5000, timeout_s=BOUND_S, trace_dir=tmp_path / "uac") as uac:
            uac_result = uac.wait()
        uas_result = uas.wait()
    _ok(uac_result)
    _ok(uas_result)
    assert uac_result.log_values("final_status") == [str(status)]
    assert f"SIP/2.0 {status} {reason}" in (tmp_path / "uas" / "messages.log").read_text()


def test_unanswered_call_is_cancelled(tmp_path: Path) -> None:
    with actors.uas_no_answer(timeout_s=BOUND_S, trace_dir=tmp_path / "uas") as uas:
        with actors.uac_expect_failure(uas.address, cancel_after_ms=1000, timeout_s=BOUND_S, trace_dir=tmp_path / "uac") as uac:
            uac_result = uac.wait(timeout=15)
        uas_result = uas.wait(timeout=15)
    _ok(uac_result)
    _ok(uas_result)
    assert uac_result.log_values("final_status") == ["487"]
    messages = (tmp_path / "uas" / "messages.log").read_text()
    assert "CANCEL sip:" in messages and "SIP/2.0 487 Request Terminated" in messages


def test_expect_failure_fails_when_answered(tmp_path: Path) -> None:
    pcap = _pcap(tmp_path, "callee.pcap", 1000, 2)
    with actors.uas_answer(pcap, timeout_s=BOUND_S, trace_dir=tmp_path / "uas") as uas:
        with actors.uac_expect_failure(uas.address, timeout_s=BOUND_S, trace_dir=tmp_path / "uac") as uac:
            uac_result = uac.wait()
        uas_result = uas.wait()
    assert uac_result.failed == 1 and not uac_result.ok
    assert uac_result.log_values("final_status") == ["200"]
    _ok(uas_result)  # the aborted caller still hung up with a BYE


def test_caller_waits_for_the_remote_bye(tmp_path: Path) -> None:
    caller, callee = _pcap(tmp_path, "caller.pcap", 440, 3), _pcap(tmp_path, "callee.pcap", 1000, 4)
    with actors.uas_answer(callee, hangup_after_ms=1500, timeout_s=BOUND_S, trace_dir=tmp_path / "uas") as uas:
        with actors.uac_until_bye(uas.address, caller, bye_timeout_ms=10000, timeout_s=BOUND_S, trace_dir=tmp_path / "uac") as uac:
            uac_result = uac.wait()
        uas_result = uas.wait()
    _ok(uac_result)
    _ok(uas_result)


def test_caller_fails_without_bye_within_the_bound(tmp_path: Path) -> None:
    # The wait for the BYE is bounded by the run's global timeout, which fails the call.
    caller, callee = _pcap(tmp_path, "caller.pcap", 440, 5), _pcap(tmp_path, "callee.pcap", 1000, 6)
    with actors.uas_answer(callee, timeout_s=6, trace_dir=tmp_path / "uas") as uas:
        with actors.uac_until_bye(uas.address, caller, bye_timeout_ms=2000, timeout_s=3, trace_dir=tmp_path / "uac") as uac:
            started = time.monotonic()
            uac_result = uac.wait(timeout=15)
            elapsed = time.monotonic() - started
        uas.stop()
    assert not uac_result.ok and not uac_result.successful, str(uac_result)
    assert 2.5 < elapsed < 10


@pytest.mark.parametrize("password,good", [("s3cret", True), ("wrong", False)])
def test_register_answers_the_digest_challenge(tmp_path: Path, password: str, good: bool) -> None:
    registrar = Sipp(
        "uas_registrar_challenge",
        calls=1,
        variables={"user": "1001", "password": "s3cret"},
        timeout_s=BOUND_S,
        trace_dir=tmp_path / "registrar",
    )
    with registrar:
        with actors.register(registrar.address, "1001", password, expires=120, timeout_s=BOUND_S, trace_dir=tmp_path / "phone") as phone:
            phone_result = phone.wait()
        registrar_result = registrar.wait()
    assert phone_result.ok is good and registrar_result.ok is good, f"{phone_result}\n{registrar_result}"
    assert (phone_result.successful, registrar_result.successful) == ((1, 1) if good else (0, 0))


def test_runner_checks_scenario_variables() -> None:
    assert scenario_requirements(scenario_path("uac_call_pcap")) == ({"caller", "hold_ms"}, {"pcap"})
    with pytest.raises(ValueError, match="missing -set variables \\['hold_ms'\\]"):
        Sipp("uac_call_pcap", "127.0.0.1:5060", variables={"caller": "1"}, keys={"pcap": "x"})
    with pytest.raises(ValueError, match="not <Global>"):
        Sipp("uas_no_answer", variables={"nope": 1})
    with pytest.raises(ValueError, match="missing -key values \\['pcap'\\]"):
        Sipp("uas_answer_pcap", variables={"answer_delay_ms": 0})
    with pytest.raises(FileNotFoundError):
        Sipp("no_such_scenario")


def test_runner_reports_errors_and_timeouts(tmp_path: Path) -> None:
    bad = Sipp("uas_no_answer", extra_args=["-no-such-option"], timeout_s=5, trace_dir=tmp_path / "bad")
    with bad:
        result = bad.wait()
    assert result.returncode == 1 and not result.ok
    assert "-no-such-option" in str(result)

    # Nobody calls: SIPp's own -timeout (with -timeout_error) ends it as a fatal error.
    idle = actors.uas_no_answer(timeout_s=1, trace_dir=tmp_path / "idle")
    with idle:
        result = idle.wait()
    assert result.returncode == 255 and not result.ok and not result.stopped
    assert "timed out" in result.errors

    # Our bound passes first: stop() ends it, and the result says so.
    waiting = actors.uas_no_answer(timeout_s=60, trace_dir=tmp_path / "waiting")
    with waiting:
        result = waiting.wait(timeout=0.5)
    assert result.stopped and not result.ok and not waiting.running
