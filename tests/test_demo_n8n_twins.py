"""The demo flows' n8n twins: each exported workflow in tests/fixtures/n8n/ imports to exactly
the flow its YAML file in flows/ describes, and every demo flow passes `softswitch check`."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from softswitch.flow.loader import load_flow, load_flow_text
from softswitch.flow.n8n import import_workflow, import_workflow_file
from tests.support.server import write_test_config

REPO = Path(__file__).resolve().parent.parent
FLOWS = REPO / "flows"
TWINS = Path(__file__).parent / "fixtures" / "n8n"
DEMOS = ("part-1-step-1-trunk-to-queue-basic", "part-1-step-2-trunk-to-queue-with-ai-offline",
         "part-3-step-4-routing-queue-ai-recording-tools-callback")
ASSEMBLED = DEMOS[2]

N8N_NODE_TYPES = {"n8n-nodes-sip-pbx.sipPbx", "n8n-nodes-sip-pbx.sipPbxTrigger", "n8n-nodes-base.if",
                  "n8n-nodes-base.noOp", "n8n-nodes-base.stickyNote"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def twin(stem: str) -> Path:
    return TWINS / f"{stem}.json"


def softswitch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softswitch", *args], capture_output=True, text=True, timeout=120)


def assert_same_flow(imported, written) -> None:
    """Step by step first, so a difference names the node, then the whole flow."""
    assert [s.name for s in imported] == [s.name for s in written]
    for mine, theirs in zip(imported, written):
        assert mine == theirs, mine.name
    assert imported == written


@pytest.mark.parametrize("stem", DEMOS)
def test_every_demo_twin_imports_to_its_yaml_flow(stem: str):
    imported = load_flow_text(import_workflow_file(twin(stem)), f"<{stem}.json>")
    assert_same_flow(imported, load_flow(FLOWS / f"{stem}.yaml"))


def test_full_demo_is_the_assembled_demo_and_matches_its_twin():
    assert (FLOWS / "full-demo.yaml").resolve() == (FLOWS / f"{ASSEMBLED}.yaml").resolve()
    imported = load_flow_text(import_workflow_file(twin(ASSEMBLED)))
    assert_same_flow(imported, load_flow(FLOWS / "full-demo.yaml"))


def test_the_cli_imports_the_assembled_demo_twin(tmp_path: Path):
    out = tmp_path / "imported.yaml"
    result = softswitch("import-n8n", str(twin(ASSEMBLED)), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert_same_flow(load_flow(out), load_flow(FLOWS / f"{ASSEMBLED}.yaml"))


def test_output_indexes_decide_the_branches_so_a_swapped_output_is_a_different_flow():
    # wait_customer has Additional Outputs ringing + rejected: [Ringing, Rejected, Answered, Interrupted, …];
    # swapping Rejected and Answered must not import to the same flow.
    data = json.loads(twin(ASSEMBLED).read_text())
    outputs = data["connections"]["wait_customer"]["main"]
    assert [t[0]["node"] for t in outputs[1:3]] == ["break_customer", "bridge_customer"]
    swapped = copy.deepcopy(data)
    main = swapped["connections"]["wait_customer"]["main"]
    main[1], main[2] = main[2], main[1]
    flow = load_flow_text(import_workflow(swapped))
    assert flow.node("wait_customer").next["Answered"] == ("break_customer",)
    assert flow != load_flow(FLOWS / f"{ASSEMBLED}.yaml")


@pytest.mark.parametrize("stem", DEMOS)
def test_the_twins_are_shaped_like_n8n_exports(stem: str):
    data = json.loads(twin(stem).read_text())
    assert data["name"] == stem
    assert data["settings"] == {"executionOrder": "v1"} and data["active"] is False
    ids = [n["id"] for n in data["nodes"]]
    names = [n["name"] for n in data["nodes"]]
    assert len(set(ids)) == len(ids) and len(set(names)) == len(names)
    assert any(n["type"] == "n8n-nodes-base.stickyNote" for n in data["nodes"])
    for node in data["nodes"]:
        assert UUID.fullmatch(node["id"]), node["name"]
        assert node["type"] in N8N_NODE_TYPES, node["name"]
        x, y = node["position"]
        assert isinstance(x, int) and isinstance(y, int), node["name"]
        params = node["parameters"]
        if node["type"] == "n8n-nodes-sip-pbx.sipPbx":
            # the resource selector goes with the operation's prefix (call.wait → call)
            assert params["resource"] == params["operation"].split(".")[0], node["name"]
        if node["type"] == "n8n-nodes-sip-pbx.sipPbxTrigger":
            assert params["triggerOn"] in ("trunk", "extensions", "queue", "aiTool"), node["name"]
        for key, value in params.items():
            if key == "content":
                continue
            text = json.dumps(value)
            if "{{" in text:  # n8n marks expressions with a leading "="
                for found in re.findall(r'"([^"]*\{\{[^"]*)"', text):
                    assert found.startswith("="), (node["name"], key, found)
            if key in ("rules", "aiToolParams", "aiFlowParams"):  # fixedCollections
                assert set(value) == {"item"}, (node["name"], key)
    for source, by_type in data["connections"].items():
        assert source in names
        for conn_type, outputs in by_type.items():
            for targets in outputs:
                for target in targets:
                    assert target == {"node": target["node"], "type": conn_type, "index": 0}
                    assert target["node"] in names


@pytest.mark.parametrize("flow_file", [*(f"{stem}.yaml" for stem in DEMOS), "full-demo.yaml"])
def test_softswitch_check_accepts_a_config_with_the_demo_flow(tmp_path: Path, flow_file: str):
    cfg = write_test_config(tmp_path, flows=[str(FLOWS / flow_file)])
    result = softswitch("check", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "OK (1 flow files)" in result.stdout


def test_softswitch_check_accepts_the_imported_twins(tmp_path: Path):
    # Each import in its own directory (the demos share the extensions ref `internal`, which must be
    # unique across the flows of one config), then one check per imported flow.
    for stem in DEMOS:
        out = tmp_path / stem / f"{stem}.yaml"
        out.parent.mkdir()
        out.write_text(import_workflow_file(twin(stem)))
        cfg = write_test_config(out.parent, flows=[str(out)])
        result = softswitch("check", "--config", str(cfg))
        assert result.returncode == 0, (stem, result.stderr)
