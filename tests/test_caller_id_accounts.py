"""Caller-ID accounts (the From of an outbound leg comes from a pjsua account) on a real
endpoint: evicting one must delete that account and no other, however long Python keeps the
evicted object."""

from __future__ import annotations

import gc

import pytest

pytestmark = pytest.mark.native


def test_evicted_caller_id_account_dropped_late_leaves_the_account_given_its_id_alone(ua):
    from softswitch.sip.dialer import _CallerIdAccounts
    from softswitch.sip.trunks import account_config

    def scenario() -> dict:
        accounts = _CallerIdAccounts(ua, capacity=1)
        first = accounts.get(("", "5550001", ""), lambda: account_config(ua, id_uri="sip:5550001@127.0.0.1"))
        first_id = first.getId()
        # A second caller ID evicts the first (no live leg), and pjsua gives the new account
        # the lowest free id: the one just freed.
        second = accounts.get(("", "5550002", ""), lambda: account_config(ua, id_uri="sip:5550002@127.0.0.1"))
        report = {"first_id": first_id, "second_id": second.getId()}
        del first  # the last reference to the evicted account goes, as a lingering one would
        gc.collect()
        report["second_valid"] = second.isValid()
        report["second_uri"] = second.getInfo().uri if second.isValid() else None
        accounts.shutdown()
        return report

    report = ua.run_sync(scenario)
    assert report["second_id"] == report["first_id"], report  # the premise: the id was reused
    assert report["second_valid"], report
    assert report["second_uri"] == "sip:5550002@127.0.0.1", report
