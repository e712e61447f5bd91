"""Seeded SIP fuzzing: a mutator of real SIP messages and a driver that sends them to a server.

`SipMutator` starts from the messages real peers send (an INVITE with SDP from a trunk and from
an authenticated extension, REGISTER with and without Authorization, BYE, CANCEL, ACK, OPTIONS,
INFO with DTMF bodies, a re-INVITE) and applies one to three mutations. Message `index` of
`seed` is drawn from `random.Random(f"{seed}/{index}")`, so it is rebuilt exactly from its seed
and index (given the same peer, credentials and dialog, which `FuzzMessage.label` names).

`FuzzDriver` sends a mutator's messages over UDP (several source addresses) and TCP (several
connections, some messages split across writes, some connections closed mid-message) at a
bounded rate, answers what a peer must answer (ACK and BYE for a 2xx to its INVITE, 200 to the
server's BYE), keeps a call up for the in-dialog messages to land in, and counts what came
back (`FuzzReport`). Only loopback addresses are ever written into messages, and bit flips and
inserted bytes never touch an IP literal, so no mutation can point the server off the machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
import selectors
import socket
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from tests.support.ports import free_port
from tests.support.server import sip_options_ok

# ---- context: who sends, with which credentials, into which dialog ------------------------------


@dataclass(frozen=True)
class Peer:
    """Where a message goes and whom it claims to come from."""

    server_host: str
    server_port: int
    transport: str  # "UDP" or "TCP"
    local_ip: str
    local_port: int
    rtp_port: int = 40000  # where our SDP says our RTP is (the driver binds a sink there)

    @property
    def server(self) -> str:
        return f"{self.server_host}:{self.server_port}"


@dataclass(frozen=True)
class Credentials:
    """Digest credentials and a real nonce from the server's challenge (bound to `Peer.local_ip`)."""

    user: str
    password: str
    realm: str
    nonce: str
    nc: int = 1  # nonce count to use; the driver counts up per nonce


@dataclass(frozen=True)
class Dialog:
    """An established call the in-dialog bases (BYE, re-INVITE, INFO, ACK) address."""

    call_id: str
    local_tag: str
    remote_tag: str
    remote_target: str  # the Contact URI of the server's 200
    local_user: str
    remote_user: str
    cseq: int  # CSeq for the next request


# ---- a message being built ---------------------------------------------------------------------

AUTO = object()  # Content-Length computed from the body at encoding time
MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq")  # pjsip drops a message missing any of these
COMPACT = {"Via": "v", "From": "f", "To": "t", "Call-ID": "i", "Content-Length": "l", "Contact": "m",
           "Content-Type": "c", "Subject": "s", "Supported": "k", "Content-Encoding": "e"}
_IP_LITERAL = re.compile(rb"\d{1,3}(?:\.\d{1,3}){1,3}")


def _esc(data: bytes) -> str:
    """Bytes as a str that encodes back to exactly those bytes (invalid UTF-8 kept as surrogates)."""
    return data.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass
class _Msg:
    start: str
    headers: list[list]  # [name, value]; name None: the value is a raw line
    body: str = ""
    # Why a conforming server must refuse it, by what is broken ("CSeq", "no Via", "request line"):
    # a later mutation of the same part replaces the reason, so a repaired part is not claimed.
    malformed: dict[str, str] = field(default_factory=dict)
    lenient: list[str] = field(default_factory=list)  # RFC says refuse, pjsip accepts by design
    framing: bool = False  # Content-Length no longer matches: a TCP stream may lose sync

    def find(self, name: str) -> list[int]:
        names = {name.lower(), COMPACT.get(name, name).lower()}
        return [i for i, (n, _) in enumerate(self.headers) if n is not None and n.lower() in names]

    def get(self, name: str) -> str | None:
        found = self.find(name)
        value = self.headers[found[0]][1] if found else None
        return value if isinstance(value, str) else None

    def set(self, name: str, value: object) -> None:
        found = self.find(name)
        if found:
            self.headers[found[0]][1] = value
        else:
            self.headers.insert(len(self.headers) - 1, [name, value])

    def encode(self) -> bytes:
        body = _bytes(self.body)
        lines = [self.start]
        for name, value in self.headers:
            value = str(len(body)) if value is AUTO else value
            lines.append(value if name is None else f"{name}: {value}")
        return _bytes("\r\n".join(lines) + "\r\n\r\n") + body


# ---- base messages -------------------------------------------------------------------------------


