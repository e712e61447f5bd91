"""REFER parsing and transfer outcomes as tables (no SIP): what softswitch reads from a Refer-To
and which sipfrag status a failed transfer dial reports."""

from __future__ import annotations

import pytest

from softswitch.flow.transfer import _failure_code
from softswitch.sip.events import Replaces
from softswitch.sip.transfer import parse_refer_to, reason_phrase

REFER_TO = [
    # (Refer-To value, URI, user part, Replaces)
    ("<sip:1003@127.0.0.1:5060>", "sip:1003@127.0.0.1:5060", "1003", None),
    ("sip:1003@127.0.0.1", "sip:1003@127.0.0.1", "1003", None),
    ('"Bob" <sip:0301234567@pbx.example;transport=udp>', "sip:0301234567@pbx.example;transport=udp",
     "0301234567", None),
    ("<tel:+4930123456>", "tel:+4930123456", "+4930123456", None),
    ("<sip:%2B4930123@h>", "sip:%2B4930123@h", "+4930123", None),
    # liblinphone's attended transfer: Replaces escaped in the URI's headers
    ("<sip:1003@127.0.0.1?Replaces=abc%40host%3Bto-tag%3DT1%3Bfrom-tag%3DF1>", "sip:1003@127.0.0.1", "1003",
     Replaces("abc@host", "T1", "F1")),
    ("<sip:1003@h?X-Foo=1&Replaces=cid%3Bfrom-tag%3Da%3Bto-tag%3Db>", "sip:1003@h", "1003", Replaces("cid", "b", "a")),
    ("<sip:h>", "sip:h", "", None),  # no user part: a host only (no target softswitch can route)
    ("", "", "", None),
]


@pytest.mark.parametrize("value,uri,user,replaces", REFER_TO)
def test_refer_to_parsing(value, uri, user, replaces):
    assert parse_refer_to(value) == (uri, user, replaces)


FAILURES = [
    ("sip_486", 486), ("sip_603", 603), ("sip_404", 404), ("sip_200", 480), ("sip_x", 480),
    ("timeout", 408), ("caller_hung_up", 487), ("parallel_loser", 480), ("failed", 480),
]


@pytest.mark.parametrize("reason,code", FAILURES)
def test_a_failed_transfer_dial_reports_the_targets_code_or_what_its_failure_means(reason, code):
    assert _failure_code(reason) == code


def test_sipfrag_reason_phrases():
    assert [reason_phrase(c) for c in (100, 180, 200, 404, 481, 487)] == [
        "Trying", "Ringing", "OK", "Not Found", "Call/Transaction Does Not Exist", "Request Terminated"]
