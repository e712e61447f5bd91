"""Outbound calls: one outbound `Leg` per target, through a trunk, a connection or to a phone.

This is the SIP half of the reference's `dial.make` (§2.3 "Resource Dial", §4): the dial model
(strategies, dial events, winners) sits on top and only sees legs and their events. Everything
runs on the UA thread.

Three things pjsua2 2.12 cannot do per call are done around it:
- **Caller ID.** From comes from the account, so a caller number/name gets an account of its
  own whose idUri carries it, kept in an LRU (pjsua has 1024 account slots in our build, so up
  to 960 caller IDs can be in live calls at once).
  Calls towards providers also carry P-Asserted-Identity.
- **Codec allow-lists.** Codec priorities are global, but the SDP offer is built synchronously
  inside `makeCall` and the UA thread is the only one touching pjsua, so the allow-list is
  applied right before `makeCall` and the global list restored right after.
- **DTMF methods** cannot be restricted per call; the allowed list is kept on the leg
  (`leg.dtmf_methods`) for the nodes that send or accept DTMF.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Literal, Sequence

import _softswitch_native as native
import pjsua2 as pj

from . import srtp
from .events import LegEvent
from .legs import Leg, SipCall
from .trunks import ForwardingAccount, account_config, connection_id_uri, quote_display_name

if TYPE_CHECKING:
    from ..config import Config, Connection
    from .endpoint import UserAgent
    from .registrar import Binding
    from .trunks import Trunks

log = logging.getLogger("softswitch.dialer")

ACCOUNTS_KEPT_FREE = 64  # pjsua accounts left for the local account and the provider connections
DEFAULT_DTMF_METHODS: tuple[str, ...] = ("rfc2833", "info")

# The user part of a destination: numbers and SIP user names, nothing that changes the URI.
_USER_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,%]+")
_HEADER_NAME_RE = re.compile(r"[A-Za-z0-9!%'*+\-.^_`|~]+")
# Headers pjsip writes itself: a second copy would make the INVITE invalid.
_RESERVED_HEADERS = frozenset(h.lower() for h in (
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Length", "Content-Type", "Max-Forwards",
    "Route", "Record-Route", "Allow", "Supported", "Require", "Session-Expires", "Min-SE", "Authorization",
    "Proxy-Authorization", "f", "t", "i", "v", "m", "l", "c", "k"))

DialKind = Literal["trunk", "direct", "extension"]
EndpointKey = tuple[str, str]  # (username, contact) of one registered endpoint


class DialError(Exception):
    """A call could not be placed; the message says why and what to change."""


@dataclass(frozen=True)
class DialTarget:
    """What an outbound leg was dialled to, for the dial model and for `only_free`."""

    kind: DialKind
    ref: str  # trunk ref, connection name, or extension number
    uri: str  # the Request-URI of the INVITE
    endpoint: EndpointKey | None = None  # extension calls: the registered endpoint
    codecs: tuple[str, ...] = ()
    dtmf_methods: tuple[str, ...] = DEFAULT_DTMF_METHODS


@dataclass(frozen=True)
class ExtensionEndpoint:
    """One registered endpoint of an extension: one attempt of an extension dial."""

    number: str
    binding: "Binding"

    @property
    def label(self) -> str:
        return f"{self.number} at {self.binding.contact}"


@dataclass
class _CachedAccount:
    account: ForwardingAccount
    legs: set[str] = field(default_factory=set)  # leg ids placed from this account


class _CallerIdAccounts:
    """An LRU of pjsua2 accounts whose idUri carries a caller number and name.

    An account is only evicted once no leg placed from it is still known to the UA (pjsua keeps
    using the account until the call is destroyed, a loop turn after it ended)."""

    def __init__(self, ua: "UserAgent", capacity: int | None = None) -> None:
        self.ua = ua
        # Every caller ID in a live outbound call holds an account (an agent leg showing the
        # customer's number, for its whole talk time): as many as the build allows.
        self.capacity = capacity or max(8, native.limits().get("max_accounts", 64) - ACCOUNTS_KEPT_FREE)
        self._entries: OrderedDict[tuple[str, ...], _CachedAccount] = OrderedDict()

    def get(self, key: tuple[str, ...], make_config: Callable[[], "pj.AccountConfig"]) -> ForwardingAccount:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry.account
        if len(self._entries) >= self.capacity:
            self._evict_one()
        account = ForwardingAccount(self.ua)
        try:
            account.create(make_config(), False)
        except pj.Error as exc:
            raise DialError(f"cannot create an account for caller ID {key[1]!r} {key[2]!r}: "
                            f"{exc.reason or exc.info()}") from None
        self._entries[key] = _CachedAccount(account)
        return account

    def use(self, key: tuple[str, ...], leg_id: str) -> None:
        self._entries[key].legs.add(leg_id)

    def _evict_one(self) -> None:
        for key, entry in self._entries.items():  # least recently used first
            entry.legs = {leg_id for leg_id in entry.legs if leg_id in self.ua.legs}
            if not entry.legs:
                del self._entries[key]
                self.ua.guard("caller-ID account shutdown", entry.account.destroy)
                return
        raise DialError(f"{self.capacity} different caller IDs are all in live calls; wait for one of those calls "
                        "to end or dial without a caller number/name")

    def __len__(self) -> int:
        return len(self._entries)

    def shutdown(self) -> None:
        for entry in self._entries.values():
            self.ua.guard("caller-ID account shutdown", entry.account.destroy)
        self._entries.clear()


class _Codecs:
    """Codec priorities by allow-list, the same way `UserAgent._set_codecs` sets the global list."""

    def __init__(self, ep: "pj.Endpoint") -> None:
        self.ep = ep
        self._ids = [info.codecId for info in ep.codecEnum2()]  # e.g. "PCMU/8000/1"

    @property
    def names(self) -> list[str]:
        return sorted({cid.split("/")[0] for cid in self._ids})

    def available(self, codecs: Sequence[str]) -> list[str]:
        names = {n.lower() for n in self.names}
        return [c for c in codecs if c.lower() in names]

    def apply(self, codecs: Sequence[str]) -> None:
        wanted = [c.lower() for c in codecs]
        for cid in self._ids:
            name = cid.split("/")[0].lower()
            self.ep.codecSetPriority(cid, 250 - wanted.index(name) if name in wanted else 0)


class Dialer:
    """Places outbound calls; owned by the UserAgent (`ua.dialer`)."""

    def __init__(self, ua: "UserAgent", config: "Config", trunks: "Trunks") -> None:
        self.ua = ua
        self.config = config
        self.trunks = trunks
        self._codecs = _Codecs(ua.ep)
        self._caller_ids = _CallerIdAccounts(ua)
        self._targets: dict[str, DialTarget] = {}  # leg id -> target, while the UA knows the leg

    # ---- the API --------------------------------------------------------------------------
    def dial_trunk(self, trunk_ref: str, destination: str, *, caller_number: str | None = None,
                   caller_name: str | None = None, headers: Iterable[tuple[str, str]] = (),
                   on_event: Callable[[LegEvent], None] | None = None) -> Leg:
        """Call `destination` (a number or SIP user, no host) through a trunk: via its connection
        for a fixed trunk, or to where a dynamic trunk registered from."""
        trunk = self.config.trunks.get(trunk_ref)
        if trunk is None:
            known = ", ".join(self.config.trunks) or "none defined"
            raise DialError(f"no trunk named {trunk_ref!r} (trunks: {known})")
        user = _user_part(destination)
        extra = _checked_headers(headers)
        codecs = tuple(trunk.codecs) if trunk.codecs is not None else tuple(self.config.media.codecs)
        dtmf = tuple(trunk.dtmf_methods) if trunk.dtmf_methods is not None else DEFAULT_DTMF_METHODS
        if trunk.mode == "dynamic":
            binding = self.ua.registrar.dynamic_trunk_binding(trunk_ref)
            if binding is None:
                raise DialError(f"dynamic trunk {trunk_ref!r} has no live registration: it must register to "
                                f"softswitch (as {trunk.username!r}) before calls can be sent to it")
            uri = _with_user(binding.target_uri, user)
            account, cache_key = self._local_account(caller_number, caller_name, trunk.srtp,
                                                     tls=binding.transport.upper() == "TLS")
            extra += self._pai(caller_number, caller_name, self._local_host())
        else:
            if trunk.connection is None:
                raise DialError(f"trunk {trunk_ref!r} has no connection to dial through: set "
                                f"trunks.{trunk_ref}.connection to one of the `connections`")
            conn = self._connection(trunk.connection)
            uri = _server_uri(conn, user)
            account, cache_key = self._connection_account(conn, caller_number, caller_name)
            extra += self._pai(caller_number, caller_name, conn.sip_server)
        target = DialTarget("trunk", trunk_ref, uri, None, codecs, dtmf)
        return self._place(account, cache_key, target, extra, on_event)

    def dial_direct(self, connection_name: str, destination: str, *, caller_number: str | None = None,
                    caller_name: str | None = None, headers: Iterable[tuple[str, str]] = (),
                    codecs: Sequence[str] | None = None, dtmf_methods: Sequence[str] | None = None,
                    on_event: Callable[[LegEvent], None] | None = None) -> Leg:
        """Call `sip:<destination>@<sip_server>:<port>` with the connection's credentials."""
        conn = self._connection(connection_name)
        uri = _server_uri(conn, _user_part(destination))
        extra = _checked_headers(headers)
        account, cache_key = self._connection_account(conn, caller_number, caller_name)
        extra += self._pai(caller_number, caller_name, conn.sip_server)
        target = DialTarget("direct", connection_name, uri, None, self._codec_list(codecs),
                            tuple(dtmf_methods) if dtmf_methods is not None else DEFAULT_DTMF_METHODS)
        return self._place(account, cache_key, target, extra, on_event)

    def extension_endpoints(self, numbers: Iterable[str], *, only_free: bool = True) -> list["ExtensionEndpoint"]:
        """The endpoints an extension dial would ring, in order: numbers as given (duplicates
        dropped), then each number's registered endpoints by contact. With `only_free`, endpoints
        already in a live call are left out. Empty means none is available (`Unavailable`)."""
        extensions = self.ua.extensions
        endpoints: list[ExtensionEndpoint] = []
        seen: set[str] = set()
        for number in numbers:
            number = number.strip()
            if not number or number in seen:
                continue
            seen.add(number)
            for binding in sorted(extensions.endpoints(number, only_free=only_free), key=lambda b: b.contact):
                endpoints.append(ExtensionEndpoint(number, binding))
        return endpoints

    def dial_endpoint(self, endpoint: "ExtensionEndpoint", *, only_free: bool = True, caller_number: str | None = None,
                      caller_name: str | None = None, headers: Iterable[tuple[str, str]] = (),
                      codecs: Sequence[str] | None = None, dtmf_methods: Sequence[str] | None = None,
                      on_event: Callable[[LegEvent], None] | None = None) -> Leg:
        """Ring one endpoint of an extension (tracked in `ua.extensions` until the leg ends).

        The endpoint is checked again first: a sequential dial rings endpoints planned seconds
        ago, which may have unregistered or (with `only_free`) started another call since."""
        extra = _checked_headers(headers)
        # Checks the caller ID first; SRTP as the phone's extension set wants it, TLS if it registered so.
        account, cache_key = self._local_account(caller_number, caller_name,
                                                 srtp.extension_set_use(self.config, endpoint.binding.group),
                                                 tls=endpoint.binding.transport.upper() == "TLS")
        extensions = self.ua.extensions
        current = extensions.endpoints(endpoint.number, only_free=only_free)
        if not any(b.contact == endpoint.binding.contact for b in current):
            state = "busy or unregistered" if only_free else "unregistered"
            raise DialError(f"extension {endpoint.number} endpoint {endpoint.binding.contact} is {state} now")
        binding = next(b for b in current if b.contact == endpoint.binding.contact)
        target = DialTarget("extension", endpoint.number, binding.target_uri, (binding.username, binding.contact),
                            self._codec_list(codecs),
                            tuple(dtmf_methods) if dtmf_methods is not None else DEFAULT_DTMF_METHODS)
        leg = self._place(account, cache_key, target, extra, on_event)
        if not leg.ended:
            extensions.track_leg(leg, endpoint.number, binding)
        return leg

    def dial_extension(self, numbers: Iterable[str], *, only_free: bool = True, caller_number: str | None = None,
                       caller_name: str | None = None, headers: Iterable[tuple[str, str]] = (),
                       codecs: Sequence[str] | None = None, dtmf_methods: Sequence[str] | None = None,
                       on_event: Callable[[LegEvent], None] | None = None) -> list[Leg]:
        """Ring every endpoint of `extension_endpoints` at once. An empty list means none is
        available (reference: the `Unavailable` branch)."""
        headers = _checked_headers(headers)
        self._local_account(caller_number, caller_name)  # a bad caller ID fails the dial, not each phone
        legs: list[Leg] = []
        for endpoint in self.extension_endpoints(numbers, only_free=only_free):
            try:
                legs.append(self.dial_endpoint(endpoint, only_free=only_free, caller_number=caller_number,
                                               caller_name=caller_name, headers=headers, codecs=codecs,
                                               dtmf_methods=dtmf_methods, on_event=on_event))
            except DialError as exc:  # one bad contact must not stop the other phones ringing
                log.warning("extension %s: cannot call endpoint %s: %s", endpoint.number,
                            endpoint.binding.contact, exc)
        return legs

    @staticmethod
    def check_call_options(caller_number: str | None = None, caller_name: str | None = None,
                           headers: Iterable[tuple[str, str]] = ()) -> None:
        """Refuse a bad caller ID or custom header before any attempt is placed (DialError)."""
        _checked_headers(headers)
        _caller_number(caller_number)
        _caller_name(caller_name)

    def target_of(self, leg_id: str) -> DialTarget | None:
        """What an outbound leg placed here was dialled to (while the UA still knows the leg)."""
        return self._targets.get(leg_id)

    def shutdown(self) -> None:
        """Drop the caller-ID accounts; before libDestroy (the legs are gone by then)."""
        self._targets.clear()
        self._caller_ids.shutdown()

    # ---- placing one call ------------------------------------------------------------------
    def _place(self, account: "pj.Account", cache_key: tuple[str, ...] | None, target: DialTarget,
               headers: Sequence[tuple[str, str]], on_event: Callable[[LegEvent], None] | None) -> Leg:
        if not [c for c in self._codecs.available(target.codecs) if c.lower() != "telephone-event"]:
            raise DialError(f"none of the codecs {list(target.codecs)} allowed for this call is available "
                            f"in this build (available: {', '.join(self._codecs.names)})")
        prm = pj.CallOpParam(True)  # True: default call settings (one audio stream)
        prm.txOption.headers = _header_vector(headers)
        leg = Leg(self.ua, SipCall(self.ua, account), "outbound")
        if cache_key is not None:
            self._caller_ids.use(cache_key, leg.id)
        leg.dtmf_methods = target.dtmf_methods
        if on_event is not None:
            leg.subscribe(on_event)  # before makeCall: a synchronous failure must be seen too
        self.ua.legs[leg.id] = leg
        self._prune()
        self._targets[leg.id] = target
        swap = list(target.codecs) != [c for c in self.config.media.codecs]
        try:
            if swap:
                self._codecs.apply(target.codecs)
            try:
                # pjsua's RTP port cursor is per account: continue from where the last call left
                # off, and let the next inbound call continue from here.
                native.rtp_cursor_enter(account.getId())
                leg.call.makeCall(target.uri, prm)
                native.rtp_cursor_leave(account.getId())
                native.rtp_cursor_enter(self.ua.account.getId())
            finally:
                if swap:
                    self._codecs.apply(self.config.media.codecs)
        except pj.Error as exc:
            self.ua.legs.pop(leg.id, None)
            self._targets.pop(leg.id, None)
            if leg.call is not None:
                leg.call.release()  # pjsua may already have given its slot number to another call
            raise DialError(f"cannot call {target.uri}: {exc.reason or exc.info()}") from None
        log.info("%s: calling %s via %s %s", leg.id, target.uri, target.kind, target.ref)
        self.ua.leg_created(leg)
        return leg

    # ---- accounts and identities -------------------------------------------------------------
    def _connection(self, name: str) -> "Connection":
        try:
            return self.trunks.connection(name)
        except KeyError as exc:
            raise DialError(exc.args[0]) from None

    def _connection_account(self, conn: "Connection", number: str | None,
                            name: str | None) -> tuple["pj.Account", tuple[str, ...] | None]:
        """The connection's own account, or a cached one carrying the caller ID."""
        if not number and not name:
            return self.trunks.account(conn.name), None
        number, name = _caller_number(number), _caller_name(name)
        key = (conn.name, number or "", name or "")
        token = self.trunks.route_token(conn.name)
        account = self._caller_ids.get(key, lambda: account_config(
            self.ua, id_uri=connection_id_uri(conn, number, name), connection=conn, route_token=token))
        return account, key

    def _local_account(self, number: str | None, name: str | None,
                       srtp_use: str | None = None, tls: bool = False) -> tuple["pj.Account", tuple[str, ...] | None]:
        """The LocalAccount, or a cached local identity carrying the caller ID, SRTP use
        (pjsua2 2.12 sets SRTP per account only; see sip/srtp.py; None: the LocalAccount's) and,
        for phones registered over TLS, the TLS listener (see trunks.account_config)."""
        srtp_use = srtp_use or self.ua.account.srtp_use
        tls = tls and self.ua.tls_transport_id is not None
        if not number and not name and srtp_use == self.ua.account.srtp_use and not tls:
            return self.ua.account, None
        number, name = _caller_number(number), _caller_name(name)
        key: tuple[str, ...] = ("", number or "", name or "")
        if srtp_use != srtp.DISABLED or tls:
            key += (srtp_use, "tls" if tls else "")
        uri = f"sip:{number or 'softswitch'}@{self._local_host()}"
        id_uri = f'"{quote_display_name(name)}" <{uri}>' if name else uri
        account = self._caller_ids.get(key, lambda: account_config(self.ua, id_uri=id_uri, srtp_use=srtp_use,
                                                                   tls=tls))
        return account, key

    def _local_host(self) -> str:
        sip = self.ua.config.sip
        return f"{sip.contact_address}:{sip.udp_port or sip.tcp_port}"

    @staticmethod
    def _pai(number: str | None, name: str | None, host: str) -> list[tuple[str, str]]:
        if not number:
            return []
        uri = f"<sip:{_caller_number(number)}@{host}>"
        return [("P-Asserted-Identity", f'"{quote_display_name(name)}" {uri}' if name else uri)]

    def _codec_list(self, codecs: Sequence[str] | None) -> tuple[str, ...]:
        return tuple(codecs) if codecs is not None else tuple(self.config.media.codecs)

    # ---- bookkeeping -------------------------------------------------------------------------
    def _prune(self) -> None:
        """Forget the targets of legs the UA has dropped."""
        for leg_id in [leg_id for leg_id in self._targets if leg_id not in self.ua.legs]:
            del self._targets[leg_id]