def _digest(method: str, uri: str, cred: Credentials, cnonce: str) -> str:
    def h(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    nc = f"{cred.nc:08x}"
    ha1 = h(f"{cred.user}:{cred.realm}:{cred.password}")
    response = h(f"{ha1}:{cred.nonce}:{nc}:{cnonce}:auth:{h(f'{method}:{uri}')}")
    return (f'Digest username="{cred.user}", realm="{cred.realm}", nonce="{cred.nonce}", uri="{uri}", '
            f'response="{response}", algorithm=MD5, cnonce="{cnonce}", qop=auth, nc={nc}')


def sdp_offer(ip: str, port: int, session: int = 1) -> str:
    return ("v=0\r\n"
            f"o=fuzz {session} {session} IN IP4 {ip}\r\n"
            "s=-\r\n"
            f"c=IN IP4 {ip}\r\n"
            "t=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 8 101\r\n"
            "a=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:8 PCMA/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n"
            "a=fmtp:101 0-16\r\n"
            "a=ptime:20\r\n"
            "a=sendrecv\r\n")


@dataclass(frozen=True)
class _Ids:
    call_id: str
    tag: str
    branch: str
    cnonce: str


def _request(method: str, uri: str, peer: Peer, ids: _Ids, *, from_user: str, to_user: str,
             to_tag: str | None = None, cseq: int = 1, extra: Iterable[tuple[str, str]] = (),
             body: str = "", content_type: str | None = None) -> _Msg:
    t = peer.transport.upper()
    headers = [
        ["Via", f"SIP/2.0/{t} {peer.local_ip}:{peer.local_port};branch={ids.branch};rport"],
        ["Max-Forwards", "70"],
        ["From", f'"Fuzz" <sip:{from_user}@{peer.local_ip}>;tag={ids.tag}'],
        ["To", f"<sip:{to_user}@{peer.server}>" + (f";tag={to_tag}" if to_tag else "")],
        ["Call-ID", ids.call_id],
        ["CSeq", f"{cseq} {method}"],
        ["Contact", f"<sip:{from_user}@{peer.local_ip}:{peer.local_port};transport={t.lower()}>"],
        ["User-Agent", "softswitch-fuzz"],
        *[[k, v] for k, v in extra],
    ]
    if content_type:
        headers.append(["Content-Type", content_type])
    headers.append(["Content-Length", AUTO])
    return _Msg(f"{method} {uri} SIP/2.0", headers, body)


def _in_dialog(method: str, peer: Peer, ids: _Ids, dialog: Dialog | None, **kw) -> _Msg:
    """A request in `dialog`, or (no dialog) in a dialog the server has never heard of."""
    if dialog is None:
        dialog = Dialog(ids.call_id, ids.tag, uuid.UUID(int=random.Random(ids.branch).getrandbits(128)).hex[:10],
                        f"sip:5550100@{peer.server}", "5551000", "5550100", 2)
    msg = _request(method, dialog.remote_target, peer,
                   _Ids(dialog.call_id, dialog.local_tag, ids.branch, ids.cnonce),
                   from_user=dialog.local_user, to_user=dialog.remote_user, to_tag=dialog.remote_tag,
                   cseq=dialog.cseq, **kw)
    return msg


ALLOW = ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE")


def _invite_trunk(peer, ids, cred, dialog):
    return _request("INVITE", f"sip:5550100@{peer.server}", peer, ids, from_user="5551000", to_user="5550100",
                    extra=[ALLOW, ("Supported", "replaces, timer")], body=sdp_offer(peer.local_ip, peer.rtp_port),
                    content_type="application/sdp")


def _invite_extension(peer, ids, cred, dialog):
    uri = f"sip:5550100@{peer.server}"
    extra = [ALLOW]
    if cred is not None:
        extra.append(("Proxy-Authorization", _digest("INVITE", uri, cred, ids.cnonce)))
    user = cred.user if cred else "1001"
    return _request("INVITE", uri, peer, ids, from_user=user, to_user="5550100", extra=extra,
                    body=sdp_offer(peer.local_ip, peer.rtp_port), content_type="application/sdp")


def _register(peer, ids, cred, dialog, auth: bool = False):
    uri = f"sip:{peer.server}"
    user = cred.user if cred else "1002"
    extra = [("Expires", "120")]
    if auth and cred is not None:
        extra.append(("Authorization", _digest("REGISTER", uri, cred, ids.cnonce)))
    return _request("REGISTER", uri, peer, ids, from_user=user, to_user=user, extra=extra)


def _reinvite(peer, ids, cred, dialog):
    return _in_dialog("INVITE", peer, ids, dialog, body=sdp_offer(peer.local_ip, peer.rtp_port, 2),
                      content_type="application/sdp")


def _info(peer, ids, cred, dialog, relay: bool = True):
    if relay:
        return _in_dialog("INFO", peer, ids, dialog, body="Signal=5\r\nDuration=160\r\n",
                          content_type="application/dtmf-relay")
    return _in_dialog("INFO", peer, ids, dialog, body="7", content_type="application/dtmf")


def _cancel(peer, ids, cred, dialog):
    return _request("CANCEL", f"sip:5550100@{peer.server}", peer, ids, from_user="5551000", to_user="5550100")


def _options(peer, ids, cred, dialog):
    return _request("OPTIONS", f"sip:{peer.server}", peer, ids, from_user="probe", to_user="probe",
                    extra=[("Accept", "application/sdp")])


BASES: dict[str, tuple[int, Callable]] = {
    "invite_trunk": (18, _invite_trunk),
    "invite_extension": (12, _invite_extension),
    "reinvite": (8, _reinvite),
    "register": (6, lambda p, i, c, d: _register(p, i, c, d, auth=False)),
    "register_auth": (9, lambda p, i, c, d: _register(p, i, c, d, auth=True)),
    "bye": (6, lambda p, i, c, d: _in_dialog("BYE", p, i, d)),
    "cancel": (5, _cancel),
    "ack": (5, lambda p, i, c, d: _in_dialog("ACK", p, i, d)),
    "options": (9, _options),
    "info_dtmf_relay": (6, lambda p, i, c, d: _info(p, i, c, d, relay=True)),
    "info_dtmf": (5, lambda p, i, c, d: _info(p, i, c, d, relay=False)),
}
INVITE_BASES = ("invite_trunk", "invite_extension", "reinvite")


# ---- mutations -------------------------------------------------------------------------------------
# Each takes (rng, msg, ctx) and returns a label, or None when it does not apply to this message.
# A mutation that makes the message one a conforming server must refuse says why in msg.malformed;
# one that rewrites a part (a header, the request line) clears what an earlier one said about it.


@dataclass(frozen=True)
class _Ctx:
    peer: Peer
    huge: int  # bytes of a "huge" value: 64 KB over TCP, less over UDP (a datagram's limit)


def _pick_header(rng: random.Random, msg: _Msg, names: Iterable[str] | None = None) -> int | None:
    if names is None:
        found = [i for i, (n, _) in enumerate(msg.headers) if n is not None]
    else:
        found = [i for name in names for i in msg.find(name)]
    return rng.choice(found) if found else None


def _insert(rng: random.Random, text: str, piece: str) -> str:
    at = rng.randrange(len(text) + 1)
    return text[:at] + piece + text[at:]


def m_drop_header(rng, msg, ctx):
    optional = [i for i, (n, _) in enumerate(msg.headers) if n is not None and n not in MANDATORY]
    if not optional:
        return None
    name = msg.headers.pop(rng.choice(optional))[0]
    if name == "Content-Length":
        msg.framing = True
    return f"drop_header:{name}"


def m_drop_mandatory(rng, msg, ctx):
    name = rng.choice(MANDATORY)
    for i in reversed(msg.find(name)):
        msg.headers.pop(i)
    msg.malformed[f"no {name}"] = f"no {name}"
    return f"drop_mandatory:{name}"


def m_duplicate_header(rng, msg, ctx):
    i = _pick_header(rng, msg)
    if i is None:
        return None
    name, value = msg.headers[i]
    if name == "Content-Length":
        return None  # m_content_length covers duplicates with different values
    copies = rng.choice((1, 1, 2, 50))
    for _ in range(copies):
        msg.headers.insert(rng.randrange(len(msg.headers) + 1), [name, value])
    return f"duplicate_header:{name}x{copies}"


def m_shuffle_headers(rng, msg, ctx):
    rng.shuffle(msg.headers)
    return "shuffle_headers"


def m_huge_value(rng, msg, ctx):
    i = _pick_header(rng, msg, ("Subject", "User-Agent", "From", "To", "Call-ID", "Via", "Contact", "CSeq",
                                "Content-Type", "X-Fuzz"))
    size = rng.choice((ctx.huge, ctx.huge, 4000, 9000))
    filler = rng.choice(("a", "%41", ";p=q", " ", "\t", "<", "\"", "9"))
    blob = (filler * (size // len(filler) + 1))[:size]
    if i is None or rng.random() < 0.3:
        msg.headers.insert(2, ["X-Fuzz", blob])
        return f"huge_value:X-Fuzz:{size}"
    name = msg.headers[i][0]
    value = msg.headers[i][1]
    if value is AUTO:
        value = "0"
    msg.headers[i][1] = _insert(rng, value, blob) if rng.random() < 0.5 else value + blob
    return f"huge_value:{name}:{size}"


def m_many_headers(rng, msg, ctx):
    n = rng.choice((100, 500, 2000))
    for k in range(n):
        msg.headers.insert(1, [f"X-Fuzz-{k}", "x"])
    return f"many_headers:{n}"


# RFC 3261 §18.3: a UDP request whose body ends before its Content-Length SHOULD get 400; pjsip
# takes the rest of the datagram as the body whatever Content-Length says, and goes on.
BEYOND_DATAGRAM = "Content-Length beyond the datagram"


def m_content_length(rng, msg, ctx):
    body = len(_bytes(msg.body))
    kind = rng.choice(("bigger", "smaller", "negative", "huge", "garbage", "duplicate", "missing", "zero"))
    tcp = ctx.peer.transport.upper() == "TCP"
    if kind == "bigger":
        value = str(body + rng.choice((1, 10, 1000, 100000)))
        if not tcp:
            msg.lenient.append(BEYOND_DATAGRAM)
    elif kind == "smaller":
        if body == 0:
            return None
        value = str(rng.randrange(body))
    elif kind == "negative":
        value = rng.choice(("-1", "-100", f"-{body}"))
        msg.malformed["Content-Length"] = "negative Content-Length"
    elif kind == "huge":
        value = rng.choice(("4294967295", "4294967296", "18446744073709551616", "99999999999999999999999"))
        if not tcp:
            msg.lenient.append(BEYOND_DATAGRAM)
    elif kind == "garbage":
        value = rng.choice(("abc", "", "1 2", "0x10", "1e3", "+5", " ", "١٢"))
        msg.malformed["Content-Length"] = "Content-Length not a number"
    elif kind == "zero":
        value = "0"
    elif kind == "duplicate":
        msg.headers.insert(rng.randrange(len(msg.headers)), ["Content-Length", str(rng.choice((0, body + 5)))])
        value = AUTO
    else:
        for i in reversed(msg.find("Content-Length")):
            msg.headers.pop(i)
        msg.malformed.pop("Content-Length", None)
        msg.framing = True
        return "content_length:missing"
    if kind not in ("negative", "garbage"):
        msg.malformed.pop("Content-Length", None)
    msg.framing = msg.framing or kind != "zero" or body != 0
    msg.set("Content-Length", value)
    return f"content_length:{kind}"


def m_bad_via(rng, msg, ctx):
    p = ctx.peer
    hp = f"{p.local_ip}:{p.local_port}"
    t = p.transport.upper()
    branch = "z9hG4bK" + "%08x" % rng.getrandbits(32)
    variants = {
        "no_host": f"SIP/2.0/{t}",
        "unknown_transport": f"SIP/2.0/XYZ {hp};branch={branch}",
        "bad_version": f"SIP/3.0/{t} {hp};branch={branch}",
        "port_overflow": f"SIP/2.0/{t} {p.local_ip}:99999;branch={branch}",
        "port_zero": f"SIP/2.0/{t} {p.local_ip}:0;branch={branch};rport",
        "ipv6_unclosed": f"SIP/2.0/{t} [::1;branch={branch}",
        "ipv6_garbage": f"SIP/2.0/{t} [::zz::1]:5060;branch={branch}",
        "empty_branch": f"SIP/2.0/{t} {hp};branch=;rport",
        "rfc2543_no_branch": f"SIP/2.0/{t} {hp}",
        "bad_params": f"SIP/2.0/{t} {hp};branch={branch};received=garbage;rport=abc;ttl=999",
        "maddr_loopback": f"SIP/2.0/{t} {hp};branch={branch};maddr=127.0.0.9",
        "garbage": "garbage;;;==",
        "long_branch": f"SIP/2.0/{t} {hp};branch=z9hG4bK{'x' * 3000}",
        "semicolons": f"SIP/2.0/{t} {hp};;;;branch={branch};",
        "comma_list": f"SIP/2.0/{t} {hp};branch={branch}, SIP/2.0/{t} 127.0.0.9:5;branch=z9hG4bKb,,",
    }
    kind = rng.choice(sorted(variants) + ["many"])
    vias = msg.find("Via")
    if kind == "many":
        at = vias[0] if vias else 0
        for k in range(rng.choice((10, 70))):
            msg.headers.insert(at + 1, ["Via", f"SIP/2.0/UDP 127.0.0.{k % 250 + 2}:{5060 + k};branch=z9hG4bKv{k}"])
        msg.malformed.pop("no Via", None)
        return "bad_via:many"
    if not vias:
        return None
    msg.headers[vias[0]][1] = variants[kind]
    msg.malformed.pop("Via", None)
    if kind in ("no_host", "bad_version", "garbage", "ipv6_unclosed"):  # XYZ is a token: a valid transport
        msg.malformed["Via"] = f"Via {kind}"
    return f"bad_via:{kind}"


def _bad_addr(rng, msg, ctx, header):
    i = msg.find(header)
    if not i:
        return None
    p = ctx.peer
    variants = {
        "no_tag": f"<sip:5551000@{p.local_ip}>",
        "unclosed_angle": f"<sip:5551000@{p.local_ip};tag=1",
        "unterminated_quote": f'"Fuzz <sip:5551000@{p.local_ip}>;tag=2',
        "empty_user": f"<sip:@{p.local_ip}>;tag=3",
        "no_scheme": "<5551000>;tag=4",
        "tel": "<tel:+15551000>;tag=5",
        "empty_angle": "<>;tag=6",
        "long_tag": f"<sip:5551000@{p.local_ip}>;tag={'t' * 5000}",
        "escaped": f"<sip:%00%ff%zz@{p.local_ip}>;tag=7",
        "params_only": ";tag=8",
        "star": "*",
        "ipv6_garbage": "<sip:u@[::zz]>;tag=9",
        "display_only": '"only a name"',
        "sips": f"<sips:5551000@{p.local_ip}>;tag=a",
        "two_uris": f"<sip:a@{p.local_ip}>, <sip:b@{p.local_ip}>;tag=b",
    }
    kind = rng.choice(sorted(variants))
    msg.headers[i[0]][1] = variants[kind]
    return f"bad_{header.lower()}:{kind}"


def m_bad_from(rng, msg, ctx):
    return _bad_addr(rng, msg, ctx, "From")


def m_bad_to(rng, msg, ctx):
    return _bad_addr(rng, msg, ctx, "To")


def m_bad_contact(rng, msg, ctx):
    if not msg.find("Contact"):
        return None
    return _bad_addr(rng, msg, ctx, "Contact")


def m_bad_cseq(rng, msg, ctx):
    i = msg.find("CSeq")
    if not i:
        return None
    method = msg.start.split(" ", 1)[0]
    variants = {
        "not_a_number": (f"abc {method}", True),
        "negative": (f"-1 {method}", True),
        "overflow": (f"4294967296 {method}", False),
        "huge": (f"99999999999999999999 {method}", False),
        "zero": (f"0 {method}", False),
        "other_method": ("1 BYE" if method != "BYE" else "1 INVITE", False),
        "no_method": ("1", True),
        "empty": ("", True),
        "extra": (f"1 {method} extra", False),
        "lowercase": (f"1 {method.lower()}", False),
    }
    kind = rng.choice(sorted(variants))
    value, malformed = variants[kind]
    msg.headers[i[0]][1] = value
    msg.malformed.pop("CSeq", None)
    if malformed:
        msg.malformed["CSeq"] = f"CSeq {kind}"
    return f"bad_cseq:{kind}"


def m_bad_call_id(rng, msg, ctx):
    i = msg.find("Call-ID")
    if not i:
        return None
    variants = {"empty": "", "spaces": "a b c", "at_only": "@", "non_ascii": _esc(b"\xc3\x28\xff\xfe@x"),
                "long": "c" * 2000, "angle": "<call>", "semicolon": "x;y=z"}
    kind = rng.choice(sorted(variants))
    msg.headers[i[0]][1] = variants[kind]
    msg.malformed.pop("Call-ID", None)
    if kind == "empty":
        msg.malformed["Call-ID"] = "empty Call-ID"
    return f"bad_call_id:{kind}"


def m_bad_request_line(rng, msg, ctx):
    method, uri, _ = (msg.start.split(" ", 2) + ["", ""])[:3]
    variants = {
        "unknown_method": (f"FUZZ {uri} SIP/2.0", False),
        "lowercase_method": (f"{method.lower()} {uri} SIP/2.0", False),
        "bad_version": (f"{method} {uri} SIP/3.0", True),
        "version_letter_o": (f"{method} {uri} SIP/2.O", True),
        "http": (f"{method} {uri} HTTP/1.1", True),
        "no_version": (f"{method} {uri}", True),
        "no_uri": (f"{method} SIP/2.0", True),
        "empty_sip_uri": (f"{method} sip: SIP/2.0", True),
        "angle_uri": (f"{method} <{uri}> SIP/2.0", True),
        "percent_garbage": (f"{method} sip:%%%@%%% SIP/2.0", True),
        "ipv6_unclosed": (f"{method} sip:u@[::1 SIP/2.0", True),
        "port_overflow": (f"{method} sip:u@127.0.0.1:99999 SIP/2.0", False),
        "long_uri": (f"{method} sip:{'u' * 9000}@127.0.0.1 SIP/2.0", False),
        "double_spaces": (f"{method}  {uri}  SIP/2.0", False),
        "tabs": (f"{method}\t{uri}\tSIP/2.0", False),
        "tel_uri": (f"{method} tel:+15550100 SIP/2.0", False),
        "method_mismatch": (f"{'OPTIONS' if method != 'OPTIONS' else 'INVITE'} {uri} SIP/2.0", False),
        "response_line": ("SIP/2.0 200 OK", False),
        "empty": ("", True),
    }
    kind = rng.choice(sorted(variants))
    msg.start, malformed = variants[kind]
    msg.malformed.pop("request line", None)
    if malformed:
        msg.malformed["request line"] = f"request line {kind}"
    return f"bad_request_line:{kind}"


def m_compact_forms(rng, msg, ctx):
    changed = 0
    for h in msg.headers:
        if h[0] in COMPACT and rng.random() < 0.7:
            h[0] = COMPACT[h[0]]
            changed += 1
    return f"compact_forms:{changed}" if changed else None


def m_header_case(rng, msg, ctx):
    for h in msg.headers:
        if h[0] is not None:
            h[0] = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in h[0])
    return "header_case"


def m_folded_header(rng, msg, ctx):
    candidates = [i for i, (n, v) in enumerate(msg.headers) if n is not None and isinstance(v, str)
                  and (" " in v or ";" in v)]
    if not candidates:
        return None
    i = rng.choice(candidates)
    value = msg.headers[i][1]
    cut = [k for k, c in enumerate(value) if c in " ;"]
    at = rng.choice(cut)
    msg.headers[i][1] = value[:at] + rng.choice(("\r\n ", "\r\n\t", "\r\n   ")) + value[at:]
    return f"folded_header:{msg.headers[i][0]}"


def m_crlf_injection(rng, msg, ctx):
    i = _pick_header(rng, msg)
    if i is None:
        return None
    piece = rng.choice(("\r\nVia: SIP/2.0/UDP 127.0.0.9:5;branch=z9hG4bKinj",
                        "\r\nContent-Length: 0",
                        "\r\n\r\n",
                        "\r\nCall-ID: injected",
                        "\n",
                        "\r",
                        "\r\n",
                        "\r\nX-Injected: yes\r\n\r\nINVITE sip:x@127.0.0.1 SIP/2.0"))
    value = msg.headers[i][1]
    value = "0" if value is AUTO else value
    msg.headers[i][1] = _insert(rng, value, piece)
    msg.framing = True
    msg.malformed.clear()  # an injected header may repair what an earlier mutation broke
    return f"crlf_injection:{msg.headers[i][0]}:{piece.encode()!r}"


def m_non_utf8(rng, msg, ctx):
    i = _pick_header(rng, msg)
    if i is None:
        return None
    junk = _esc(bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randrange(1, 12))))
    value = msg.headers[i][1]
    value = "0" if value is AUTO else value
    msg.headers[i][1] = _insert(rng, value, junk)
    return f"non_utf8:{msg.headers[i][0]}"


