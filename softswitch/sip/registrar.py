"""The registrar and the SIP edge's gate, seen from Python.

The hot path (REGISTER digest auth and bindings, INVITE admission, throttling) is native code
in `native/reg_*.c`, a pjsip module at priority 63. This module configures it from the
config, drains its events on the UA loop into typed events, logs every refusal as a security
event, and answers questions the rest of softswitch asks: where is extension 1001 registered,
and which trunk or extension did this INVITE come from.

Keep-alives too: the native sweep sends OPTIONS or CRLF keep-alives to bindings (behind NAT by
default) every `registrar.keepalive.interval_seconds`, and a binding that stops answering OPTIONS
is reported `unreachable` (queues do not ring it) until it answers or registers again.

Overload control lives here too: the gate's limits come from `limits`, the live inbound leg
count is handed to the gate every loop turn, and `overload` (`ops.overload.OverloadMonitor`)
sets the gate's overloaded flag from CPU and loop lag.
"""

from __future__ import annotations

import logging
import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import _softswitch_native as native

from . import srtp
from .tcpguard import TcpGuard
from ..ops.overload import LiveInbound, OverloadMonitor, OverloadState, RefusalLog

if TYPE_CHECKING:
    from ..config import Config
    from .endpoint import UserAgent

log = logging.getLogger("softswitch.registrar")
security_log = logging.getLogger("softswitch.security")

EXPIRY_SWEEP_SECONDS = 1.0
KEEPALIVE_SWEEP_MAX_SECONDS = 1.0  # keep-alives go out within a quarter interval (at most 1 s) of their time
DYNAMIC_TRUNK_GROUP = "trunk:"  # extension-user group prefix of dynamic trunks' credentials


@dataclass(frozen=True)
class Binding:
    """Where one registered endpoint can be reached."""

    username: str
    extension: str
    group: str
    contact: str
    expires: int
    source_ip: str
    source_port: int
    transport: str
    nat: bool
    user_agent: str
    call_id: str
    reachable: bool = True  # False once OPTIONS keep-alives went unanswered `max_failures` times in a row

    @property
    def target_uri(self) -> str:
        """The URI to send requests to: the Contact, or where the REGISTER came from when the
        Contact is not reachable (the phone is behind NAT). A phone that registered over TLS is
        called over TLS even when its Contact forgot to say so."""
        if not self.nat:
            return _with_transport(self.contact, self.transport)
        return _rewrite_host(self.contact, self.source_ip, self.source_port, self.transport)

    @classmethod
    def from_native(cls, d: dict) -> "Binding":
        return cls(username=d["username"], extension=d["extension"], group=d["group"], contact=d["contact"],
                   expires=d["expires"], source_ip=d["source_ip"], source_port=d["source_port"],
                   transport=d["transport"], nat=d["nat"], user_agent=d["user_agent"], call_id=d["call_id"],
                   reachable=d.get("reachable", True))


@dataclass(frozen=True)
class RegistrationEvent:
    kind: str  # registered | refreshed | unregistered | expired | unreachable | reachable
    binding: Binding


@dataclass(frozen=True)
class SecurityEvent:
    # auth_failure | auth_failure_blocked | invite_challenged | user_agent_refused | flood_blocked | aor_mismatch;
    # from a trunk address, which is never blocked: trunk_auth_failure | trunk_auth_failure_limit |
    # trunk_over_flood_rate | trunk_options_limited | trunk_requests_limited;
    # from the TCP guard: a tcpguard.TcpGuardDecision (tcp_connection_limit, tcp_request_timeout, ...)
    event: str
    source_ip: str
    source_port: int
    transport: str
    method: str
    user_agent: str
    detail: str


@dataclass(frozen=True)
class Admission:
    """How the gate admitted an INVITE: from a trunk (ref) or an authenticated extension."""

    kind: str  # trunk | extension
    ref: str  # trunk ref, or the extension's username
    extension: str | None = None
    group: str | None = None