# ---- small pure helpers ----------------------------------------------------------------------

def _user_part(destination: str) -> str:
    """A destination as a SIP user part; '#' is escaped, anything that would change the URI refused."""
    user = (destination or "").strip().replace("#", "%23")
    if not user:
        raise DialError("empty destination: give a number or SIP user name")
    if not _USER_RE.fullmatch(user):
        raise DialError(f"destination {destination!r} is not a number or SIP user name (no host, no '@', "
                        "':', ';', spaces or brackets)")
    return user


def _caller_number(number: str | None) -> str | None:
    if number is None or number == "":
        return None
    if not _USER_RE.fullmatch(number):
        raise DialError(f"caller number {number!r} is not a number or SIP user name")
    return number


def _caller_name(name: str | None) -> str | None:
    if name is None or name == "":
        return None
    try:
        quote_display_name(name)
    except ValueError as exc:
        raise DialError(str(exc)) from None
    return name


def _server_uri(conn: "Connection", user: str) -> str:
    transport = f";transport={conn.transport}" if conn.transport in ("tcp", "tls") else ""
    return f"sip:{user}@{conn.sip_server}:{conn.port}{transport}"


def _with_user(uri: str, user: str) -> str:
    """`sip:old@host;params` with the user part replaced (or added)."""
    scheme, sep, rest = uri.partition(":")
    if not sep:
        raise DialError(f"not a SIP URI: {uri!r}")
    at = rest.find("@")
    boundary = min((i for i in (rest.find(";"), rest.find("?")) if i >= 0), default=len(rest))
    if 0 <= at < boundary:
        rest = rest[at + 1:]
    return f"{scheme}:{user}@{rest}"


def _checked_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Custom headers, refused when they would break or hijack the INVITE."""
    checked = []
    for name, value in headers:
        if not _HEADER_NAME_RE.fullmatch(name or ""):
            raise DialError(f"custom SIP header name {name!r} is not a valid header name")
        if name.lower() in _RESERVED_HEADERS:
            raise DialError(f"custom SIP header {name!r} is set by softswitch itself and cannot be added")
        if any(c in str(value) for c in "\r\n\0"):
            raise DialError(f"custom SIP header {name!r} has a line break in its value")
        checked.append((name, str(value)))
    return checked


def _header_vector(headers: Sequence[tuple[str, str]]) -> "pj.SipHeaderVector":
    vec = pj.SipHeaderVector()
    for name, value in headers:
        h = pj.SipHeader()
        h.hName, h.hValue = name, value
        vec.append(h)
    return vec