def m_nul(rng, msg, ctx):
    i = _pick_header(rng, msg)
    where = rng.choice(("header", "name", "body", "start"))
    if where == "start":
        msg.start = _insert(rng, msg.start, "\x00")
    elif where == "body" and msg.body:
        msg.body = _insert(rng, msg.body, "\x00")
    elif i is not None and where == "name":
        msg.headers[i][0] = _insert(rng, msg.headers[i][0], "\x00")
    elif i is not None:
        value = msg.headers[i][1]
        msg.headers[i][1] = _insert(rng, "0" if value is AUTO else value, "\x00")
    else:
        return None
    msg.malformed.pop("Content-Length", None)  # parsing may stop at the NUL, before a broken Content-Length
    return f"nul:{where}"


def m_raw_line(rng, msg, ctx):
    line = rng.choice(("no colon here", ":value without name", "Name-Only:", " leading-space: x",
                       "Bad Name: x", "X:" + "\t" * 10, "::::", "Content-Length", "Via:"))
    msg.headers.insert(rng.randrange(len(msg.headers) + 1), [None, line])
    return f"raw_line:{line!r}"


def m_long_header_name(rng, msg, ctx):
    msg.headers.insert(1, ["X-" + "N" * rng.choice((300, 5000)), "v"])
    return "long_header_name"


# ---- SDP ---------------------------------------------------------------------------------------


def _has_sdp(msg: _Msg) -> bool:
    return msg.body.startswith("v=0")


