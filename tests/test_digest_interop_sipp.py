"""Issue 13, defect 3: the digest challenge every common phone registers with.

Debian 12's baresip (libre 1.1.0) walks every WWW-Authenticate of a 401 and gives up on the whole
challenge at the first one whose algorithm is not MD5 ("Register: Function not implemented"),
whatever the order, so a 401 offering MD5 and SHA-256 locked it out. The built-in default
challenges with MD5 only; SHA-256 stays available by configuration (linphone answers it).
"""

from __future__ import annotations

import time

import pytest

from tests.support import baresip, softphone
from tests.support.baresip import Baresip
from tests.support.ports import free_port, free_port_block
from tests.support.server import ServerProcess
from tests.support.softphone import Linphone

pytestmark = [pytest.mark.sipp, pytest.mark.interop]


def _registered(server: ServerProcess, extension: str, timeout: float = 5.0) -> bool:
    """Whether softswitch itself lists the extension as registered (GET /status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if extension in server.status()["registrations"]["extensions"]:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not baresip.available(), reason="baresip is not installed")
def test_baresip_registers_with_the_builtin_default(tmp_path):
    port, rtp = free_port("both"), free_port_block(100, "udp")
    overrides = {"sip.udp_port": port, "sip.tcp_port": port, "sip.rtp_port_start": rtp, "sip.rtp_port_count": 100,
                 "directories.recordings": tmp_path / "recordings", "directories.state": tmp_path / "state",
                 "records.call_records": "null", "records.queue_events": "null"}
    args = [a for key, value in overrides.items() for a in ("--set", f"{key}={value}")]
    server = ServerProcess(None, args, port=port).start()
    try:
        with Baresip(tmp_path / "baresip", "1001", "pass1001", f"127.0.0.1:{port}") as phone:
            assert phone.wait_registration(timeout=10) == "OK", phone.output()[-2000:]
            assert _registered(server, "1001")
    finally:
        server.stop()


@pytest.mark.skipif(not softphone.available(), reason="linphone-daemon is not installed")
def test_sha256_challenge_still_works_when_configured(server_factory, tmp_path):
    metrics = free_port("tcp")
    server = server_factory(registrar={"algorithms": ["SHA-256", "MD5"]},
                            metrics={"http_listen": f"127.0.0.1:{metrics}"})
    with Linphone(tmp_path / "linphone", name="1002") as phone:
        reg = phone.register("1002", "pass1002", f"127.0.0.1:{server.sip_port}")
        phone.wait_registered(reg, timeout=10)
        assert _registered(server, "1002")
