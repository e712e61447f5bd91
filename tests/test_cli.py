"""The command line, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from softswitch import __version__


def softswitch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softswitch", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def test_check_reports_unknown_key_and_wrong_type_with_line_numbers(tmp_path: Path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("sip:\n  listen_address: 127.0.0.1\n  udp_prot: 5060\n  tcp_port: \"5060\"\n")
    result = softswitch("check", "--config", str(cfg))
    assert result.returncode != 0
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert any(line.startswith(f"{cfg}:3: sip.udp_prot:") and "udp_port" in line for line in lines), result.stderr
    assert any(line.startswith(f"{cfg}:4: sip.tcp_port:") and "integer" in line for line in lines), result.stderr
    assert "2 errors" in result.stderr


def test_check_accepts_the_built_in_default():
    result = softswitch("check")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_rejects_a_bad_override():
    result = softswitch("check", "--set", "sip.udp_port=70000")
    assert result.returncode != 0
    assert "sip.udp_port" in result.stderr


def test_version_and_help():
    assert softswitch("--version").stdout.strip() == f"softswitch {__version__}"
    help_text = softswitch("--help").stdout
    for command in ("run", "check"):
        assert command in help_text


def test_run_refuses_a_port_in_use_with_a_clear_error(tmp_path: Path):
    import socket

    from tests.support.server import write_test_config

    cfg = write_test_config(tmp_path)
    import yaml
    port = yaml.safe_load(cfg.read_text())["sip"]["udp_port"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", port))
        result = softswitch("run", "--config", str(cfg))
    assert result.returncode == 3
    assert "cannot listen for SIP" in result.stderr and str(port) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_run_refuses_a_metrics_port_in_use_naming_the_setting(tmp_path: Path):
    import socket

    from tests.support.ports import free_port
    from tests.support.server import write_test_config

    port = free_port("tcp")
    cfg = write_test_config(tmp_path, metrics={"http_listen": f"127.0.0.1:{port}"})
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = softswitch("run", "--config", str(cfg))
    assert result.returncode == 3
    assert "metrics.http_listen" in result.stderr and f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_status_says_clearly_when_nothing_is_running(tmp_path: Path):
    from tests.support.ports import free_port

    port = free_port("tcp")
    result = softswitch("status", "--set", f"metrics.http_listen=127.0.0.1:{port}")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == (f"softswitch is not running at 127.0.0.1:{port} (connection refused); "
                                     "is `metrics.http_listen` set?")
    off = softswitch("status", "--set", "metrics.http_listen=null")
    assert off.returncode == 1 and "metrics.http_listen is off" in off.stderr and "--url" in off.stderr


def test_status_summarises_a_running_server_and_json_is_its_status_document(tmp_path: Path):
    import json

    from tests.support.ports import free_port
    from tests.support.server import ServerProcess, write_test_config

    port = free_port("tcp")
    cfg = write_test_config(tmp_path, metrics={"http_listen": f"127.0.0.1:{port}"})
    with ServerProcess(cfg) as server:
        summary = softswitch("status", "--config", str(cfg))
        as_json = softswitch("status", "--url", f"http://127.0.0.1:{port}", "--json")
        direct = server.status()
    assert summary.returncode == 0, summary.stderr
    lines = summary.stdout.splitlines()
    assert lines[0].startswith(f"softswitch {__version__} at 127.0.0.1:{port}, up ")
    assert "calls: 0 inbound active" in summary.stdout and "registrations: 0 bindings" in summary.stdout
    assert "queues: none" in summary.stdout and "overload: ok" in summary.stdout
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["version"] == __version__ and doc["stale"] is False
    assert doc["listen"] == direct["listen"] and doc["counts"] == direct["counts"]


def test_status_summary_lists_queues_trunks_and_overload():
    from dataclasses import replace
    from types import SimpleNamespace

    from softswitch.cli import _status_summary
    from softswitch.ops import metrics as m
    from softswitch.sip.endpoint import LoopStats

    ua = SimpleNamespace(handler=None, registrar=None, trunks=None, loop_stats=LoopStats(), listen=None)
    snap = replace(
        m.Metrics(ua).collect(), uptime_s=3723.0, inbound_calls_active=4,
        legs_active={("inbound", "sip"): 4, ("outbound", "sip"): 1},
        trunks=(m.TrunkGauge("provider", True, False, 403, "Forbidden"),),
        queues=(m.QueueGauge("demo", "queue_support", 3, 1, 42.0, 10, 20.0, {"completedCount": 10,
                                                                            "averageWaitSeconds": 20.0}),),
        overload=m.OverloadGauge(True, "cpu", 97.0, 12.0, {"concurrent": 0, "cpu": 7}))
    text = _status_summary(m.status_document(snap, stale=True), "127.0.0.1:9100")
    assert text.splitlines()[0].startswith(f"softswitch {__version__} at 127.0.0.1:9100, up 1h02m03s (STALE")
    assert "calls: 4 inbound active; legs: 5 (inbound sip 4, outbound sip 1)" in text
    assert "trunk provider: NOT registered (403 Forbidden)" in text
    assert ("  queue_support (demo): 3 waiting, longest 42 s, 1 callbacks pending; 10 answered, average wait 20 s"
            in text.splitlines())
    assert "overload: OVERLOADED (cpu)" in text and "refused: cpu 7" in text


def test_status_summary_says_when_recordings_are_failing():
    import errno
    from types import SimpleNamespace

    from softswitch.cli import _status_summary
    from softswitch.media.health import RecordingHealth
    from softswitch.ops import metrics as m
    from softswitch.sip.endpoint import LoopStats

    health = RecordingHealth()
    ua = SimpleNamespace(handler=None, registrar=None, trunks=None, loop_stats=LoopStats(), listen=None,
                         recording_health=health)
    health.failed("/rec/leg_1.wav", "leg leg_1 (call-id c1)", OSError(errno.ENOSPC, "No space left on device"))
    text = _status_summary(m.status_document(m.Metrics(ua).collect(), stale=False), "127.0.0.1:9100")
    assert ("recordings: FAILING since /rec/leg_1.wav (leg leg_1 (call-id c1)): No space left on device (ENOSPC); "
            "1 failed so far") in text.splitlines()
    health.wrote(health.opened())
    text = _status_summary(m.status_document(m.Metrics(ua).collect(), stale=False), "127.0.0.1:9100")
    assert "recordings: ok (0 active, 1 failed so far)" in text.splitlines()