def m_sdp(rng, msg, ctx):
    if not _has_sdp(msg):
        return None
    body = msg.body
    port = ctx.peer.rtp_port
    ip = ctx.peer.local_ip
    kind = rng.choice(("bad_port", "unknown_codecs", "many_payload_types", "missing_c", "huge_a",
                       "multiple_m", "ipv6_garbage", "missing_v", "empty", "port_zero", "bad_rtpmap",
                       "bad_fmtp", "bad_ptime", "direction", "garbage_lines", "no_formats", "bad_o",
                       "bad_bandwidth", "bad_rtcp"))
    lines = body.split("\r\n")
    m_at = next(k for k, line in enumerate(lines) if line.startswith("m="))
    detail = ""
    if kind == "bad_port":
        detail = rng.choice(("-1", "99999", "abc", "", "65536", f"{port}/0", f"{port}/-2", "4294967336"))
        lines[m_at] = f"m=audio {detail} RTP/AVP 0 8 101"
    elif kind == "port_zero":
        lines[m_at] = "m=audio 0 RTP/AVP 0 8 101"
    elif kind == "unknown_codecs":
        lines[m_at] = f"m=audio {port} RTP/AVP 96 97 98"
        lines[m_at + 1:m_at + 5] = ["a=rtpmap:96 FUZZ/8000", "a=rtpmap:97 X-NOPE/0", "a=rtpmap:98 opus/48000/2"]
    elif kind == "many_payload_types":
        n = rng.choice((33, 200))
        pts = " ".join(str(k % 256) for k in range(n))
        lines[m_at] = f"m=audio {port} RTP/AVP {pts}"
        lines[m_at + 1:m_at + 1] = [f"a=rtpmap:{k} C{k}/8000" for k in range(96, 96 + min(n, 32))]
        detail = str(n)
    elif kind == "missing_c":
        lines = [line for line in lines if not line.startswith("c=")]
    elif kind == "huge_a":
        size = rng.choice((ctx.huge, 5000, 3000))
        lines.insert(m_at + 1, "a=x-fuzz:" + "z" * size)
        detail = str(size)
    elif kind == "multiple_m":
        n = rng.choice((2, 5, 20))
        kinds = ("audio", "video", "application", "text", "audio")
        extra = []
        for k in range(n):
            extra += [f"m={kinds[k % len(kinds)]} {port + 2 * (k + 1)} RTP/AVP 0 96", "a=rtpmap:96 H264/90000"]
        lines[-1:-1] = extra
        detail = str(n)
    elif kind == "ipv6_garbage":
        detail = rng.choice(("IN IP6 ::::zz", "IN IP6 [::1", "IN IP4 ::1", "IN IP6 ::1", "IN IP6", "IN IP4",
                             "IN IP9 127.0.0.1", "XX IP4 127.0.0.1", f"IN IP4 {ip}/127/3"))
        lines = [f"c={detail}" if line.startswith("c=") else line for line in lines]
    elif kind == "missing_v":
        lines = lines[1:]
    elif kind == "empty":
        lines = [""]
    elif kind == "bad_rtpmap":
        detail = rng.choice(("a=rtpmap:0", "a=rtpmap:abc PCMU/8000", "a=rtpmap:0 PCMU/0", "a=rtpmap:0 PCMU/-8000",
                             "a=rtpmap:101 telephone-event/8000/99999", "a=rtpmap:300 PCMU/8000", "a=rtpmap:"))
        lines.insert(m_at + 1, detail)
    elif kind == "bad_fmtp":
        detail = rng.choice(("a=fmtp:101", "a=fmtp:101 0-99999", "a=fmtp:101 16-0", "a=fmtp:abc x", "a=fmtp:"))
        lines.insert(m_at + 1, detail)
    elif kind == "bad_ptime":
        detail = rng.choice(("a=ptime:0", "a=ptime:-20", "a=ptime:100000", "a=ptime:abc", "a=maxptime:0"))
        lines.insert(m_at + 1, detail)
    elif kind == "direction":
        detail = rng.choice(("a=inactive", "a=sendonly", "a=recvonly", "a=sendrecv\r\na=inactive"))
        lines = [detail if line == "a=sendrecv" else line for line in lines]
    elif kind == "garbage_lines":
        lines.insert(rng.randrange(1, len(lines)), rng.choice(("x", "=", "zz=top", "m=", "a", "c=IN")))
    elif kind == "no_formats":
        lines[m_at] = f"m=audio {port} RTP/AVP"
    elif kind == "bad_o":
        lines[1] = rng.choice(("o=", "o=- x y IN IP4", "o=- 1 1 IN IP4 ::zz"))
    elif kind == "bad_bandwidth":
        lines.insert(m_at + 1, rng.choice(("b=AS:-1", "b=AS:99999999999", "b=:", "b=TIAS:x")))
    elif kind == "bad_rtcp":
        lines.insert(m_at + 1, rng.choice(("a=rtcp:abc", "a=rtcp:99999 IN IP4 127.0.0.1", "a=rtcp:",
                                           "a=rtcp:0 IN IP6 ::zz")))
    msg.body = "\r\n".join(lines)
    return f"sdp:{kind}" + (f":{detail}" if detail else "")


# ---- digest -------------------------------------------------------------------------------------


def m_digest(rng, msg, ctx):
    found = msg.find("Authorization") + msg.find("Proxy-Authorization")
    method = msg.start.split(" ", 1)[0]
    if not found:
        if method not in ("REGISTER", "INVITE"):
            return None
        name = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
        msg.headers.insert(len(msg.headers) - 1, [name, 'Digest username="1001", realm="softswitch", '
                                                  'nonce="0.abc", uri="sip:x", response="00", qop=auth, '
                                                  'nc=00000001, cnonce="c"'])
        found = msg.find(name)
    i = found[0]
    value = msg.headers[i][1]

    def param(name: str, new: str | None) -> str:
        pattern = re.compile(rf'(,\s*|Digest\s+){name}=("[^"]*"|[^,]*)')
        if new is None:
            return pattern.sub(lambda m: m.group(1) if m.group(1).startswith("Digest") else "", value, count=1)
        return pattern.sub(lambda m: m.group(1) + f"{name}={new}", value, count=1)

    kind = rng.choice(("bad_nonce", "empty_nonce", "long_nonce", "other_ip_nonce", "qop_auth_int", "qop_garbage",
                       "qop_without_nc", "nc_overflow", "nc_garbage", "nc_zero", "empty_realm", "other_realm",
                       "unterminated_quote", "algorithm", "scheme", "duplicate_params", "huge_response",
                       "wrong_response", "missing_response", "missing_username", "missing_nonce", "bare_params",
                       "empty_value", "uri_mismatch", "unicode_user"))
    if kind == "bad_nonce":
        value = param("nonce", '"' + rng.choice(("garbage", "0.0.0", "ffffffff.ffffffff.00", "..", "1.2")) + '"')
    elif kind == "empty_nonce":
        value = param("nonce", '""')
    elif kind == "long_nonce":
        value = param("nonce", '"' + "9" * 5000 + '"')
    elif kind == "other_ip_nonce":
        value = param("nonce", '"' + "%x" % int(time.time()) + "0001." + "0" * 32 + '"')
    elif kind == "qop_auth_int":
        value = param("qop", "auth-int")
    elif kind == "qop_garbage":
        value = param("qop", rng.choice(('"auth,auth-int"', "zz", '""', "auth;x")))
    elif kind == "qop_without_nc":
        value = param("nc", None)
    elif kind == "nc_overflow":
        value = param("nc", rng.choice(("ffffffffffffffffffff", "100000000", "ffffffff")))
    elif kind == "nc_garbage":
        value = param("nc", rng.choice(("zz", "-1", "", "0x1", "00000001 00000002")))
    elif kind == "nc_zero":
        value = param("nc", "00000000")
    elif kind == "empty_realm":
        value = param("realm", '""')
    elif kind == "other_realm":
        value = param("realm", '"elsewhere"')
    elif kind == "unterminated_quote":
        cut = value.find('"', rng.randrange(len(value)))
        value = value[:cut + 1] + value[cut + 1:].replace('"', "", 1) if cut >= 0 else value + ', opaque="x'
    elif kind == "algorithm":
        value = param("algorithm", rng.choice(("SHA-512", "MD5-sess", '""', "AKAv1-MD5", "SHA-256", "md5")))
    elif kind == "scheme":
        value = rng.choice(("Basic MTAwMTpwYXNzMTAwMQ==", "NTLM TlRMTVNTUAAB", "Digest", "", "digest " + value[7:],
                            "Bearer x.y.z"))
    elif kind == "duplicate_params":
        value = value + ', username="1002", nonce="other"'
    elif kind == "huge_response":
        value = param("response", '"' + "f" * 4000 + '"')
    elif kind == "wrong_response":
        value = param("response", '"' + "0" * 32 + '"')
    elif kind == "missing_response":
        value = param("response", None)
    elif kind == "missing_username":
        value = param("username", None)
    elif kind == "missing_nonce":
        value = param("nonce", None)
    elif kind == "bare_params":
        value = value + rng.choice((", username", ", =", ",,,", ", x=", ', "quoted"'))
    elif kind == "empty_value":
        value = "Digest "
    elif kind == "uri_mismatch":
        value = param("uri", '"sip:elsewhere@127.0.0.9"')
    elif kind == "unicode_user":
        value = param("username", '"' + _esc(b"\xe2\x98\x83\xff") + '"')
    msg.headers[i][1] = value
    return f"digest:{kind}"


# ---- bytes -----------------------------------------------------------------------------------------
# Applied to the encoded message. IP literals are never changed, so a flip cannot make 127.0.0.3
# into a routable address the server would send RTP or BYEs to.


def _free_position(rng: random.Random, data: bytes) -> int:
    """A random offset in `data` outside every IPv4 literal."""
    spans = [m.span() for m in _IP_LITERAL.finditer(data)]
    for _ in range(1000):
        k = rng.randrange(len(data))
        if not any(a <= k < b for a, b in spans):
            return k
    return 0  # a message of nothing but addresses: its first byte


def b_truncate(rng, data: bytes) -> tuple[bytes, str]:
    if len(data) < 2:
        return data, "truncate:too_short"
    at = rng.randrange(1, len(data))
    return data[:at], f"truncate:{at}/{len(data)}"


def b_bit_flips(rng, data: bytes) -> tuple[bytes, str]:
    if not data:
        return data, "bit_flips:empty"
    out = bytearray(data)
    n = rng.choice((1, 1, 2, 4, 8, 32))
    for _ in range(n):
        k = _free_position(rng, data)
        out[k] ^= 1 << rng.randrange(8)
    return bytes(out), f"bit_flips:{n}"


def b_insert_bytes(rng, data: bytes) -> tuple[bytes, str]:
    k = _free_position(rng, data) if data else 0
    junk = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 20)))
    return data[:k] + junk + data[k:], f"insert_bytes:{len(junk)}@{k}"


def b_trailing_garbage(rng, data: bytes) -> tuple[bytes, str]:
    tail = rng.choice((b"\r\n\r\n", b"\x00" * 16, b"garbage", bytes(range(256))))
    return data + tail, f"trailing:{len(tail)}"


