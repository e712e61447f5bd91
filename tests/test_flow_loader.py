"""The flow loader: the model it builds, and every error it reports with its line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from softswitch import cli
from softswitch.flow.expressions import Context, Expression, resolve
from softswitch.flow.loader import FlowError, load_flow, load_flow_text, load_flows
from softswitch.flow.model import Node, Trigger

FIXTURES = Path(__file__).parent / "fixtures" / "flows"

VALID = """\
name: part-1-step-1-trunk-to-queue-basic
triggers:
  - name: trunk_main
    trigger: trunk            # trunk | extensions | queue | aiTool
    params: {ref: trunk_main}
    next: {Call: [answer]}
  - name: queue_support
    trigger: queue
    params: {ref: queue_support, queueExtensions: "1001,1002"}
    next: {Dispatch: wait_agent}
nodes:
  - name: answer
    op: call.answer
    params: {}
    next: {Result: [play_menu]}
  - name: play_menu
    op: media.playAudio
    params: {sourceType: file, filePath: prompts/menu.wav, interruptOn: [dtmf]}
    next: {Interrupted: menu, Completed: menu}
  - name: menu
    op: call.wait
    params:
      timeoutSeconds: 10
      rules: [{pattern: "1", label: Support}, {pattern: "2", label: Sales}]
      options: {interruptReasons: [call_queue_removed]}
    next: {Support: [put_support], Sales: [put_support], Timeout: [play_menu]}
  - name: put_support
    op: queue.putLeg
    params: {ref: queue_support}
  - name: wait_agent
    op: dial.wait
    params: {legId: "{{ $('answer').item.json.legId }}"}
    next: {Answered: bridge_agent}
  - name: bridge_agent
    op: call.bridge
    params: {legAId: "{{ $json.legId }}", legBId: "{{ $('wait_agent').item.json.legId }}"}
