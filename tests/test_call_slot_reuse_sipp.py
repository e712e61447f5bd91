"""pjsua hands a freed call slot to the next call at once; the pjsua2 object of an ended call
must not reach into that slot whenever Python lets it go (it used to decline or hang up the new
call and leave its leg without an end)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sipp

REPO = Path(__file__).resolve().parents[1]


def test_ended_call_object_released_late_leaves_the_next_call_in_its_slot_alone(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "tests.support.slot_reuse_probe", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in report, report
    # The third call was given the first call's slot (the premise of the test).
    assert report["slots"][2] == report["slots"][0], report
    # Dropping the first call's object did not touch it: the caller's own BYE ended it.
    assert report["third_sipp_ok"], report["third_sipp"]
    assert report["ended"]["2"] == ["remote_hangup", 200], report
    assert report["ended"]["0"] == ["remote_hangup", 200], report