MUTATIONS: dict[str, tuple[int, Callable]] = {
    "drop_header": (4, m_drop_header),
    "drop_mandatory": (4, m_drop_mandatory),
    "duplicate_header": (4, m_duplicate_header),
    "shuffle_headers": (3, m_shuffle_headers),
    "huge_value": (2, m_huge_value),
    "many_headers": (1, m_many_headers),
    "content_length": (6, m_content_length),
    "bad_via": (5, m_bad_via),
    "bad_from": (3, m_bad_from),
    "bad_to": (3, m_bad_to),
    "bad_contact": (3, m_bad_contact),
    "bad_cseq": (4, m_bad_cseq),
    "bad_call_id": (3, m_bad_call_id),
    "bad_request_line": (5, m_bad_request_line),
    "compact_forms": (3, m_compact_forms),
    "header_case": (2, m_header_case),
    "folded_header": (3, m_folded_header),
    "crlf_injection": (3, m_crlf_injection),
    "non_utf8": (4, m_non_utf8),
    "nul": (3, m_nul),
    "raw_line": (3, m_raw_line),
    "long_header_name": (1, m_long_header_name),
    "sdp": (12, m_sdp),
    "digest": (10, m_digest),
}
BYTE_MUTATIONS: dict[str, tuple[int, Callable]] = {
    "truncate": (4, b_truncate),
    "bit_flips": (6, b_bit_flips),
    "insert_bytes": (3, b_insert_bytes),
    "trailing_garbage": (2, b_trailing_garbage),
}


def _weighted(rng: random.Random, table: dict[str, tuple[int, Callable]]) -> str:
    names = sorted(table)
    return rng.choices(names, weights=[table[n][0] for n in names])[0]


# ---- the mutator --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzMessage:
    seed: int
    index: int
    base: str
    method: str
    mutations: tuple[str, ...]
    data: bytes
    malformed: tuple[str, ...]  # why a conforming server must refuse it (empty: it may be acceptable)
    lenient: tuple[str, ...]  # why a strict server would refuse it where pjsip accepts it by design
    framing: bool  # its Content-Length does not frame it (TCP streams may lose sync after it)
    branch: str | None  # the top Via branch as sent (responses echo it)
    call_id: str | None  # the Call-ID as sent
    peer: Peer
    known_failure: str | None = None  # a KNOWN_FAILURES entry this message would trigger

    @property
    def label(self) -> str:
        muts = ", ".join(self.mutations) or "unmutated"
        return (f"seed {self.seed} #{self.index} {self.base} via {self.peer.transport} from "
                f"{self.peer.local_ip}:{self.peer.local_port}: {muts}")


_BRANCH_RE = re.compile(rb"(?im)^(?:via|v)[ \t]*:[^\r\n]*?;[ \t]*branch=([^;,\s]+)")
_CALL_ID_RE = re.compile(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)")


# ---- known failures ---------------------------------------------------------------------------------
# Messages that crash the server today, or break it for later calls. Bulk fuzzing does not send
# them (FuzzMessage.known_failure names why), so that one known failure does not hide the next;
# each has its own reproducer in tests/test_fuzz_sipp.py, marked xfail(strict=True), so its fix
# is noticed (and its entry here can go).


def _ip4_connection_with_ipv6_literal(data: bytes) -> bool:
    """An SDP c= line (or a=rtcp) declaring IP4 but holding an address with a colon (::1):
    pjmedia resolves it as IPv6 after the IPv4 attempt fails and aborts in transport_udp.c
    tp_attach (pj_sockaddr_get_len assertion) when the stream starts."""
    return re.search(rb"(?m)^(?:c=IN|a=rtcp:[^\r\n]*IN)[ \t]+IP4[ \t]+[^\r\n]*:", data) is not None


def _dtmf_relay_without_line_end(data: bytes) -> bool:
    """An application/dtmf-relay INFO whose Signal line is not followed by CRLF (as pjsua reads the
    body: up to its first NUL): pjsua_call.c steps past the line's CRLF regardless, so the rest
    has a negative length and pj_strstr aborts (assertion str->slen >= 0)."""
    if not re.search(rb"(?i)dtmf-relay", data) or not re.match(rb"[^\r\n]{0,40}INFO", data):
        return False
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", head)
    if length and int(length.group(1)) < len(body):
        body = body[:int(length.group(1))]
    body = body.split(b"\x00", 1)[0]
    token = re.match(rb"[\r\n]*([^\r\n]*)", body).group(1)
    return b"Signal" in body and len(body) < len(token) + 2


def _register_not_utf8(data: bytes) -> bool:
    """A REGISTER whose headers are not UTF-8 (a Latin-1 User-Agent, say): the native registrar
    stores the binding, but cannot turn it into Python strings, so the binding's event is lost and
    every later bindings() call raises UnicodeDecodeError: extension calls then go unanswered."""
    if not re.match(rb"[^\r\n]{0,40}REGISTER", data, re.I):
        return False
    try:
        data.partition(b"\r\n\r\n")[0].decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


# Shapes that once crashed or broke the server, fixed in native/reg_*.c and now sent in bulk
# like any other message; their reproducers in tests/test_fuzz_sipp.py stay as regression tests.
FIXED_FAILURES: dict[str, Callable[[bytes], bool]] = {
    "ip4_connection_with_ipv6_literal": _ip4_connection_with_ipv6_literal,
    "dtmf_relay_without_line_end": _dtmf_relay_without_line_end,
    "register_not_utf8": _register_not_utf8,
}

KNOWN_FAILURES: dict[str, Callable[[bytes], bool]] = {}


def known_failure(data: bytes) -> str | None:
    """The name of the known failure `data` would trigger, if any."""
    return next((name for name, matches in KNOWN_FAILURES.items() if matches(data)), None)


class SipMutator:
    """Mutated SIP messages, reproducible from (seed, index) and the context passed in."""

    def __init__(self, seed: int, *, unmutated_share: float = 0.04) -> None:
        self.seed = seed
        self.unmutated_share = unmutated_share

    def rng(self, index: int) -> random.Random:
        return random.Random(f"{self.seed}/{index}")

    def base_of(self, index: int) -> str:
        """Which base message `index` starts from (drawn first, so callers can prepare for it)."""
        return _weighted(self.rng(index), BASES)

    def build(self, index: int, peer: Peer, *, credentials: Credentials | None = None,
              dialog: Dialog | None = None) -> FuzzMessage:
        rng = self.rng(index)
        base = _weighted(rng, BASES)
        tag = "%010x" % rng.getrandbits(40)
        ids = _Ids(call_id=f"fz{self.seed}-{index}-{tag}", tag=tag, branch=f"z9hG4bKfz{self.seed}x{index}x{tag}",
                   cnonce="%012x" % rng.getrandbits(48))
        msg: _Msg = BASES[base][1](peer, ids, credentials, dialog)
        ctx = _Ctx(peer, huge=65536 if peer.transport.upper() == "TCP" else 60000)
        labels: list[str] = []
        if rng.random() >= self.unmutated_share:
            count = rng.choices((1, 2, 3), weights=(60, 30, 10))[0]
            attempts = 0
            while len(labels) < count and attempts < 20:
                attempts += 1
                if rng.random() < 0.2:
                    labels.append("@" + _weighted(rng, BYTE_MUTATIONS))  # applied after encoding
                    continue
                label = MUTATIONS[_weighted(rng, MUTATIONS)][1](rng, msg, ctx)
                if label is not None:
                    labels.append(label)
        data = msg.encode()
        final_labels = []
        for label in labels:
            if label.startswith("@"):
                data, label = BYTE_MUTATIONS[label[1:]][1](rng, data)
                if label.startswith("truncate"):
                    msg.framing = True
                    # The cut may remove a broken Content-Length whole (a missing one is fine over
                    # UDP); a missing Via, From, To, Call-ID or CSeq stays missing.
                    msg.malformed.pop("Content-Length", None)
                elif not label.startswith("trailing"):
                    msg.malformed.clear()  # flipped or inserted bytes may repair what was broken
            final_labels.append(label)
        if peer.transport.upper() == "UDP" and len(data) > 65000:
            data = data[:65000]
            final_labels.append("cut_to_datagram")
        branch = _BRANCH_RE.search(data)
        call_id = _CALL_ID_RE.search(data)
        method = msg.start.split(" ", 1)[0] if msg.start else ""
        return FuzzMessage(self.seed, index, base, method, tuple(final_labels), data, tuple(msg.malformed.values()),
                           tuple(msg.lenient), msg.framing, branch.group(1).decode("latin-1") if branch else None,
                           call_id.group(1).strip().decode("latin-1") if call_id else None, peer,
                           known_failure(data))


# ---- the server under fuzzing ----------------------------------------------------------------------

FUZZ_FLOW = """
name: fuzz_target
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [answer]}
  - name: trunk_fuzz
    trigger: trunk
    params: {ref: trunk_fuzz}
    next: {Call: [answer_fuzz]}
  - name: internal
    trigger: extensions
    params: {ref: internal}
    next: {Call: [answer_fuzz]}
nodes:
  # The live call: hold music for as long as it lasts.
  - name: answer
    op: call.answer
    next: {Result: [music]}
  - name: music
    op: media.playAudio
    params: {sourceType: file, filePath: hold_music.wav}
    next: {Completed: [music]}
  # Fuzzed calls: answered, DTMF (the fuzzed INFOs) read until a quiet 20 s.
  - name: answer_fuzz
    op: call.answer
    next: {Result: [digits]}
  - name: digits
    op: call.wait
    params:
      timeoutSeconds: 20
      rules: [{pattern: "5", label: Five}, {pattern: "7", label: Seven}]
    next: {Five: [digits], Seven: [digits], Timeout: [bye_fuzz]}
  - name: bye_fuzz
    op: call.hangup
"""


