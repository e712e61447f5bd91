"""The REFER decision as a table (no SIP): which response code an agent phone's REFER gets from
the flow layer, from who sent it and what it is bridged to."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from softswitch.flow.transfer import FlowTransfers
from softswitch.sip.events import Replaces, TransferRequested
from softswitch.sip.transfer import Referral


@dataclass
class FakeLeg:
    id: str
    direction: str = "outbound"
    answered: bool = True
    ended: bool = False
    admission: object = None
    remote_uri: str = "sip:5551234@127.0.0.1"
    local_uri: str = "sip:100@127.0.0.1"


@dataclass
class FakeFlowLeg:
    leg: FakeLeg

    @property
    def id(self) -> str:
        return self.leg.id


@dataclass
class FakeBridge:
    a: FakeFlowLeg
    b: FakeFlowLeg

    def peer_of(self, leg):
        return self.b if leg is self.a else self.a


@dataclass
class FakeEngine:
    legs: dict = field(default_factory=dict)
    bridged: dict = field(default_factory=dict)
    soon: list = field(default_factory=list)

    def __post_init__(self):
        targets = {"agent": SimpleNamespace(kind="extension", ref="1001"),
                   "trunk_out": SimpleNamespace(kind="trunk", ref="trunk_main")}
        self.bridges = SimpleNamespace(of=lambda leg_id: self.bridged.get(leg_id))
        self.ua = SimpleNamespace(
            dialer=SimpleNamespace(target_of=lambda leg_id: targets.get(leg_id)),
            ids=SimpleNamespace(new=lambda kind: f"{kind}_1"), clock=SimpleNamespace(now=lambda: 0.0),
            call_soon=lambda fn, *args: self.soon.append((fn, args)), config=SimpleNamespace(extension_users={}))


def scene(agent_id="agent", bridged=True, caller_ended=False, agent_answered=True, inbound_extension=False):
    engine = FakeEngine()
    admission = SimpleNamespace(kind="extension", extension="1002", group="internal") if inbound_extension else None
    agent = FakeFlowLeg(FakeLeg(agent_id, "inbound" if inbound_extension else "outbound", agent_answered,
                                admission=admission))
    caller = FakeFlowLeg(FakeLeg("caller", "inbound", ended=caller_ended,
                                 admission=SimpleNamespace(kind="trunk", ref="trunk_main")))
    engine.legs = {agent.id: agent, caller.id: caller}
    if bridged:
        engine.bridged = {agent.id: FakeBridge(caller, agent), caller.id: FakeBridge(caller, agent)}
    return engine, agent, caller


def refer(leg_id, replaces=None):
    return TransferRequested(leg_id, 7, "sip:1003@h", "1003", replaces, "")


DECISIONS = [
    # (scene, REFER from, expected code)
    ("an agent bridged to a caller", dict(), "agent", 202),
    ("an agent who dialled in (extension INVITE)", dict(agent_id="inbound_agent", inbound_extension=True),
     "inbound_agent", 202),
    ("an attended transfer", dict(), "agent+replaces", 202),
    ("an agent bridged to nobody", dict(bridged=False), "agent", 403),
    ("a trunk caller (only agent phones transfer)", dict(), "caller", 403),
    ("a trunk leg softswitch dialled", dict(agent_id="trunk_out"), "trunk_out", 403),
    ("a caller that hung up already", dict(caller_ended=True), "agent", 403),
    ("an agent leg not answered yet", dict(agent_answered=False), "agent", 403),
]


@pytest.mark.parametrize("what,setup,sender,code", DECISIONS, ids=[d[0] for d in DECISIONS])
def test_refer_decision(what, setup, sender, code):
    engine, agent, caller = scene(**setup)
    transfers = FlowTransfers(engine)  # type: ignore[arg-type]
    replaces = Replaces("cid", "a", "b") if sender.endswith("+replaces") else None
    leg_id = sender.split("+")[0]
    assert transfers.on_transfer(engine.legs[leg_id].leg, refer(leg_id, replaces), Referral(7, leg_id)) == code
    assert (len(engine.soon) == 1) == (code == 202)  # accepted: the work starts on the next loop turn


def test_a_second_refer_while_one_runs_gets_491():
    engine, agent, _caller = scene()
    transfers = FlowTransfers(engine)  # type: ignore[arg-type]
    assert transfers.on_transfer(agent.leg, refer(agent.id), Referral(7, agent.id)) == 202
    assert transfers.on_transfer(agent.leg, refer(agent.id), Referral(8, agent.id)) == 491
