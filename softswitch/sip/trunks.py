"""Provider connections: one pjsua2 account per `connections.<name>`, registering when asked.

A connection (reference §2.5 "SIP Connection") is a SIP server softswitch registers to, dials
through, or both. Each gets a pjsua2 account: it carries the connection's digest
credentials (pjsua answers 401/407 challenges to our REGISTERs and INVITEs by itself), its
outbound proxy, and, when `register: true`, keeps a registration alive with back-off on failure.

Calls the provider sends back must be recognised as coming from the trunk, whatever address
they come from: our Contact carries a random route token (`;tk=<token>`), the provider copies
it into the Request-URI of its INVITEs, and the registrar's native gate admits those as calls
from every trunk that uses the connection (`Registrar.set_route_token`).

Everything here runs on the UA thread.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import pjsua2 as pj

from . import srtp
if TYPE_CHECKING:
    from ..config import Config, Connection, SipConfig
    from .endpoint import UserAgent

log = logging.getLogger("softswitch.trunks")

FIRST_RETRY_SECONDS = 5  # first re-REGISTER after a failure
RETRY_SECONDS = 30  # later ones
RETRY_JITTER_SECONDS = 5  # spread retries so many softswitches do not hit a provider at once
UNREGISTER_WAIT_MS = 2000  # how long libDestroy waits for our un-REGISTERs at shutdown


@dataclass(frozen=True)
class RegistrationStatus:
    """What `Trunks.status()` reports for one connection."""

    connection: str
    register: bool  # the config asks for a registration
    registered: bool
    last_code: int | None  # SIP status of the last REGISTER transaction (None: none finished yet)
    last_reason: str
    expires: int  # seconds granted by the registrar at the last success; 0 when not registered


_TIMER_USE = {"off": pj.PJSUA_SIP_TIMER_INACTIVE, "supported": pj.PJSUA_SIP_TIMER_OPTIONAL,
              "required": pj.PJSUA_SIP_TIMER_REQUIRED, "always": pj.PJSUA_SIP_TIMER_ALWAYS}


def apply_call_settings(acfg: "pj.AccountConfig", sip: "SipConfig") -> None:
    """What every account softswitch calls with shares: RFC 4028 session timers.

    pjsua keeps these per account, so the LocalAccount, the connections' and the caller-ID
    accounts all get them here; otherwise pjsua's own default (timers on) applied whatever the
    config said."""
    cc = acfg.callConfig
    cc.timerUse = _TIMER_USE[sip.session_timers]
    cc.timerSessExpiresSec = sip.session_expires
    cc.timerMinSESec = sip.min_se


def account_config(ua: "UserAgent", *, id_uri: str, connection: "Connection | None" = None,
                   route_token: str | None = None, register: bool = False,
                   srtp_use: str | None = None, tls: bool = False) -> "pj.AccountConfig":
    """An AccountConfig for outbound calls (and a registration when `register`).

    With a connection: its credentials, proxy, advertised domain and SRTP use. Without: a local
    identity (extension calls) with `srtp_use` (default disabled). `tls` (and a connection with
    `transport: tls`) binds the account to the TLS listener: this pjproject opens new TLS
    connections only through a listener named by the account. RTP always uses the configured
    port range, as the LocalAccount does."""
    sip = ua.config.sip
    acfg = pj.AccountConfig()
    acfg.idUri = id_uri
    tc = acfg.mediaConfig.transportConfig
    tc.port = sip.rtp_port_start
    tc.portRange = sip.rtp_port_count
    tc.boundAddress = sip.listen_address
    tc.publicAddress = sip.contact_address
    acfg.natConfig.sipOutboundUse = 0  # no RFC 5626 instance params: keep our Contact plain
    acfg.regConfig.registerOnAdd = False
    apply_call_settings(acfg, sip)
    srtp.apply(acfg.mediaConfig, srtp_use or (connection.srtp if connection is not None else srtp.DISABLED))
    if (tls or (connection is not None and connection.transport == "tls")) and ua.tls_transport_id is not None:
        acfg.sipConfig.transportId = ua.tls_transport_id
    if connection is None:
        return acfg

    token_param = f";tk={route_token}" if route_token else ""
    if connection.public_domain:
        # pjsua builds Contact from the transport address; a different advertised host needs
        # the whole Contact forced (the route token then goes inside it).
        port = {"tcp": sip.tcp_port, "tls": sip.tls_port}.get(connection.transport, sip.udp_port)
        user = connection.username or "softswitch"
        acfg.sipConfig.contactForced = (
            f"<sip:{user}@{connection.public_domain}:{port};transport={connection.transport}{token_param}>")
    elif token_param:
        acfg.sipConfig.contactUriParams = token_param
    if connection.username:
        acfg.sipConfig.authCreds.append(
            pj.AuthCredInfo("digest", connection.realm or "*", connection.username, 0, connection.password or ""))
    if connection.proxy_server:
        proxy = connection.proxy_server
        if not proxy.startswith(("sip:", "sips:")):
            proxy = f"sip:{proxy};lr;transport={connection.transport}"
        acfg.sipConfig.proxies.append(proxy)
    if register:
        reg = acfg.regConfig
        reg.registrarUri = f"sip:{connection.sip_server}:{connection.port};transport={connection.transport}"
        reg.registerOnAdd = True
        reg.timeoutSec = connection.registration_expires
        reg.firstRetryIntervalSec = FIRST_RETRY_SECONDS
        reg.retryIntervalSec = RETRY_SECONDS
        reg.randomRetryIntervalSec = RETRY_JITTER_SECONDS
        reg.unregWaitMsec = UNREGISTER_WAIT_MS
        reg.dropCallsOnFail = False  # a failed refresh must not cut live calls
    return acfg


def connection_id_uri(connection: "Connection", number: str | None = None, name: str | None = None) -> str:
    """The From identity towards a connection: `"name" <sip:number@server>`."""
    user = number or connection.username or "softswitch"
    uri = f"sip:{user}@{connection.sip_server}"
    return f'"{quote_display_name(name)}" <{uri}>' if name else uri


def quote_display_name(name: str) -> str:
    """A display name safe inside double quotes (RFC 3261 quoted-string)."""
    if any(c in name for c in "\r\n\0"):
        raise ValueError(f"caller name {name!r} contains a line break or NUL")
    return name.replace("\\", "\\\\").replace('"', '\\"')


class ForwardingAccount(pj.Account):
    """A pjsua2 account that is not the LocalAccount.

    pjsua hands an incoming INVITE to the account whose URI best matches its To header, so an
    INVITE to our provider username lands here: it is forwarded to the LocalAccount, where the
    gate's admission is read and the call handler runs, exactly as for any other call."""

    def __init__(self, ua: "UserAgent", on_reg_state: Callable[["pj.OnRegStateParam"], None] | None = None) -> None:
        super().__init__()
        self.ua = ua
        self._on_reg_state = on_reg_state

    def onIncomingCall(self, prm) -> None:
        local = self.ua.account
        if local is not None:
            local.onIncomingCall(prm)

    def onRegState(self, prm) -> None:
        if self._on_reg_state is not None:
            self.ua.guard("onRegState", self._on_reg_state, prm)

    def destroy(self) -> None:
        """Delete the pjsua account now, exactly once; the Python object is empty afterwards.

        pjsua2's shutdown() deletes the account but keeps its id, and its destructor, whenever
        Python gets to run it, deletes whichever account holds that id by then: pjsua gives
        the lowest free id to the next account, so that is a live caller-ID account, whose
        pool its calls still read."""
        if self.thisown:
            pj.Account.__swig_destroy__(self)