def fuzz_sections(tmp: Path) -> dict:
    """Config sections (for write_test_config) of a server under fuzzing: the fuzz flow, the
    fuzzing trunk (127.0.0.3, with a codec allow-list so offers are filtered), observability on
    so its writers and endpoint meet the fuzzed values too. Edge protection is off: the fuzzing
    sources would be blocked within a second (hundreds of requests a second, many with bad
    credentials) and every later message dropped unread, so nothing would reach the parsers;
    blocking is tested in tests/test_registrar_sipp.py."""
    flow = tmp / "fuzz-flow.yaml"
    flow.write_text(FUZZ_FLOW)
    return dict(
        flows=[str(flow)],
        trunks={"trunk_main": {"address": "127.0.0.1", "port": 0},
                "trunk_fuzz": {"address": "127.0.0.3", "port": 0, "codecs": ["PCMU", "PCMA", "telephone-event"]}},
        security={"auth_failure_limit": 0, "flood_requests_per_second": 0, "trunk_options_per_second": 0,
                  "trunk_requests_per_second": 0},
        records={"call_records": str(tmp / "call-records.jsonl"), "queue_events": str(tmp / "queue.jsonl")},
        metrics={"http_listen": f"127.0.0.1:{free_port('tcp')}"},
    )


# ERROR lines the fuzzing makes pjsip write, each about a message it refused. Anything else at
# ERROR (a Python traceback, "error in <callback>", a node's unexpected error) is unexpected.
EXPECTED_ERRORS = [re.compile(p) for p in (
    r"softswitch\.pjsip: +sip_transport\.c Error processing \d+ bytes packet from (UDP|TCP) ",
    r"softswitch\.pjsip: +sip_endpoint\.c Error processing packet from \S+: "
    r"(Rx buffer overflow|Missing required header)",
    r"softswitch\.pjsip: +sip_parser\.c Error parsing ",
    r"softswitch\.pjsip: +sip_inv\.c Error parsing/validating SDP body: ",
    r"softswitch\.pjsip: +pjsua_call\.c (Bad SDP in incoming INVITE|Unknown Content-Type in incoming INVITE|"
    r"Unable to generate Contact header|Unable to create media session|Error creating response|"
    r"Error (re-)?initializing media channel|Request verification failed|SDP negotiation has failed|"
    r"Unable to create incoming call|Error sending re-INVITE|Unable to send answer|"
    r"Error sending response: Message too long)",  # a response echoing a huge header cannot be sent
    r"softswitch\.pjsip: +pjsua_media\.c (pjmedia_stream_info_from_sdp\(\) failed|Error updating media)",
    r"softswitch\.pjsip: +call\.cpp (pjsua_call_answer2\(|getAudioMedia\(\) error: no audio slot)",
    r"softswitch\.pjsip: +sip_inv\.c (Unable to|Error)",
)]


def unexpected_errors(log: str) -> list[str]:
    """The ERROR lines of a server log that EXPECTED_ERRORS does not explain."""
    errors = [line for line in log.splitlines() if re.match(r"\S+ \S+ ERROR ", line)]
    return [line for line in errors if not any(p.search(line) for p in EXPECTED_ERRORS)]


# ---- parsing what comes back ---------------------------------------------------------------------


@dataclass
class SipReply:
    """A message from the server, parsed leniently: a response or a request."""

    first_line: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status(self) -> int | None:
        m = re.match(r"SIP/2\.0 (\d{3})", self.first_line)
        return int(m.group(1)) if m else None

    @property
    def method(self) -> str | None:
        return None if self.status is not None else self.first_line.split(" ", 1)[0]

    def header(self, *names: str) -> str | None:
        wanted = {n.lower() for n in names}
        return next((v for k, v in self.headers if k.lower() in wanted), None)

    def all(self, *names: str) -> list[str]:
        wanted = {n.lower() for n in names}
        return [v for k, v in self.headers if k.lower() in wanted]

    @property
    def cseq_method(self) -> str:
        parts = (self.header("CSeq") or "").split()
        return parts[1] if len(parts) > 1 else ""

    @property
    def cseq_number(self) -> int:
        parts = (self.header("CSeq") or "0").split()
        return int(parts[0]) if parts and parts[0].isdigit() else 0

    @property
    def branch(self) -> str | None:
        m = re.search(r";\s*branch=([^;,\s]+)", self.header("Via", "v") or "")
        return m.group(1) if m else None

    @property
    def call_id(self) -> str | None:
        value = self.header("Call-ID", "i")
        return value.strip() if value is not None else None


def parse_reply(data: bytes) -> SipReply | None:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0]:
        return None
    headers = []
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers.append((k.strip(), v.strip()))
    return SipReply(lines[0], headers, body)


