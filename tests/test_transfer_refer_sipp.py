"""REFERs softswitch must refuse, from SIPp (cases a softphone never sends): no Refer-To or two
(400, RFC 3515 2.4.1), a leg bridged to nobody (403), a dialog that does not exist (481). The call
lives on (its BYE gets 200) and the server keeps taking calls."""

from __future__ import annotations

import pytest

from tests.support.interop import demo_server
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