def _rewrite_host(uri: str, host: str, port: int, transport: str) -> str:
    """`uri` with its host:port replaced, keeping user, parameters and headers."""
    scheme, _, rest = uri.partition(":")
    userinfo, at, hostpart = rest.rpartition("@")
    cut = re.search(r"[;?>]", hostpart)
    params = hostpart[cut.start():] if cut else ""
    if ";transport=" not in params.lower() and scheme.lower() != "sips" and transport.upper() in ("TCP", "TLS"):
        params = f";transport={transport.lower()}" + params
    user = f"{userinfo}@" if at else ""
    return f"{scheme}:{user}{host}:{port}{params}"


def _with_transport(uri: str, transport: str) -> str:
    """A Contact of a binding made over TLS, with `;transport=tls` unless it says sips: or a
    transport: the Request-URI decides how pjsip sends, and a bare sip: URI means UDP."""
    if transport.upper() != "TLS" or uri.lower().startswith("sips:") or ";transport=" in uri.lower():
        return uri
    scheme, _, rest = uri.partition(":")
    cut = re.search(r"[?>]", rest)
    head, tail = (rest[:cut.start()], rest[cut.start():]) if cut else (rest, "")
    return f"{scheme}:{head};transport=tls{tail}"


def _allow_list(trunk) -> str | None:
    """",pcmu,telephone-event," for the native SDP filter, or None when the trunk has no list.
    telephone-event stays unless the trunk's DTMF methods exclude RFC 2833."""
    if trunk.codecs is None and trunk.dtmf_methods is None:
        return None
    names = [c.lower() for c in (trunk.codecs or ["PCMU", "PCMA", "G722", "opus", "L16"])]
    names = [n for n in names if n != "telephone-event"]
    if trunk.dtmf_methods is None or "rfc2833" in trunk.dtmf_methods:
        names.append("telephone-event")
    return "," + ",".join(names) + ","


