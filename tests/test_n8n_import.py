"""`softswitch import-n8n`: an exported n8n workflow becomes the flow its YAML twin describes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from softswitch import cli
from softswitch.flow.loader import load_flow, load_flow_text
from softswitch.flow.n8n import N8nImportError, import_workflow, import_workflow_file

FIXTURES = Path(__file__).parent / "fixtures"
WORKFLOW = FIXTURES / "n8n" / "ivr-dial-media-core.json"
TWIN = FIXTURES / "flows" / "ivr-dial-media-core.yaml"


def workflow() -> dict:
    return json.loads(WORKFLOW.read_text())


def node(data: dict, name: str) -> dict:
    return next(n for n in data["nodes"] if n["name"] == name)


def test_the_imported_workflow_equals_its_hand_written_twin():
    imported = load_flow_text(import_workflow_file(WORKFLOW), "<imported>")
    twin = load_flow(TWIN)
    assert [s.name for s in imported] == [s.name for s in twin]
    for mine, theirs in zip(imported, twin):
        assert mine == theirs, mine.name
    assert imported == twin


def test_output_indexes_become_branch_names_in_reference_order():
    flow = load_flow_text(import_workflow(workflow()))
    # call.wait outputs: 3 rules, DTMF Fallback, Interrupted, Timeout, Ended; index 5 is Timeout
    assert flow.node("menu").next["Timeout"] == ("is_timeout",)
    assert flow.node("menu").next["Interrupted"] == ()
    # dial.wait with Additional Outputs [ringing]: index 0 Ringing, 1 Answered, 2 Interrupted …
    assert flow.node("wait_agent").next["Ringing"] == ("ringback",)
    assert flow.node("wait_agent").next["Answered"] == ("stop_ringback",)
    # Switch: output 0 renamed "sales", output 1 unnamed ("1"), output 2 the extra fallback
    assert flow.node("route").branches == ("sales", "1", "Fallback")
    assert flow.node("route").next["Fallback"] == ("give_up",)
    assert flow.node("is_timeout").next["true"] == ("busy_tone",)
    # ai_tool connections become tools of the attach node
    assert flow.node("attach").tools == ("lookup_order", "transfer_to_agent")


def test_the_written_yaml_reads_back_to_the_same_model():
    text = import_workflow(workflow())
    assert text.startswith("name: IVR with agents and an assistant\ntriggers:\n")
    assert 'legAId: "{{ $(\'answer\').item.json.legId }}"' in text  # the n8n "=" prefix is gone
    first = load_flow_text(text)
    again = load_flow_text(import_workflow(workflow()))
    assert first == again == load_flow(TWIN)


def test_an_unsupported_node_is_a_clear_error():
    data = workflow()
    data["nodes"].append({"parameters": {"jsCode": "return items"}, "name": "Custom code",
                          "type": "n8n-nodes-base.code", "typeVersion": 2, "position": [0, 0]})
    data["connections"]["give_up"] = {"main": [[{"node": "Custom code", "type": "main", "index": 0}]]}
    with pytest.raises(N8nImportError) as caught:
        import_workflow(data)
    [problem] = caught.value.problems
    assert problem.startswith("node Custom code: node type 'n8n-nodes-base.code' is not supported")


def test_an_unsupported_expression_is_a_clear_error_naming_node_and_parameter():
    data = workflow()
    node(data, "bridge")["parameters"]["legBId"] = "={{ $('wait_agent').item.json.legId.toUpperCase() }}"
    node(data, "dial_agents")["parameters"]["options"]["callerNumber"] = "={{ $env.CALLER_ID }}"
    with pytest.raises(N8nImportError) as caught:
        import_workflow(data)
    assert caught.value.problems == [
        "node dial_agents: parameter options.callerNumber: $env is not available to flows (environment variables "
        "stay out of expressions) in '{{ $env.CALLER_ID }}'",
        "node bridge: parameter legBId: method calls are not supported (.toUpperCase()); only String() and Number() "
        "in \"{{ $('wait_agent').item.json.legId.toUpperCase() }}\"",
    ]


@pytest.mark.parametrize("change, message", [
    (lambda d: node(d, "is_timeout")["parameters"]["conditions"]["conditions"][0]["operator"].update(
        operation="regex"), "node is_timeout: condition operator string/regex is not supported"),
    (lambda d: node(d, "answer")["parameters"].update(operation="call.pickUp"),
     "node answer: SIP PBX operation 'call.pickUp' is not supported"),
    (lambda d: node(d, "Trunk")["parameters"].update(triggerOn="webhook"),
     "node Trunk: SIP PBX Trigger event 'webhook' is not supported"),
    (lambda d: d["connections"]["hangup"].update() if "hangup" in d["connections"] else
     d["connections"].update(hangup={"main": [[{"node": "answer", "type": "main", "index": 0}],
                                              [{"node": "answer", "type": "main", "index": 0}]]}),
     "node hangup: output 1 is connected, but with these parameters the node has 1 outputs (Result)"),
    (lambda d: node(d, "is_timeout").update(typeVersion=1), "node is_timeout: IF node version 1 is not supported"),
    (lambda d: node(d, "route")["parameters"]["options"].update(fallbackOutput="={{ 1 }}"),
     "node route: parameter fallbackOutput decides this node's branches"),
    (lambda d: node(d, "hangup").update(disabled=True), "node hangup: disabled nodes are not supported"),
])
def test_other_unsupported_input_names_the_node(change, message):
    data = copy.deepcopy(workflow())
    change(data)
    with pytest.raises(N8nImportError) as caught:
        import_workflow(data)
    assert any(problem.startswith(message) for problem in caught.value.problems), caught.value.problems


def test_direct_dial_takes_its_connection_from_the_credential_and_sticky_notes_are_skipped():
    data = workflow()
    params = node(data, "dial_agents")["parameters"]
    params.update(callMode="direct", destination="1000")
    del params["extensionNumbers"]
    node(data, "dial_agents")["credentials"] = {"sipPbxExternal": {"id": "9", "name": "my_provider"}}
    data["connections"]["dial_agents"]["main"] = data["connections"]["dial_agents"]["main"][:1]
    flow = load_flow_text(import_workflow(data))
    assert flow.node("dial_agents").params["connection"] == "my_provider"
    assert flow.node("dial_agents").branches == ("Result",)
    assert "Note" not in {s.name for s in flow}


def test_cli_import_n8n(tmp_path: Path, capsys):
    out = tmp_path / "flow.yaml"
    assert cli.main(["import-n8n", str(WORKFLOW), "-o", str(out)]) == 0
    assert load_flow(out) == load_flow(TWIN)
    assert cli.main(["import-n8n", str(WORKFLOW)]) == 0
    assert capsys.readouterr().out == out.read_text()

    broken = tmp_path / "broken.json"
    data = workflow()
    node(data, "answer")["type"] = "n8n-nodes-base.httpRequest"
    broken.write_text(json.dumps(data))
    assert cli.main(["import-n8n", str(broken)]) == cli.EXIT_CONFIG
    assert "node answer: node type 'n8n-nodes-base.httpRequest' is not supported" in capsys.readouterr().err
