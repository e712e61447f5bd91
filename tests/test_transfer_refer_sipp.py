"""REFERs softswitch must refuse, from SIPp (cases a softphone never sends): no Refer-To or two
(400, RFC 3515 2.4.1), a trunk caller's (403: only agent phones transfer), an extension's call
bridged to nobody (403), a dialog that does not exist (481). The call lives on (its BYE gets 200)
and the server keeps taking calls."""

from __future__ import annotations

import pytest

from tests.support.interop import demo_server
from tests.support.server import REPO, ServerProcess, write_test_config
from tests.support.sipp import run_sipp

pytestmark = [pytest.mark.sipp]


def test_malformed_and_unroutable_refers_get_their_sip_answers_and_the_call_lives_on(tmp_path):
    with demo_server(tmp_path) as server:
        result = run_sipp("uac_bad_refer.xml", f"127.0.0.1:{server.sip_port}", service="100", calls=1,
                          variables={"caller": "5551234"}, timeout_s=15)
        assert result.ok, str(result)
        again = run_sipp("uac_bad_refer.xml", f"127.0.0.1:{server.sip_port}", service="100", calls=1,
                         variables={"caller": "5551234"}, timeout_s=15)
        assert again.ok, str(again)  # the process is up and answers the same way
        assert "Traceback" not in "".join(server.output)


def test_a_refer_from_an_extension_call_bridged_to_nobody_gets_403(tmp_path):
    config = write_test_config(tmp_path, flows=[str(REPO / "tests" / "fixtures" / "transfer" / "flow.yaml")],
                               trunks={"trunk_main": {"address": "127.0.0.77", "port": 0}})
    server = ServerProcess(config).start()
    try:
        # 555 is the test flow's announcement: answered, bridged to nobody.
        result = run_sipp("uac_refer_unbridged.xml", f"127.0.0.1:{server.sip_port}", service="555", calls=1,
                          variables={"caller": "1002"}, auth=("1002", "pass1002"), timeout_s=15)
        assert result.ok, str(result)
        assert "Traceback" not in "".join(server.output)
    finally:
        server.stop()
        (tmp_path / "server.log").write_text("".join(server.output))