def _resolve(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise ValueError(f"cannot resolve trunk address {host!r}: {exc}") from None


class Registrar:
    """Owned by the UserAgent; every method runs on the UA thread."""

    def __init__(self, ua: "UserAgent", config: "Config") -> None:
        self.ua = ua
        self._native = native.Registrar(config.registrar.realm)
        self.tcp_guard = TcpGuard()
        self._listeners: list[Callable[[RegistrationEvent], None]] = []
        self._route_tokens: dict[str, str] = {}
        # Bindings as last read from the native table, and by extension. Queues ask "is X online,
        # is X free" for every operator on every availability change: copying the whole table
        # for each question made dispatch O(operators x bindings). Every change to the table
        # comes with a registration event (or an expiry sweep), which drops the snapshot.
        self._snapshot: list[Binding] | None = None
        self._by_extension: dict[str, list[Binding]] | None = None
        # Overload control: the native gate refuses; these measure and tell it.
        self.overload = OverloadMonitor(clock=ua.clock, loop_lag_ms=lambda: ua.loop_stats.recent_max * 1000.0,
                                        on_change=self._native.set_overloaded)
        self._live_inbound = LiveInbound()
        self._unwatch_legs = ua.watch_legs(self._live_inbound)
        self._refusal_log = RefusalLog(ua.clock, self._native.overload_refusals)
        self.apply_config(config)
        self.overload.start(ua.timers)
        self._sweep = ua.timers.schedule(EXPIRY_SWEEP_SECONDS, self._expire, "registrar-expiry")
        self._keepalive_sweep = ua.timers.schedule(self._keepalive_period, self._keepalive, "registrar-keepalive")

    # ---- configuration --------------------------------------------------------------------
    def apply_config(self, config: "Config") -> None:
        reg, sec = config.registrar, config.security
        self._native.configure(
            min_expires=reg.min_expires, max_expires=reg.max_expires, default_expires=reg.default_expires,
            nonce_ttl=reg.nonce_ttl_seconds, fail_limit=sec.auth_failure_limit,
            fail_window=sec.auth_failure_window_seconds, block_seconds=sec.block_seconds,
            flood_rate=float(sec.flood_requests_per_second), flood_burst=float(sec.flood_burst),
            trunk_options_rate=float(sec.trunk_options_per_second),
            trunk_requests_rate=float(sec.trunk_requests_per_second),
            md5="MD5" in reg.algorithms, sha256="SHA-256" in reg.algorithms,
            sha256_first=bool(reg.algorithms) and reg.algorithms[0] == "SHA-256")
        users = [(u.username, u.password, u.extension, group,
                  srtp.gate_use(config, srtp.extension_set_use(config, group)))
                 for group, members in config.extension_users.items() for u in members]
        users += [(t.username, t.password, t.name, DYNAMIC_TRUNK_GROUP + t.name, srtp.gate_use(config, t.srtp),
                   float(t.max_calls_per_second))
                  for t in config.trunks.values() if t.mode == "dynamic"]
        self._native.set_users(users)
        self._bindings_changed()
        self._native.set_refused_user_agents(list(config.security.refused_user_agents))
        self._trunk_rows = []
        self._trunk_codecs: dict[str, str | None] = {}
        self._trunk_srtp: dict[str, int] = {}
        self._trunk_cps: dict[str, float] = {}
        for trunk in config.trunks.values():
            self._trunk_codecs[trunk.name] = _allow_list(trunk)
            self._trunk_srtp[trunk.name] = srtp.gate_use(config, trunk.srtp)
            self._trunk_cps[trunk.name] = float(trunk.max_calls_per_second)
            if trunk.mode != "fixed":
                continue
            host = trunk.address or config.connections[trunk.connection].sip_server  # type: ignore[index]
            self._trunk_rows.append((trunk.name, _resolve(host), trunk.port, self._trunk_codecs[trunk.name],
                                     self._trunk_srtp[trunk.name], self._trunk_cps[trunk.name]))
        self._push_trunks()
        lim = config.limits
        self._native.configure_limits(max_concurrent=lim.max_concurrent_calls,
                                      calls_per_second=float(lim.max_calls_per_second),
                                      retry_after=lim.retry_after_seconds)
        self.overload.set_limits(lim.max_cpu_percent, lim.max_loop_lag_ms)
        self._configure_keepalive(config)
        self.tcp_guard.configure(sec)

    def _configure_keepalive(self, config: "Config") -> None:
        ka, sip = config.registrar.keepalive, config.sip
        port = sip.udp_port or sip.tcp_port
        self._native.configure_keepalive(method=ka.method, interval_seconds=float(ka.interval_seconds),
                                         nat_only=ka.nat_only, max_failures=ka.max_failures,
                                         from_uri=f"sip:softswitch@{sip.contact_address}:{port}")
        self._keepalive_period = min(KEEPALIVE_SWEEP_MAX_SECONDS, ka.interval_seconds / 4)

    def set_route_token(self, trunk_ref: str, token: str) -> None:
        """INVITEs whose Request-URI carries `;tk=<token>` come from this registered trunk."""
        self._route_tokens[trunk_ref] = token
        self._push_trunks()

    def _push_trunks(self) -> None:
        # Registered fixed trunks (route token) are matched before unregistered ones (address).
        rows = [(ref, "token:" + tok, 0, self._trunk_codecs.get(ref), self._trunk_srtp.get(ref, 0),
                 self._trunk_cps.get(ref, 0.0)) for ref, tok in self._route_tokens.items()]
        self._native.set_trunks(rows + self._trunk_rows)

    # ---- questions --------------------------------------------------------------------------
    def bindings(self, username: str | None = None) -> list[Binding]:
        if username is not None:
            return [Binding.from_native(d) for d in self._native.bindings(username)]
        if self._snapshot is None:
            self._snapshot = [Binding.from_native(d) for d in self._native.bindings(None)]
        return list(self._snapshot)

    def bindings_for_extension(self, extension: str) -> list[Binding]:
        if self._by_extension is None:
            index: dict[str, list[Binding]] = {}
            for b in self.bindings():
                if not b.group.startswith(DYNAMIC_TRUNK_GROUP):
                    index.setdefault(b.extension, []).append(b)
            self._by_extension = index
        return list(self._by_extension.get(extension, ()))

    def _bindings_changed(self) -> None:
        self._snapshot = None
        self._by_extension = None

    def dynamic_trunk_binding(self, trunk_ref: str) -> Binding | None:
        found = [b for b in self.bindings() if b.group == DYNAMIC_TRUNK_GROUP + trunk_ref]
        return max(found, key=lambda b: b.expires) if found else None

    def take_admission(self, call_id: str) -> Admission | None:
        try:
            row = self._native.take_classification(call_id)
        except UnicodeEncodeError:  # bytes that are not UTF-8 (pjsua2 hands them over as surrogates):
            return None  # no Call-ID RFC 3261 allows, and none the gate can be asked about: not admitted
        if row is None:
            return None
        kind, ref, extension, group = row
        if kind == "extension" and group and group.startswith(DYNAMIC_TRUNK_GROUP):
            return Admission("trunk", group[len(DYNAMIC_TRUNK_GROUP):])
        return Admission(kind, ref, extension, group)

    def stats(self) -> dict:
        """The gate's counters: registrations, challenges, refusals (`overload_concurrent`,
        `overload_rate`, `overload_cpu`, `overload_loop_lag`, `overload_trunk_rate`), `live_inbound`,
        `overloaded`; the edge's decisions (`security_<decision>`, see metrics.SECURITY_DECISIONS); and
        keep-alives (`keepalive_options_sent`, `_answered`, `_failed`, `keepalive_crlf_sent`,
        `_failed`, `keepalive_became_unreachable`, `bindings_unreachable` now)."""
        return self._native.stats()

    def sip_response_counts(self) -> dict[tuple[str, int], int]:
        """SIP responses by ("sent" | "received", status code), every transmission counted
        (retransmissions too); only non-zero entries."""
        return self._native.sip_response_counts()

    def overload_state(self) -> OverloadState:
        return self.overload.state()

    def blocked_sources(self) -> list[tuple[str, float]]:
        return self._native.blocked_sources()

    def unblock(self, ip: str) -> None:
        self._native.unblock(ip)

    # ---- events -------------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[RegistrationEvent], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def poll(self) -> None:
        """Drain the native event queue (called by the UA loop every turn, after the pending
        callbacks ran) and tell the gate how many inbound legs are live now."""
        self._native.sync_live_inbound(self._live_inbound.count)
        self._refusal_log.poll()
        events = self._native.poll_events() + [("security", d) for d in self.tcp_guard.events()]
        if any(kind != "security" for kind, _ in events):
            self._bindings_changed()
        for kind, data in events:
            if kind == "security":
                ev = SecurityEvent(**data)
                security_log.warning("security event %s from %s:%d (%s): %s", ev.event, ev.source_ip,
                                     ev.source_port, f"{ev.transport} {ev.method}".strip(), ev.detail,
                                     extra={"event": {"security": ev.event, "source_ip": ev.source_ip,
                                                      "source_port": ev.source_port, "transport": ev.transport,
                                                      "method": ev.method, "user_agent": ev.user_agent,
                                                      "detail": ev.detail}})
                continue
            event = RegistrationEvent(kind, Binding.from_native(data))
            if kind == "unreachable":
                b = event.binding
                log.warning("unreachable %s (%s) at %s from %s:%d (%s): %d keep-alives unanswered; not rung "
                            "until it answers or registers again", b.username, b.extension, b.contact, b.source_ip,
                            b.source_port, b.transport, data.get("keepalive_failures", 0))
            elif kind != "refreshed":
                log.info("%s %s (%s) at %s from %s:%d", kind, event.binding.username, event.binding.extension,
                         event.binding.contact, event.binding.source_ip, event.binding.source_port)
            for listener in list(self._listeners):
                self.ua.guard("registration listener", listener, event)

    def _keepalive(self) -> None:
        self._native.keepalive()
        self._keepalive_sweep = self.ua.timers.schedule(self._keepalive_period, self._keepalive,
                                                        "registrar-keepalive")

    def _expire(self) -> None:
        self._native.expire()
        self._bindings_changed()
        self._sweep = self.ua.timers.schedule(EXPIRY_SWEEP_SECONDS, self._expire, "registrar-expiry")

    def close(self) -> None:
        self._sweep.cancel()
        self._keepalive_sweep.cancel()
        self.overload.stop()
        self._unwatch_legs()
        self.tcp_guard.close()
        self._native.close()