"""


def load(text: str) -> object:
    return load_flow_text(textwrap.dedent(text), "flow.yaml")


def issues_of(text: str) -> list:
    with pytest.raises(FlowError) as caught:
        load(text)
    return caught.value.issues


def line_of(text: str, marker: str = "#!") -> int:
    lines = textwrap.dedent(text).splitlines()
    return next(i + 1 for i, line in enumerate(lines) if marker in line)


def test_a_valid_flow_loads_with_defaults_branches_and_next_resolved():
    flow = load(VALID)
    assert flow.name == "part-1-step-1-trunk-to-queue-basic"
    assert [t.name for t in flow.triggers] == ["trunk_main", "queue_support"]
    assert [n.name for n in flow.nodes] == ["answer", "play_menu", "menu", "put_support", "wait_agent", "bridge_agent"]

    menu = flow.node("menu")
    assert isinstance(menu, Node) and menu.op == "call.wait"
    assert menu.branches == ("Support", "Sales", "Interrupted", "Timeout", "Ended")
    assert dict(menu.next) == {"Support": ("put_support",), "Sales": ("put_support",), "Interrupted": (),
                               "Timeout": ("play_menu",), "Ended": ()}
    assert menu.params["timeoutSeconds"] == 10
    assert menu.params["dtmfTerminatorDigit"] == "#"  # default filled in
    assert menu.params["rules"][1]["label"] == "Sales"
    assert menu.options["interruptReasons"] == ("call_queue_removed",)
    assert menu.options["interdigitTimeoutSeconds"] == 1  # option default filled in
    assert menu.get("clearDtmfBuffer") is False and menu.get("timeoutSeconds") == 10
    assert menu.line == 20

    play = flow.node("play_menu")
    assert play.branches == ("Interrupted", "Completed")
    assert play.options["mediaExecutionMode"] == "blocking"
    assert "binaryProperty" not in play.params  # applies only to sourceType binary
    assert "voiceThreshold" not in play.options  # applies only with interruptOn voice

    trunk = flow.triggers_of("trunk")[0]
    assert isinstance(trunk, Trigger) and trunk.ref == "trunk_main" and trunk.branches == ("Call",)
    assert trunk.params["trunkConnectionMode"] == "fixed"
    assert flow.trigger("queue", "queue_support").next["Dispatch"] == ("wait_agent",)
    assert flow.trigger("queue", "nope") is None
    assert [n.name for n in flow.next_nodes("trunk_main", "Call")] == ["answer"]
    assert flow.refs("queue") == {"queue_support"}

    bridge = flow.node("bridge_agent")
    assert isinstance(bridge.params["legBId"], Expression)
    ctx = Context({"legId": "leg_a"}, {"wait_agent": {"legId": "leg_b"}})
    assert resolve(bridge.params, ctx) == {"legAId": "leg_a", "legBId": "leg_b"}


def test_equal_flows_compare_equal_whatever_their_layout():
    compact = load(VALID)
    spread = load(VALID.replace("params: {ref: queue_support}", "params:\n      ref: queue_support\n"
                                                                 "      options: {queuePlacement: back}"))
    assert compact == spread  # queuePlacement: back is the default
    assert compact != load(VALID.replace("timeoutSeconds: 10", "timeoutSeconds: 11"))


def test_ai_tools_are_wired_with_tools_and_count_as_reachable():
    flow = load("""\
        triggers:
          - {name: t, trigger: trunk, params: {ref: trunk_main}, next: {Call: dial_ai}}
          - {name: tools, trigger: aiTool, params: {ref: ai_tools}, next: {Request: reply}}
        nodes:
          - name: dial_ai
            op: dial.make
            params: {callMode: websocket, transportProfile: gemini_live, websocketStartMode: deferred}
            next: {Result: attach}
          - name: attach
            op: ai.attachVoiceAgent
            tools: [lookup_order]
          - name: lookup_order
            op: ai.invokeAiTool
            params: {ref: ai_tools, aiToolDescription: Look up an order,
                     aiToolParams: [{name: orderId, description: the order number}]}
          - name: reply
            op: respond.toAiTool
            params: {outputText: "Order {{ $json.toolParams.orderId }} ships tomorrow."}
        """)
    assert flow.name == "flow"  # no name: the file's stem
    assert flow.node("attach").tools == ("lookup_order",)
    assert [n.name for n in flow.tools_of("attach")] == ["lookup_order"]
    tool = flow.node("lookup_order")
    assert tool.branches == () and dict(tool.next) == {}
    assert tool.params["aiToolParams"][0]["type"] == "string" and tool.params["aiToolParams"][0]["required"] is False
    assert flow.node("dial_ai").options["geminiLiveVoice"] == "Puck"


@pytest.mark.parametrize("text, node, message", [
    # unknown op, with a suggestion
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: a}}]
     nodes:
       - name: a
         op: call.answr   #!
     """, "a", "unknown op 'call.answr' (did you mean 'call.answer'?)"),
    ("""\
     triggers:
       - name: t
         trigger: trunkk   #!
         params: {ref: r}
     """, "t", "unknown trigger kind 'trunkk'"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: a}}]
     nodes:
       - name: a
         op: trunk   #!
     """, "a", "'trunk' is a trigger kind"),
    # unknown parameter, with a did-you-mean
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: w}}]
     nodes:
       - name: w
         op: call.wait
         params:
           timeoutSecond: 5   #!
     """, "w", "unknown parameter 'timeoutSecond' for call.wait (did you mean 'timeoutSeconds'?)"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: w}}]
     nodes:
       - name: w
         op: call.wait
         params:
           interruptReasons: [call_queue_removed]   #!
     """, "w", "'interruptReasons' is an option of call.wait: put it under options:"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: w}}]
     nodes:
       - name: w
         op: call.wait
         params:
           options:
             timeoutSeconds: 5   #!
     """, "w", "'timeoutSeconds' is not an option"),
    # wrong type
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: w}}]
     nodes:
       - name: w
         op: call.wait
         params:
           timeoutSeconds: ten   #!
     """, "w", "parameter timeoutSeconds: expected a number, got the string 'ten'"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: d}}]
     nodes:
       - name: d
         op: media.sendDtmf
         params:
           dtmfDigits: 123   #!
     """, "d", "expected a string, got the number 123 (quote it: \"123\")"),
    # bad enum value
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: b}}]
     nodes:
       - name: b
         op: call.bridge
         params:
           legAId: x
           legBId: y
           options: {relayDtmf: rfc2883}   #!
     """, "b", "parameter options.relayDtmf: 'rfc2883' is not one of disabled, auto, rfc2833, info, inband "
               "(did you mean 'rfc2833'?)"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: p}}]
     nodes:
       - name: p
         op: media.playAudio
         params:
           interruptOn: [dtmf, silence]   #!
     """, "p", "parameter interruptOn[1]: 'silence' is not one of dtmf, voice"),
    # missing required parameters (reported at params:)
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: b}}]
     nodes:
       - name: b
         op: call.bridge
         params:   #!
           legAId: x
     """, "b", "missing required parameter legBId"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: p}}]
     nodes:
       - name: p
         op: media.playAudio
         params: {sourceType: file}   #!
     """, "p", "missing required parameter filePath (required when sourceType is file)"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: p}}]
     nodes:
       - name: p
         op: media.playAudio
         params:
           filePath: prompts/x.wav   #!
     """, "p", "parameter 'filePath' applies only when sourceType is file"),
    ("""\
     triggers:
       - name: t
         trigger: trunk
         params: {}   #!
     """, "t", "missing required parameter ref"),
    # branch names the node does not have
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: w}}]
     nodes:
       - name: w
         op: call.wait
         params: {rules: [{pattern: "1", label: Support}]}
         next:
           Sales: [w]   #!
     """, "w", "unknown branch 'Sales'; this node's branches are Support, Timeout, Ended"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: w}}]
     nodes:
       - name: w
         op: call.wait
         next:
           Interrupted: w   #!
     """, "w", "Interrupted exists only when options.interruptReasons is not empty"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: p}}]
     nodes:
       - name: p
         op: media.playTone
         params: {options: {mediaExecutionMode: background}}
         next:
           Completed: p   #!
     """, "p", "unknown branch 'Completed'; this node's branches are Result"),
    # dangling and duplicate names, unreachable nodes
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: a}}]
     nodes:
       - name: a
         op: call.answer
         next: {Result: [hangup]}   #!
     """, "a", "next Result: no node named 'hangup'"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: a}}]
     nodes:
       - name: a
         op: call.answer
       - name: a   #!
         op: call.hangup
     """, "a", "duplicate name 'a' (first on line 3)"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: a}}]
     nodes:
       - name: a
         op: call.answer
       - name: orphan   #!
         op: call.hangup
     """, "orphan", "not reachable from any trigger"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: a}}]
     nodes:
       - name: a
         op: call.answer
         next: {Result: t}   #!
     """, "a", "'t' is a trigger"),
    # expressions
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: b}}]
     nodes:
       - name: b
         op: call.bridge
         params:
           legAId: "{{ $json.legId }}"
           legBId: "{{ $env.AGENT_LEG }}"   #!
     """, "b", "parameter legBId: $env is not available to flows"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: h}}]
     nodes:
       - name: h
         op: call.hangup
         params:
           options: {legId: "{{ $json.legId.trim() }}"}   #!
     """, "h", "parameter options.legId: method calls are not supported (.trim())"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: h}}]
     nodes:
       - name: h
         op: call.hangup
         params:
           options: {legId: "{{ $('anwser').item.json.legId }}"}   #!
     """, "h", "parameter options.legId: $('anwser') names no node in this flow"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: p}}]
     nodes:
       - name: p
         op: media.playAudio
         params:
           options: {mediaExecutionMode: "{{ $json.mode }}"}   #!
     """, "p", "decides this node's branches, so it must be written as a literal value"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: w}}]
     nodes:
       - name: w
         op: call.wait
         params:
           rules:
             - {pattern: "1", label: "{{ $json.department }}"}   #!
     """, "w", "parameter rules[0].label decides this node's branches, so it must be written as a literal"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: p}}]
     nodes:
       - name: p
         op: media.playAudio
         params:
           sourceType: files   #!
           filePath: prompts/x.wav
     """, "p", "'files' is not one of binary, file, http (did you mean 'file'?)"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: s}}]
     nodes:
       - name: s
         op: core.switch
         params:
           rules: [{outputKey: a}]
           fallbackOutput: 1   #!
     """, "s", "parameter fallbackOutput: there is no rule 1"),
    # DTMF rules and terminator
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: w}}]
     nodes:
       - name: w
         op: call.wait
         params:
           rules:
             - {pattern: "1x", label: One}   #!
     """, "w", "parameter rules[0].pattern: '1x' is not valid: DTMF digits 0-9 * # A-D"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: w}}]
     nodes:
       - name: w
         op: call.wait
         params:
           rules:
             - {pattern: "1", label: Support}
             - {pattern: "2", label: Support}   #!
     """, "w", "duplicate label 'Support' in rules (first on line 7)"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: w}}]
     nodes:
       - name: w
         op: call.wait
         params:
           rules:
             - {label: Support}   #!
     """, "w", "parameter rules[0]: missing required field 'pattern'"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: w}}]
     nodes:
       - name: w
         op: call.wait
         params:
           dtmfTerminatorDigit: "##"   #!
     """, "w", "'##' is not valid: exactly one DTMF digit"),
    # tools
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: a}}]
     nodes:
       - name: a
         op: call.answer
         tools: [a]   #!
     """, "a", "tools: only ai.attachVoiceAgent nodes take tools"),
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: a}}]
     nodes:
       - name: a
         op: ai.attachVoiceAgent
         tools: [h]   #!
         next: {Result: h}
       - name: h
         op: call.hangup
     """, "a", "tools: 'h' is not an ai.invokeAiTool node"),
    # refs resolved among the flow's own triggers
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: trunk_main}, next: {Call: d}}]
     nodes:
       - name: d
         op: dial.make
         params:
           callMode: trunk
           ref: trunk_mian   #!
           destination: "100"
     """, "d", "no trunk trigger with ref 'trunk_mian' in this flow (its trunk refs: trunk_main)"),
    ("""\
     triggers:
       - {name: t1, trigger: trunk, params: {ref: main}}
       - name: t2
         trigger: trunk
         params: {ref: main}   #!
     """, "t2", "trunk ref 'main' is already used by trigger 't1'"),
    # core nodes
    ("""\
     triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: i}}]
     nodes:
       - name: i
         op: core.if
         params:   #!
           conditions: [{left: "{{ $json.n }}", operator: gt, right: 3, type: string}]
     """, "i", "operator 'gt' does not apply to type string"),
])
def test_errors_name_the_node_and_the_line(text, node, message):
    issues = issues_of(text)
    assert len(issues) == 1, "\n".join(map(str, issues))
    issue = issues[0]
    assert (issue.file, issue.line, issue.node) == ("flow.yaml", line_of(text), node)
    assert message in issue.message
    assert str(issue).startswith(f"flow.yaml:{line_of(text)}: node {node}: ")


