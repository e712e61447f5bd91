"""Static checks of the SIPp scenarios in tests/sipp/ (no SIPp needed)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support.sipp import SCENARIO_DIR, scenario_requirements

SCENARIOS = sorted(SCENARIO_DIR.glob("*.xml"))


def test_all_expected_scenarios_exist() -> None:
    names = {p.stem for p in SCENARIOS}
    assert {
        "uac_call_pcap",
        "uac_call_until_bye",
        "uac_expect_failure",
        "uas_answer_pcap",
        "uas_answer_then_bye",
        "uas_no_answer",
        "uas_reject",
        "register_uac",
        "uas_registrar_challenge",
    } <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_is_wellformed_and_documented(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag == "scenario" and root.get("name") == path.stem
    text = path.read_text(encoding="latin-1")
    header = re.search(r"<!--(.*?)-->", text, re.S)
    assert header and path.name in header.group(1), "the first comment says what the scenario is for"
    declared, keys = scenario_requirements(path)
    for name in declared:  # every -set variable is documented and used
        assert f"-set {name}" in header.group(1)
        assert f"[${name}]" in text or f'variable="{name}"' in text
    for key in keys:
        assert f"-key {key}" in header.group(1)