def split_stream(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete messages at the start of a TCP byte stream, and what is left over."""
    out = []
    while True:
        buffer = buffer.lstrip(b"\r\n")
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return out, buffer
        m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", buffer[:end])
        length = int(m.group(1)) if m else 0
        total = end + 4 + length
        if len(buffer) < total:
            return out, buffer
        out.append(buffer[:total])
        buffer = buffer[total:]


# ---- what a run saw ------------------------------------------------------------------------------


@dataclass
class FuzzReport:
    seed: int
    sent: Counter = field(default_factory=Counter)  # by transport
    bases: Counter = field(default_factory=Counter)
    mutations: Counter = field(default_factory=Counter)  # by mutation family
    responses: Counter = field(default_factory=Counter)  # status code -> responses attributed to a message
    finals_by_base: Counter = field(default_factory=Counter)  # (base, first final status) per message
    answered: int = 0  # messages with at least one response
    unattributed: int = 0  # responses matching no message we sent (mangled Via and Call-ID)
    server_requests: Counter = field(default_factory=Counter)  # requests the server sent us, by method
    malformed_invites: int = 0  # INVITEs a conforming server must refuse, from sources it would admit
    malformed_invites_2xx: list[str] = field(default_factory=list)
    lenient_invites_2xx: list[str] = field(default_factory=list)  # accepted although a strict server would not
    server_died_after: list[str] = field(default_factory=list)  # the last messages sent, if the server died
    invites_2xx: int = 0  # INVITEs (any) answered 2xx
    controls_sent: int = 0  # unmutated messages over UDP (not ACKs)
    controls_answered: int = 0
    send_errors: Counter = field(default_factory=Counter)
    known_failures_skipped: Counter = field(default_factory=Counter)  # not sent: see KNOWN_FAILURES
    tcp_connections: int = 0
    tcp_split_messages: int = 0
    tcp_closed_mid_message: int = 0
    tcp_closed_by_server: int = 0
    dialogs: int = 0  # calls the driver set up for in-dialog messages
    seconds: float = 0.0
    examples: dict = field(default_factory=dict)  # one label per (base, code)

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def summary(self) -> str:
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.responses.items()))
        lines = [
            f"fuzz seed {self.seed}: {self.total} messages in {self.seconds:.1f} s "
            f"({', '.join(f'{t} {n}' for t, n in sorted(self.sent.items()))})",
            f"  answered: {self.answered} messages; responses (provisional and final, retransmissions too) by code: {codes or 'none'}; "
            f"unattributed responses: {self.unattributed}",
            f"  INVITEs answered 2xx: {self.invites_2xx}; malformed INVITEs from admitted sources: "
            f"{self.malformed_invites}, answered 2xx: {len(self.malformed_invites_2xx)}; accepted by pjsip's "
            f"leniency ({BEYOND_DATAGRAM}): {len(self.lenient_invites_2xx)}",
            f"  unmutated UDP controls answered: {self.controls_answered}/{self.controls_sent}; known failures "
            f"not sent: {dict(self.known_failures_skipped) or 'none'}",
            f"  TCP: {self.tcp_connections} connections, {self.tcp_split_messages} messages split across writes, "
            f"{self.tcp_closed_mid_message} closed mid-message, {self.tcp_closed_by_server} closed by the server",
            *([f"  THE SERVER DIED after: {self.server_died_after[-1]}"] if self.server_died_after else []),
            f"  dialogs set up for in-dialog messages: {self.dialogs}; requests from the server: "
            f"{dict(self.server_requests) or 'none'}; send errors: {dict(self.send_errors) or 'none'}",
            "  bases: " + ", ".join(f"{b} {n}" for b, n in sorted(self.bases.items())),
            "  mutations: " + ", ".join(f"{m} {n}" for m, n in sorted(self.mutations.items())),
        ]
        by_base: dict[str, list[str]] = {}
        for (base, code), n in sorted(self.finals_by_base.items()):
            by_base.setdefault(base, []).append(f"{code}x{n}")
        lines += [f"  first final response, {base}: {' '.join(codes)}" for base, codes in sorted(by_base.items())]
        return "\n".join(lines)


# ---- the driver ----------------------------------------------------------------------------------


@dataclass
class _Sent:
    msg: FuzzMessage
    admissible: bool  # an unmutated copy would be admitted (a trunk source, or valid credentials)
    codes: list[int] = field(default_factory=list)


class _Endpoint:
    """One local socket (UDP) or connection (TCP) we send from and read replies on."""

    def __init__(self, sock: socket.socket, transport: str) -> None:
        self.sock = sock
        self.transport = transport
        self.ip, self.port = sock.getsockname()[:2]
        self.buffer = b""
        self.closed = False

    def send(self, data: bytes, server: tuple[str, int]) -> None:
        if self.transport == "UDP":
            self.sock.sendto(data, server)
        else:
            self.sock.sendall(data)


class FuzzDriver:
    """Sends a mutator's messages to a SIP server and accounts for every answer.

    `trunk_ips` are sources the server admits as trunks (their INVITEs need no credentials);
    `phone_ips` are other sources, whose INVITEs carry `user`'s digest credentials. REGISTERs
    use `register_user` (so the fuzz never touches the bindings of the extensions a test uses).
    """

    def __init__(self, server: tuple[str, int], seed: int, *, trunk_ips: Iterable[str] = ("127.0.0.3",),
                 phone_ips: Iterable[str] = ("127.0.0.2",), user: tuple[str, str] = ("1001", "pass1001"),
                 register_user: tuple[str, str] = ("1002", "pass1002"), realm: str = "softswitch",
                 log: Callable[[str], None] | None = None, send_known_failures: bool = False,
                 alive: Callable[[], bool] | None = None) -> None:
        self.server = server
        # Whether the server still runs: a test passes its process check; by default an OPTIONS probe.
        self.alive = alive or (lambda: any(sip_options_ok(server[1], server[0], 0.5) for _ in range(3)))
        self._dead = threading.Event()
        self._last_sent: deque[str] = deque(maxlen=20)
        self.mutator = SipMutator(seed)
        self.send_known_failures = send_known_failures
        self.trunk_ips = tuple(trunk_ips)
        self.phone_ips = tuple(phone_ips)
        self.user, self.register_user, self.realm = user, register_user, realm
        self.report = FuzzReport(seed)
        self.log = log or (lambda text: None)
        self._lock = threading.RLock()
        self._sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._by_branch: dict[str, _Sent] = {}
        self._by_call_id: dict[str, _Sent] = {}
        self._nonces: dict[str, str] = {}
        self._nc: Counter = Counter()
        self._udp: dict[str, _Endpoint] = {}
        self._sinks: dict[str, socket.socket] = {}
        self._acked: set[tuple[str, int]] = set()
        self._byed: set[str] = set()
        self._dialog: Dialog | None = None
        self._dialog_pending: tuple[str, str] | None = None  # (call_id, tag) of the INVITE setting one up
        self._dialog_ready = threading.Event()
        self._own_calls: set[str] = set()  # Call-IDs of the driver's own (unfuzzed) INVITEs
        self._waiters: dict[str, Callable[[SipReply], None]] = {}  # Call-ID -> one-shot reply handler
        self._own_branches: set[str] = set()  # Via branches of the driver's own ACKs and BYEs
        self._reader = threading.Thread(target=self._read_loop, name="fuzz-reader", daemon=True)

    # ---- set-up ---------------------------------------------------------------------------------
    def __enter__(self) -> "FuzzDriver":
        for ip in self.trunk_ips + self.phone_ips:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((ip, 0))
            sock.setblocking(False)
            ep = _Endpoint(sock, "UDP")
            self._udp[ip] = ep
            self._sel.register(sock, selectors.EVENT_READ, ep)
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # our SDP's RTP address: never read,
            sink.bind((ip, 0))  # so the server's RTP lands in a full buffer rather than an ICMP error
            self._sinks[ip] = sink
        self._reader.start()
        for ip in self.phone_ips + self.trunk_ips:
            self._nonces[ip] = self._fetch_nonce(ip)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._end_dialog()
        time.sleep(0.3)
        self._stop.set()
        self._reader.join(5)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()
        self._sel.close()
        for sink in self._sinks.values():
            sink.close()

    def _peer(self, ep: _Endpoint) -> Peer:
        return Peer(self.server[0], self.server[1], ep.transport, ep.ip, ep.port,
                    self._sinks[ep.ip].getsockname()[1])

    def _fetch_nonce(self, ip: str) -> str:
        """A real nonce for `ip` (the server binds nonces to the source address): REGISTER, read the 401."""
        ep = self._udp[ip]
        tag = uuid.uuid4().hex[:10]
        ids = _Ids(f"nonce-{tag}", tag, "z9hG4bKn" + tag, "c")
        msg = _register(self._peer(ep), ids, None, None).encode()
        got = threading.Event()
        box: list[str] = []

        def on_reply(reply: SipReply) -> None:
            challenge = reply.header("WWW-Authenticate") or ""
            m = re.search(r'nonce="([^"]+)"', challenge)
            if reply.status == 401 and m:
                box.append(m.group(1))
                got.set()

        with self._lock:
            self._waiters[ids.call_id] = on_reply
        for _ in range(10):
            ep.send(msg, self.server)
            if got.wait(1.0):
                return box[0]
        raise RuntimeError(f"the server at {self.server} sent no digest challenge to a REGISTER from {ip}")

    def credentials(self, ip: str, user: tuple[str, str]) -> Credentials:
        nonce = self._nonces[ip]
        with self._lock:
            self._nc[nonce] += 1
            nc = self._nc[nonce]
        return Credentials(user[0], user[1], self.realm, nonce, nc)

    # ---- the dialog in-dialog messages go to ---------------------------------------------------
    def _establish_dialog(self) -> None:
        self._end_dialog()
        ip = self.trunk_ips[0]
        ep = self._udp[ip]
        tag = uuid.uuid4().hex[:10]
        ids = _Ids(f"dialog-{tag}", tag, "z9hG4bKd" + tag, "c")
        msg = _invite_trunk(self._peer(ep), ids, None, None).encode()
        self._dialog_ready.clear()
        with self._lock:
            self._dialog_pending = (ids.call_id, tag)
            self._own_calls.add(ids.call_id)
        ep.send(msg, self.server)
        if self._dialog_ready.wait(5.0):
            self.report.dialogs += 1
        elif self._check_alive():
            self.log("the server did not answer the driver's own INVITE within 5 s")

    def _end_dialog(self) -> None:
        with self._lock:
            dialog, self._dialog = self._dialog, None
        if dialog is None or not self._udp:
            return
        ep = self._udp[self.trunk_ips[0]]
        ids = _Ids(dialog.call_id, dialog.local_tag, "z9hG4bKe" + uuid.uuid4().hex[:10], "c")
        bye = _in_dialog("BYE", self._peer(ep), ids, dataclasses.replace(dialog, cseq=dialog.cseq + 50))
        try:
            ep.send(bye.encode(), self.server)
        except OSError:
            pass

    def dialog(self) -> Dialog | None:
        with self._lock:
            if self._dialog is None:
                return None
            d = self._dialog
            self._dialog = dataclasses.replace(d, cseq=d.cseq + 1)
            return d

    def _check_alive(self) -> bool:
        """False (and the run stops, naming the last messages sent) once the server is gone."""
        if self._dead.is_set():
            return False
        if self.alive():
            return True
        with self._lock:
            if not self._dead.is_set():
                self._dead.set()
                self.report.server_died_after = list(self._last_sent)
                self.log("the server is gone; the last messages sent:\n  " + "\n  ".join(self._last_sent))
        return False

    # ---- sending ---------------------------------------------------------------------------------
    def _message(self, index: int, ep: _Endpoint) -> _Sent:
        base = self.mutator.base_of(index)
        peer = self._peer(ep)
        trunk = ep.ip in self.trunk_ips
        creds = None
        if base in ("invite_extension",):
            creds = self.credentials(ep.ip, self.user)
        elif base in ("register_auth", "register"):
            creds = self.credentials(ep.ip, self.register_user)
        dialog = self.dialog() if base in ("reinvite", "bye", "ack", "info_dtmf", "info_dtmf_relay") else None
        msg = self.mutator.build(index, peer, credentials=creds, dialog=dialog)
        admissible = (base == "invite_extension" or (base == "invite_trunk" and trunk)
                      or (base == "reinvite" and dialog is not None))
        return _Sent(msg, admissible)

    @staticmethod
    def _control(msg: FuzzMessage) -> bool:
        """An unmutated message that must be answered: not an ACK (nothing answers one), and not
        over TCP, where a message after a badly framed one is read as that one's body."""
        return not msg.mutations and msg.method != "ACK" and msg.peer.transport == "UDP"

    def _record(self, sent: _Sent) -> bool:
        """Account for a message about to be sent; False: do not send it (a known failure)."""
        msg = sent.msg
        with self._lock:
            if msg.known_failure and not self.send_known_failures:
                self.report.known_failures_skipped[msg.known_failure] += 1
                return False
            self.report.sent[msg.peer.transport] += 1
            self.report.bases[msg.base] += 1
            for label in msg.mutations:
                self.report.mutations[label.split(":", 1)[0]] += 1
            if self._control(msg):
                self.report.controls_sent += 1
            self._last_sent.append(f"{time.strftime('%H:%M:%S')} {msg.label}")
            kept = _Sent(dataclasses.replace(msg, data=b""), sent.admissible)  # long runs: not every message's bytes
            if msg.branch:
                self._by_branch[msg.branch] = kept
            if msg.call_id:
                self._by_call_id[msg.call_id] = kept
            if msg.base in INVITE_BASES and msg.malformed and sent.admissible:
                self.report.malformed_invites += 1
        return True

    def run_udp(self, count: int, rate: float, *, start: int = 0, dialog_every: int = 300) -> None:
        """Send `count` mutated messages over UDP, alternating sources, at most `rate` per second."""
        ips = self.trunk_ips + self.phone_ips
        began = time.monotonic()
        for n in range(count):
            index = start + n
            if n % 50 == 0 and not self._check_alive():
                return
            if n % dialog_every == 0 or (self._dialog is None and n % 20 == 0):
                self._establish_dialog()
            ep = self._udp[ips[index % len(ips)]]
            sent = self._message(index, ep)
            if not self._record(sent):
                continue
            try:
                ep.send(sent.msg.data, self.server)
            except OSError as exc:
                with self._lock:
                    self.report.send_errors[f"udp {exc.errno}"] += 1
            delay = began + (n + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def run_tcp(self, count: int, rate: float, *, start: int = 0, connections: int = 20) -> None:
        """Send `count` messages over several TCP connections: some split across writes, some
        connections closed in the middle of a message (the rest of it never sent)."""
        rng = random.Random(f"{self.mutator.seed}/tcp")
        ips = self.trunk_ips + self.phone_ips
        per_conn = max(1, count // connections)
        began = time.monotonic()
        n = 0
        conn_no = 0
        while n < count:
            if not self._check_alive():
                return
            ip = ips[conn_no % len(ips)]
            conn_no += 1
            try:
                sock = socket.create_connection(self.server, timeout=5, source_address=(ip, 0))
            except OSError as exc:
                with self._lock:
                    self.report.send_errors[f"tcp connect {exc.errno}"] += 1
                    refused = self.report.send_errors[f"tcp connect {exc.errno}"]
                if refused >= 5 and not self._check_alive():
                    return
                time.sleep(0.2)
                continue
            sock.setblocking(True)
            sock.settimeout(5)
            ep = _Endpoint(sock, "TCP")
            with self._lock:
                self.report.tcp_connections += 1
                self._sel.register(sock, selectors.EVENT_READ, ep)
            close_mid = rng.random() < 0.3
            in_this = min(per_conn, count - n)
            # Where the cut falls: anywhere in the connection, not only at its last message, since the
            # server closes a connection itself after a request over the size limit (513).
            close_at = rng.randrange(in_this) if close_mid else -1
            for k in range(in_this):
                if self._dead.is_set():
                    break
                index = start + n
                n += 1
                sent = self._message(index, ep)
                if not self._record(sent):
                    continue
                data = sent.msg.data
                try:
                    if k == close_at:
                        ep.send(data[:rng.randrange(1, len(data))], self.server)
                        with self._lock:
                            self.report.tcp_closed_mid_message += 1
                        break
                    elif rng.random() < 0.25:
                        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(1, 4))))
                        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
                        for piece in pieces:
                            ep.send(piece, self.server)
                            time.sleep(rng.choice((0, 0.001, 0.02)))
                        with self._lock:
                            self.report.tcp_split_messages += 1
                    else:
                        ep.send(data, self.server)
                except OSError as exc:
                    with self._lock:
                        self.report.send_errors[f"tcp send {exc.errno}"] += 1
                        self.report.tcp_closed_by_server += 1
                    break
                delay = began + n / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            time.sleep(0.05)  # let the server's last answers arrive before closing
            with self._lock:
                try:
                    self._sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
            sock.close()

    def run(self, udp: int, tcp: int, *, rate: float = 150.0, tcp_rate: float | None = None,
            connections: int = 20, drain: float = 2.0) -> FuzzReport:
        """UDP and TCP at once (UDP indexes 0..udp-1, TCP after them); returns the report."""
        began = time.monotonic()
        failed: list[BaseException] = []

        def tcp_part() -> None:
            try:
                self.run_tcp(tcp, tcp_rate or rate / 2, start=udp, connections=connections)
            except BaseException as exc:  # re-raised below, in the caller's thread
                failed.append(exc)

        tcp_thread = threading.Thread(target=tcp_part, name="fuzz-tcp", daemon=True)
        tcp_thread.start()
        self.run_udp(udp, rate)
        tcp_thread.join()
        if failed:
            raise failed[0]
        time.sleep(drain)
        self._end_dialog()
        self.report.seconds = time.monotonic() - began
        return self.report

    # ---- receiving -------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                events = self._sel.select(0.05)
            except (OSError, ValueError):
                time.sleep(0.05)
                continue
            for key, _ in events:
                ep: _Endpoint = key.data
                try:
                    data = ep.sock.recv(65535)
                except (BlockingIOError, InterruptedError, socket.timeout):
                    continue
                except OSError:
                    data = b""
                if ep.transport == "UDP":
                    if data:
                        self._on_message(ep, data)
                    continue
                if not data:
                    with self._lock:
                        try:
                            self._sel.unregister(ep.sock)
                        except (KeyError, ValueError):
                            pass
                        if not ep.closed:
                            self.report.tcp_closed_by_server += 1
                        ep.closed = True
                    continue
                ep.buffer += data
                messages, ep.buffer = split_stream(ep.buffer)
                for message in messages:
                    self._on_message(ep, message)

    def _on_message(self, ep: _Endpoint, data: bytes) -> None:
        reply = parse_reply(data)
        if reply is None:
            return
        if reply.status is None:
            self._answer_request(ep, reply)
            return
        with self._lock:
            waiter = self._waiters.pop(reply.call_id or "", None)
        if waiter is not None:
            waiter(reply)
            return
        with self._lock:
            pending = self._dialog_pending
            if pending and reply.call_id == pending[0]:
                if reply.status >= 200:
                    self._dialog_pending = None
                    if 200 <= reply.status < 300:
                        self._dialog = self._dialog_from(reply, pending[1])
                        self._ack(ep, reply)
                    self._dialog_ready.set()
                return
            sent = self._by_branch.get(reply.branch or "")
            if sent is None and reply.call_id in self._own_calls:  # the dialog's own INVITE, retransmitted
                if 200 <= reply.status < 300 and reply.cseq_method == "INVITE":
                    self._ack(ep, reply)
                return
            sent = sent or self._by_call_id.get(reply.call_id or "")
            if sent is None:
                self.report.unattributed += 1
                return
            if reply.branch in self._own_branches:
                return  # the answer to our own ACK-and-BYE after a 2xx
            if not sent.codes:
                self.report.answered += 1
                if self._control(sent.msg):
                    self.report.controls_answered += 1
            if reply.status >= 200 and not any(code >= 200 for code in sent.codes):
                self.report.finals_by_base[(sent.msg.base, reply.status)] += 1
                self.report.examples.setdefault((sent.msg.base, reply.status), sent.msg.label)
            sent.codes.append(reply.status)
            self.report.responses[reply.status] += 1
            if (self._dialog is not None and sent.msg.method == "BYE" and reply.status == 200
                    and reply.call_id == self._dialog.call_id):
                self._dialog = None  # a BYE that got through: the next in-dialog messages need a new call
            if 200 <= reply.status < 300 and reply.cseq_method == "INVITE" and sent.msg.method == "INVITE":
                first_2xx = reply.status not in sent.codes[:-1]
                if first_2xx:
                    self.report.invites_2xx += 1
                    if sent.msg.malformed and sent.admissible:
                        self.report.malformed_invites_2xx.append(
                            f"{sent.msg.label} (malformed: {'; '.join(sent.msg.malformed)})")
                    elif sent.msg.lenient and sent.admissible:
                        self.report.lenient_invites_2xx.append(sent.msg.label)
                self._ack(ep, reply)
                if reply.call_id and reply.call_id not in self._byed and not (
                        self._dialog and reply.call_id == self._dialog.call_id):
                    self._byed.add(reply.call_id)
                    self._bye(ep, reply)

    @staticmethod
    def _dialog_from(reply: SipReply, tag: str) -> Dialog:
        to = reply.header("To", "t") or ""
        remote_tag = re.search(r";\s*tag=([^;>\s]+)", to)
        contact = re.search(r"<([^>]+)>", reply.header("Contact", "m") or "")
        return Dialog(reply.call_id or "", tag, remote_tag.group(1) if remote_tag else "",
                      contact.group(1) if contact else "sip:5550100@127.0.0.1", "5551000", "5550100", 2)

    def _in_dialog_reply(self, ep: _Endpoint, reply: SipReply, method: str, cseq: int) -> bytes:
        contact = re.search(r"<([^>]+)>", reply.header("Contact", "m") or "")
        uri = contact.group(1) if contact else f"sip:{self.server[0]}:{self.server[1]}"
        branch = f"z9hG4bKa{uuid.uuid4().hex[:12]}"
        with self._lock:
            self._own_branches.add(branch)
        lines = [f"{method} {uri} SIP/2.0",
                 f"Via: SIP/2.0/{ep.transport} {ep.ip}:{ep.port};branch={branch};rport",
                 "Max-Forwards: 70",
                 f"From: {reply.header('From', 'f') or ''}",
                 f"To: {reply.header('To', 't') or ''}",
                 f"Call-ID: {reply.call_id or ''}",
                 f"CSeq: {cseq} {method}",
                 "Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode("latin-1", "replace")

    def _ack(self, ep: _Endpoint, reply: SipReply) -> None:
        key = (reply.call_id or "", reply.cseq_number)
        try:
            ep.send(self._in_dialog_reply(ep, reply, "ACK", reply.cseq_number), self.server)
            self._acked.add(key)
        except OSError:
            pass

    def _bye(self, ep: _Endpoint, reply: SipReply) -> None:
        try:
            ep.send(self._in_dialog_reply(ep, reply, "BYE", reply.cseq_number + 1), self.server)
        except OSError:
            pass

    def _answer_request(self, ep: _Endpoint, request: SipReply) -> None:
        method = request.method or "?"
        with self._lock:
            self.report.server_requests[method] += 1
            if self._dialog and request.call_id == self._dialog.call_id and method == "BYE":
                self._dialog = None
        if method == "ACK":
            return
        lines = ["SIP/2.0 200 OK", *[f"Via: {v}" for v in request.all("Via", "v")],
                 f"From: {request.header('From', 'f') or ''}", f"To: {request.header('To', 't') or ''}",
                 f"Call-ID: {request.call_id or ''}", f"CSeq: {request.header('CSeq') or ''}",
                 "Content-Length: 0", "", ""]
        try:
            ep.send("\r\n".join(lines).encode("latin-1", "replace"), self.server)
        except OSError:
            pass