def test_core_if_branches_may_be_written_as_plain_yaml_booleans():
    flow = load("""\
        triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: is_live}}]
        nodes:
          - name: is_live
            op: core.if
            params:
              conditions: [{left: "{{ $json.legId }}", operator: exists}]
            next: {true: play, false: hang}
          - {name: play, op: media.playAudio, params: {sourceType: file, filePath: prompts/offline.wav}}
          - {name: hang, op: call.hangup}
        """)
    node = flow.node("is_live")
    assert dict(node.next) == {"true": ("play",), "false": ("hang",)}
    assert node.params["conditions"][0]["type"] == "any" and node.params["combinator"] == "and"


def test_every_error_is_collected():
    issues = issues_of("""\
        triggers: [{name: t, trigger: trunk, params: {ref: r}, next: {Call: w}}]
        nodes:
          - name: w
            op: call.wait
            params:
              timeoutSeconds: "30"
              rules: [{pattern: "1", label: A}, {pattern: "1#", label: A}]
            next: {B: w, Timeout: nowhere}
          - name: x
            op: call.hangupp
        """)
    messages = [(i.line, i.message) for i in issues]
    assert [line for line, _ in messages] == [6, 7, 8, 8, 9, 10]
    assert "expected a number" in messages[0][1]
    assert "duplicate label 'A'" in messages[1][1]
    assert "unknown branch 'B'" in messages[2][1] or "unknown branch 'B'" in messages[3][1]
    assert any("no node named 'nowhere'" in m for _, m in messages)
    assert any("not reachable" in m for _, m in messages)
    assert "unknown op 'call.hangupp'" in messages[5][1]