class _ConnectionState:
    """One connection's account and what its registration last reported."""

    def __init__(self, connection: "Connection", token: str | None) -> None:
        self.connection = connection
        self.token = token
        self.account: ForwardingAccount | None = None
        self.registered = False
        self.last_code: int | None = None
        self.last_reason = ""
        self.expires = 0


class Trunks:
    """Owned by the UserAgent (created after the registrar): the connections' accounts."""

    def __init__(self, ua: "UserAgent", config: "Config") -> None:
        self.ua = ua
        self.config = config
        self._states: dict[str, _ConnectionState] = {}
        try:
            for name, conn in config.connections.items():
                self._add(name, conn)
        except BaseException:
            self.shutdown()  # no half-made set of accounts left behind a startup error
            raise

    def _add(self, name: str, conn: "Connection") -> None:
        ua, config, sip = self.ua, self.config, self.ua.config.sip
        if conn.transport == "tcp" and not sip.tcp_port:
            raise ValueError(f"connections.{name} uses transport tcp but sip.tcp_port is 0: enable TCP")
        if conn.transport == "udp" and not sip.udp_port:
            raise ValueError(f"connections.{name} uses transport udp but sip.udp_port is 0: enable UDP")
        if conn.transport == "tls" and not sip.tls_port:
            raise ValueError(f"connections.{name} uses transport tls but sip.tls_port is 0: enable TLS")
        token = secrets.token_hex(8) if conn.register else None
        state = self._states[name] = _ConnectionState(conn, token)
        if token is not None:
            # Before the account registers: the provider may call back at once.
            for trunk in config.trunks.values():
                if trunk.connection == name and trunk.mode == "fixed":
                    ua.registrar.set_route_token(trunk.name, token)
        account = ForwardingAccount(ua, lambda prm, s=state: self._on_reg_state(s, prm))
        acfg = account_config(ua, id_uri=connection_id_uri(conn), connection=conn, route_token=token,
                              register=conn.register)
        try:
            account.create(acfg, False)
        except pj.Error as exc:
            raise ValueError(f"connections.{name}: cannot create its SIP account: {exc.reason or exc.info()}") from None
        state.account = account
        if conn.register:
            log.info("connection %s: registering %s to %s:%d/%s every %d s", name, conn.username or "(no user)",
                     conn.sip_server, conn.port, conn.transport, conn.registration_expires)

    # ---- questions ------------------------------------------------------------------------
    def connection(self, name: str) -> "Connection":
        state = self._states.get(name)
        if state is None:
            known = ", ".join(self._states) or "none defined"
            raise KeyError(f"no connection named {name!r} (connections: {known})")
        return state.connection

    def account(self, name: str) -> "pj.Account":
        """The connection's own account (its default identity and credentials)."""
        self.connection(name)
        account = self._states[name].account
        assert account is not None
        return account

    def route_token(self, name: str) -> str | None:
        self.connection(name)
        return self._states[name].token

    def status(self) -> dict[str, RegistrationStatus]:
        return {name: RegistrationStatus(connection=name, register=s.connection.register, registered=s.registered,
                                         last_code=s.last_code, last_reason=s.last_reason,
                                         expires=s.expires if s.registered else 0)
                for name, s in self._states.items()}

    # ---- registration state ---------------------------------------------------------------
    def _on_reg_state(self, state: _ConnectionState, prm) -> None:
        code, reason, expires = int(prm.code), str(prm.reason), int(prm.expiration)
        registered = 200 <= code < 300 and expires > 0
        name = state.connection.name
        changed = registered != state.registered or code != state.last_code
        state.registered, state.last_code, state.last_reason = registered, code, reason
        state.expires = expires if registered else 0
        if not changed:
            log.debug("connection %s: registration refreshed (%d %s), expires %d s", name, code, reason, expires)
        elif registered:
            log.info("connection %s: registered (%d %s), expires %d s", name, code, reason, expires)
        elif 200 <= code < 300:
            log.info("connection %s: unregistered (%d %s)", name, code, reason)
        else:
            log.warning("connection %s: registration failed (%d %s); pjsua retries after %d s, then every %d s",
                        name, code, reason, FIRST_RETRY_SECONDS, RETRY_SECONDS)

    # ---- teardown ---------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Delete the accounts (pjsua sends the un-REGISTERs); before libDestroy."""
        for state in self._states.values():
            if state.account is not None:
                self.ua.guard("connection account shutdown", state.account.destroy)
                state.account = None