def test_flow_level_errors():
    assert "a flow needs at least one trigger" in issues_of("nodes: []\n")[0].message
    syntax = issues_of("name: x\ntriggers: [\n")
    assert syntax[0].line is not None and "YAML syntax error" in syntax[0].message
    unknown = [i for i in issues_of("name: x\ntrigers: []\n") if i.line == 2]
    assert "did you mean 'triggers'" in unknown[0].message


def test_load_flow_reads_files_and_load_flows_checks_them_together(tmp_path: Path):
    a = tmp_path / "a.yaml"
    a.write_text("name: a\ntriggers:\n  - {name: ext, trigger: extensions, params: {ref: internal}}\n")
    b = tmp_path / "b.yaml"
    b.write_text("name: b\ntriggers:\n  - {name: ext, trigger: extensions, params: {ref: internal}}\n")
    c = tmp_path / "c.yaml"
    c.write_text("name: a\ntriggers:\n  - {name: ext, trigger: extensions, params: {ref: agents}}\n")
    assert load_flow(a).file == str(a)
    with pytest.raises(FlowError) as caught:
        load_flows([a, b, c])
    second, first = caught.value.issues
    assert second.file == str(b) and second.line == 3 and "extensions ref 'internal' is also used in" in second.message
    assert first.file == str(c) and "flow name 'a' is also used by" in first.message
    assert [f.name for f in load_flows([c, FIXTURES / "ivr-dial-media-core.yaml"])] == [
        "a", "IVR with agents and an assistant"]
    with pytest.raises(FlowError) as missing:
        load_flow(tmp_path / "none.yaml")
    assert "cannot read flow file" in missing.value.issues[0].message


def test_check_validates_every_flow_in_the_config(tmp_path: Path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(VALID)
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("op: call.answer", "op: call.anser").replace("Sales: [put_support]", "Sale: [x]"))
    config = tmp_path / "softswitch.yaml"
    config.write_text("flows: [good.yaml]\n")
    assert cli.main(["check", "--config", str(config)]) == 0
    assert "OK (1 flow files)" in capsys.readouterr().out

    config.write_text("flows: [good.yaml, bad.yaml]\n")
    assert cli.main(["check", "--config", str(config)]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err.splitlines()
    assert f"{bad}:13: node answer: unknown op 'call.anser' (did you mean 'call.answer'?)" in err
    assert any(line.startswith(f"{bad}:26: node menu: unknown branch 'Sale'") for line in err)
    assert all(line.startswith(f"{bad}:") for line in err)
