"""softswitch's configuration: the schema of the YAML config file, its loader and its validator.

The frozen dataclasses below *are* the schema: types, defaults, ranges and checks are declared
once, on their fields, and one generic walker validates the YAML node tree against them, so that
every problem is reported at once with its file and line. `load_config(None)` gives the built-in
default (default_config.yaml), which `softswitch run` uses when no --config is given.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import ipaddress
import os
import re
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "AiConfig",
    "AiProvider",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Connection",
    "Directories",
    "ExtensionSet",
    "ExtensionUser",
    "KeepaliveConfig",
    "Limits",
    "LoggingConfig",
    "MediaConfig",
    "MetricsConfig",
    "MissingSecretError",
    "SessionTimerMode",
    "SipConfig",
    "SrtpUse",
    "TlsConfig",
    "Trunk",
    "default_config_text",
    "load_config",
    "parse_host_port",
    "replace_path",
    "with_overrides",
]

DEFAULT_CONFIG_NAME = "default_config.yaml"
# Flow paths in the built-in default name the demo flows shipped in the repository's flows/.
REPO_FLOWS_DIR = Path(__file__).resolve().parent.parent / "flows"


# --- Errors -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file, located precisely enough to fix it without searching."""

    file: str
    line: int | None  # 1-based; None where there is no line (a CLI override, an unreadable file)
    key: str  # dotted path such as "sip.udp_port" or "flows[0]"; "" for the whole document
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """The config is invalid. `.issues` holds every problem found, not only the first."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = list(issues)
        plural = "" if len(self.issues) == 1 else "s"
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"invalid configuration ({len(self.issues)} error{plural}):\n{lines}")


class MissingSecretError(LookupError):
    """A secret the config refers to (by environment variable) is not available when needed."""


# --- Field rules: what a setting must satisfy beyond its type ---------------------------------


@dataclass(frozen=True)
class _Rule:
    lo: int | None = None  # inclusive bounds for integers
    hi: int | None = None
    check: Callable[[Any], object] | None = None  # raises ValueError saying what is wrong
    base: Literal["dirs", "flows"] = "dirs"  # what a relative path is relative to
    must_exist: bool = False  # a path that must name an existing file
    from_key: bool = False  # set from the entry's name in its parent mapping, not read from YAML
    in_state: bool = False  # a path whose default (a file name) lives in directories.state, kept relative
    # Choice settings that also take a YAML boolean (`off` *is* false in YAML 1.1): (false, true).
    from_bool: tuple[str, str] | None = None


_NO_RULE = _Rule()


def _setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **rule: Any) -> Any:
    return field(default=default, default_factory=factory, metadata={"rule": _Rule(**rule)})


def _rule_of(f: dataclasses.Field) -> _Rule:
    return f.metadata.get("rule", _NO_RULE)


_HOST_RE = re.compile(r"[A-Za-z0-9_.-]+")
_HOST_PORT_RE = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]{1,5})")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _ip_address(value: str) -> None:
    ipaddress.ip_address(value)  # its ValueError reads "'x' does not appear to be an IPv4 or IPv6 address"


def _host(value: str) -> None:
    """A bare host name or IP address: SIP URIs, ports and user parts go in their own fields."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOST_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a bare host name or IP address (no scheme, user or port)") from None


def _even(value: int) -> None:
    if value % 2:
        raise ValueError(f"must be even (RTP takes the even port of each pair, RTCP the odd one); got {value}")


def _env_name(value: str) -> None:
    # The value is never echoed: someone who pasted the key itself should not see it in logs.
    if not _ENV_NAME_RE.fullmatch(value):
        raise ValueError("must be the *name* of an environment variable (like OPENAI_API_KEY), not the key itself")


def _url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http(s):// or ws(s):// URL")


def parse_host_port(value: str) -> tuple[str, int]:
    """Split "127.0.0.1:9100" or "[::1]:9100" into host and port; ValueError if malformed."""
    m = _HOST_PORT_RE.fullmatch(value)
    if not m or not 1 <= int(m["port"]) <= 65535:
        raise ValueError(f"{value!r} is not a host:port address like 127.0.0.1:9100")
    return m["v6"] or m["host"], int(m["port"])


# --- The schema ---------------------------------------------------------------------------------

Transport = Literal["udp", "tcp", "tls"]
# SRTP (SDES, RFC 4568) on a call's audio: pjmedia's names, which YAML reads as strings ("off" is a
# boolean in YAML). disabled: plain RTP only; optional: SRTP when the other side offers or accepts
# it; mandatory: SRTP or no call (488).
SrtpUse = Literal["disabled", "optional", "mandatory"]
TlsVersion = Literal["tlsv1.2", "tlsv1.3"]
Codec = Literal["PCMU", "PCMA", "G722", "opus", "L16", "telephone-event"]
AiProfile = Literal["openai_realtime", "gemini_live", "generic"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
# RFC 4028 session timers: off; supported (used when the peer supports them); required (a peer
# without them is refused); always (softswitch refreshes even a peer that does not support them).
SessionTimerMode = Literal["off", "supported", "required", "always"]


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """SIP over TLS (`sip.tls_port`): our certificate and key, and what we ask of peers."""

    certificate: Path | None = _setting(None, must_exist=True)  # PEM certificate (chain) we present
    private_key: Path | None = _setting(None, must_exist=True)  # PEM private key of that certificate
    ca_list: Path | None = _setting(None, must_exist=True)  # PEM CAs peers' certificates are checked against
    verify_client: bool = False  # phones and trunks connecting to us must present a certificate from ca_list
    verify_server: bool = False  # servers we connect to (connections with transport tls) are checked
    min_version: TlsVersion = "tlsv1.2"  # oldest TLS version accepted (1.0 and 1.1 are never offered)
    handshake_timeout_ms: int = _setting(5000, lo=100, hi=60000)  # a connection that does not finish the handshake is closed


@dataclass(frozen=True, kw_only=True)
class SipConfig:
    """Where softswitch listens for SIP and RTP, and what it tells peers about itself."""

    listen_address: str = _setting("127.0.0.1", check=_ip_address)
    advertised_address: str | None = _setting(None, check=_host)  # None: listen_address
    udp_port: int = _setting(5060, lo=0, hi=65535)  # 0 disables UDP
    tcp_port: int = _setting(5060, lo=0, hi=65535)  # 0 disables TCP
    tls_port: int = _setting(0, lo=0, hi=65535)  # 0: no SIP over TLS (needs sip.tls.certificate and private_key)
    tls: TlsConfig = field(default_factory=TlsConfig)
    user_agent: str = "softswitch"
    rtp_port_start: int = _setting(20000, lo=1024, hi=65000, check=_even)
    rtp_port_count: int = _setting(4000, lo=2, hi=60000)
    max_calls: int = _setting(1000, lo=1, hi=1024)  # PJSUA_MAX_CALLS in native/config_site.h
    # `false`/`true` (the old boolean) mean off/supported. pjsua's own default, which every INVITE
    # carried whatever the setting said, is `supported` with 1800 s and Min-SE 90.
    session_timers: SessionTimerMode = _setting("supported", from_bool=("off", "supported"))
    session_expires: int = _setting(1800, lo=90, hi=86400)  # seconds; pjsip refuses less than 90
    min_se: int = _setting(90, lo=90, hi=86400)  # the smallest Session-Expires accepted (422 below it)

    @property
    def contact_address(self) -> str:
        """The address put in Contact and SDP."""
        return self.advertised_address or self.listen_address


# The cadence syntax of tones (freq[+freq]/ms segments; the flows' customTone pattern).
_TONE_CADENCE = r"\d+(?:\+\d+)*/\d+(?:,\d+(?:\+\d+)*/\d+)*"


@dataclass(frozen=True, kw_only=True)
class MediaConfig:
    clock_rate: Literal[8000, 16000] = 8000
    quality: int = _setting(4, lo=1, hi=10)
    codecs: list[Codec] = field(default_factory=lambda: ["PCMU", "PCMA", "G722", "telephone-event"])
    jitter_buffer_ms: int = _setting(0, lo=0, hi=1000)  # jitter buffer ceiling; 0: pjmedia adaptive default
    # What a bridged party hears while the other side holds the call: a WAV (under
    # directories.prompts unless absolute), "tone:<preset or cadence>", or "none".
    hold_music: str = "hold_music.wav"

    @property
    def hold_music_off(self) -> bool:
        """`hold_music: none` (or off, or empty): softswitch plays nothing to a held party."""
        return self.hold_music.strip().lower() in ("", "none", "off")


@dataclass(frozen=True, kw_only=True)
class Connection:
    """A SIP server softswitch registers to or dials through (reference §2.5 "SIP Connection")."""

    name: str = _setting("", from_key=True)
    sip_server: str = _setting(check=_host)
    port: int = _setting(5060, lo=1, hi=65535)
    transport: Transport = "udp"
    proxy_server: str | None = None
    realm: str | None = None
    username: str | None = None
    password: str | None = None
    public_domain: str | None = None  # host advertised in Contact/Via towards this server
    register: bool = False
    registration_expires: int = _setting(600, lo=60, hi=86400)
    srtp: SrtpUse = "disabled"  # calls placed through this connection


@dataclass(frozen=True, kw_only=True)
class ExtensionUser:
    """Static credentials an extension registers with; all strings, so "1001" keeps its quotes."""

    username: str
    password: str
    extension: str


DtmfMethod = Literal["rfc2833", "info", "inband"]
TrunkMode = Literal["fixed", "dynamic"]
DigestAlgorithm = Literal["MD5", "SHA-256"]


@dataclass(frozen=True, kw_only=True)
class Trunk:
    """A trunk (reference §2.4 Trunk Event). `fixed`: recognised by the address its calls come
    from, or by the route token of our registration when its connection registers. `dynamic`:
    the trunk registers to softswitch with `username`/`password` and is reached where it did."""

    name: str = _setting("", from_key=True)
    mode: TrunkMode = "fixed"
    address: str | None = _setting(None, check=_host)  # fixed: where calls come from (default: the connection's server)
    port: int = _setting(0, lo=0, hi=65535)  # 0: any source port
    connection: str | None = None  # name of a `connections` entry: registration and calls out
    username: str | None = None  # dynamic: the credentials the trunk registers with
    password: str | None = None
    codecs: list[Codec] | None = None  # allow-list for this trunk's calls; None: media.codecs
    dtmf_methods: list[DtmfMethod] | None = None  # None: rfc2833 and info
    srtp: SrtpUse = "disabled"  # its calls to us (mandatory: a plain RTP offer gets 488); calls to a dynamic trunk
    # New calls from this trunk admitted per second; over it, 503 with Retry-After (limits.retry_after_seconds),
    # as the overload gate answers. 0: no limit of its own (limits.* still apply).
    max_calls_per_second: int = _setting(0, lo=0)


@dataclass(frozen=True, kw_only=True)
class ExtensionSet:
    """Settings shared by every phone of one `extension_users` set (`extension_sets.<set>`)."""

    name: str = _setting("", from_key=True)
    srtp: SrtpUse = "disabled"  # calls from and to these phones


KeepaliveMethod = Literal["options", "crlf", "off"]


@dataclass(frozen=True, kw_only=True)
class KeepaliveConfig:
    """Keep-alives to registered phones, so that NAT mappings stay open and a phone that cannot
    be reached any more is not rung. OPTIONS also detect an unreachable phone; CRLF only refresh."""

    method: KeepaliveMethod = "options"
    interval_seconds: int = _setting(30, lo=1, hi=3600)  # to each binding; NAT UDP mappings often last 30-60 s
    nat_only: bool = True  # only bindings whose Contact is not where their REGISTER came from
    max_failures: int = _setting(3, lo=0, hi=100)  # unanswered OPTIONS in a row: unreachable; 0: never


@dataclass(frozen=True, kw_only=True)
class RegistrarConfig:
    """How phones and dynamic trunks register to softswitch."""

    realm: str = "softswitch"
    min_expires: int = _setting(60, lo=1, hi=86400)  # shorter requests get 423 Interval Too Brief
    max_expires: int = _setting(3600, lo=1, hi=86400)  # longer requests are shortened to this
    default_expires: int = _setting(600, lo=1, hi=86400)
    nonce_ttl_seconds: int = _setting(300, lo=10, hi=86400)
    # Challenge order. MD5 only by default: Debian 12's baresip (libre 1.1) gives up on a 401 that
    # also carries a SHA-256 challenge, in either order, and never registers (README "Digest").
    algorithms: list[DigestAlgorithm] = field(default_factory=lambda: ["MD5"])
    keepalive: KeepaliveConfig = field(default_factory=KeepaliveConfig)


@dataclass(frozen=True, kw_only=True)
class SecurityConfig:
    """Protection of the SIP edge. Refusals are logged as `security` events (JSON-friendly)."""

    auth_failure_limit: int = _setting(10, lo=0)  # failures in the window that block a source; 0: never
    auth_failure_window_seconds: int = _setting(60, lo=1)
    block_seconds: int = _setting(300, lo=1)  # how long a blocked source is ignored
    flood_requests_per_second: int = _setting(500, lo=0)  # new requests per source; 0: no limit
    flood_burst: int = _setting(1000, lo=1)
    # A trunk address (a fixed trunk's, or where a dynamic trunk registered) is never blocked: its
    # source address is trivial to forge. What is not the trunk's calls is limited per address
    # instead, the excess dropped (README "Trunk addresses and the block list"); 0: no limit.
    trunk_options_per_second: int = _setting(10, lo=0)  # OPTIONS per trunk address
    # REGISTER challenges and failures (a valid registration always passes), other methods and
    # INVITEs that match no trunk, per trunk address
    trunk_requests_per_second: int = _setting(50, lo=0)
    refused_user_agents: list[str] = field(
        default_factory=lambda: ["friendly-scanner", "sipvicious", "sipcli", "sip-scan", "iwar", "sundayddr",
                                 "vaxsipuseragent"])  # case-insensitive substrings
    # Incoming TCP and TLS connections (native/tcpguard.c). A connection over which a REGISTER
    # succeeded or an INVITE was admitted is trusted and not counted against its address.
    tcp_max_connections_per_source: int = _setting(64, lo=0)  # unauthenticated ones per address; 0: no limit
    tcp_max_pending_per_source: int = _setting(16, lo=0)  # of those, without a complete request yet; 0: no limit
    tcp_request_timeout_seconds: int = _setting(10, lo=0, hi=3600)  # a begun request must be complete by then; 0: never
    tcp_first_request_timeout_seconds: int = _setting(30, lo=0, hi=3600)  # no complete request since connecting; 0: never


@dataclass(frozen=True, kw_only=True)
class AiProvider:
    """One AI voice provider profile. The key itself never sits in the config, only its variable."""

    name: str = _setting("", from_key=True)
    url: str | None = _setting(None, check=_url)  # None: the provider's public endpoint
    api_key_env: str | None = _setting(None, check=_env_name)

    def api_key(self, environ: Mapping[str, str] | None = None) -> str:
        """The key, read now rather than at load time, so configs load where the key is absent."""
        where = f"ai.providers.{self.name}.api_key_env"
        if self.api_key_env is None:
            raise MissingSecretError(f"no API key for AI provider {self.name!r}: set {where} in the config")
        value = (os.environ if environ is None else environ).get(self.api_key_env)
        if not value:
            raise MissingSecretError(
                f"environment variable {self.api_key_env} is not set (or empty); {where} names it as "
                f"the API key of AI provider {self.name!r}"
            )
        return value


@dataclass(frozen=True, kw_only=True)
class AiConfig:
    providers: dict[AiProfile, AiProvider] = field(default_factory=dict)

    def provider(self, profile: str) -> AiProvider:
        """The settings of a profile; an unconfigured but known profile gets the defaults."""
        if profile not in get_args(AiProfile):
            raise ValueError(f"unknown AI provider profile {profile!r}; known: {', '.join(get_args(AiProfile))}")
        return self.providers.get(profile) or AiProvider(name=profile)


@dataclass(frozen=True, kw_only=True)
class Directories:
    """Where softswitch reads prompts and writes recordings and state; absolute after loading."""

    prompts: Path = Path("prompts")
    recordings: Path = Path("recordings")
    state: Path = Path("state")


@dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    level: LogLevel = "info"
    format: LogFormat = "text"
    file: Path | None = None  # None: stderr
    pjsip_level: int = _setting(2, lo=0, hi=6)  # pjsua2 messages at or below it go to Python logging


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    http_listen: str | None = _setting(None, check=parse_host_port)  # "host:port"; None: off

    @property
    def http_address(self) -> tuple[str, int] | None:
        return None if self.http_listen is None else parse_host_port(self.http_listen)


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Overload control: a new inbound call over any limit is answered 503 with Retry-After,
    so the calls already admitted keep their CPU and clean audio."""

    max_concurrent_calls: int = _setting(0, lo=0)  # live inbound calls; 0: no limit
    max_calls_per_second: int = _setting(0, lo=0)  # new inbound calls admitted per second; 0: no limit
    max_cpu_percent: int = _setting(0, lo=0, hi=1000)  # process CPU, 100 = one core busy; 0: no limit
    max_loop_lag_ms: int = _setting(0, lo=0, hi=10000)  # UA loop turn over its 10 ms poll; 0: no limit
    retry_after_seconds: int = _setting(5, lo=1, hi=3600)  # sent in the 503's Retry-After


@dataclass(frozen=True, kw_only=True)
class RecordsConfig:
    """Operator records written as JSON lines (one object per line, appended, flushed per line).

    On by default, in directories.state (the defaults stay relative names until `in_state`, so
    they follow directories.state wherever it is set); a path moves one; null turns it off."""

    call_records: Path | None = _setting(Path("call-records.jsonl"), in_state=True)  # None: off
    queue_events: Path | None = _setting(Path("queue-events.jsonl"), in_state=True)  # None: off

    def in_state(self, state: Path) -> "RecordsConfig":
        """The paths to write: a default name under `state`; a configured path as it is."""
        return RecordsConfig(call_records=None if self.call_records is None else state / self.call_records,
                             queue_events=None if self.queue_events is None else state / self.queue_events)


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration, validated; paths are absolute."""

    sip: SipConfig = field(default_factory=SipConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    connections: dict[str, Connection] = field(default_factory=dict)
    extension_users: dict[str, list[ExtensionUser]] = field(default_factory=dict)
    extension_sets: dict[str, ExtensionSet] = field(default_factory=dict)
    trunks: dict[str, Trunk] = field(default_factory=dict)
    registrar: RegistrarConfig = field(default_factory=RegistrarConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    ai: AiConfig = field(default_factory=AiConfig)
    flows: list[Path] = _setting(factory=list, base="flows", must_exist=True)
    directories: Directories = field(default_factory=Directories)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    limits: Limits = field(default_factory=Limits)
    records: RecordsConfig = field(default_factory=RecordsConfig)


def _cross_checks(config: Config) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """Rules spanning several settings: (key to report, message, keys the rule reads).

    A rule is not reported when one of the keys it reads already has an error of its own, since
    the walker put a default in that key's place.
    """
    sip = config.sip
    if sip.rtp_port_start + sip.rtp_port_count > 65536:
        yield (
            "sip.rtp_port_count",
            f"rtp_port_start + rtp_port_count = {sip.rtp_port_start + sip.rtp_port_count} is above 65536",
            ("sip.rtp_port_start", "sip.rtp_port_count"),
        )
    if sip.session_expires < sip.min_se:
        yield "sip.session_expires", f"session_expires {sip.session_expires} is below min_se {sip.min_se}", (
            "sip.session_expires", "sip.min_se")
    if sip.udp_port == 0 and sip.tcp_port == 0:
        ports = ("sip.udp_port", "sip.tcp_port")
        yield "sip.udp_port", "udp_port and tcp_port are both 0: enable at least one", ports
    yield from _tls_checks(config)
    for name in config.extension_sets:
        if name not in config.extension_users:
            known = ", ".join(config.extension_users) or "none defined"
            key = f"extension_sets.{name}"
            yield key, f"no extension_users set named {name!r} (sets: {known})", (key,)
    for name, conn in config.connections.items():
        if conn is not None and conn.transport == "tls" and not sip.tls_port:
            key = f"connections.{name}.transport"
            yield key, "transport tls needs SIP over TLS: set sip.tls_port and sip.tls certificate and key", (
                key, "sip.tls_port")
    if not config.media.codecs:
        yield "media.codecs", "no codec allowed: list at least one", ("media.codecs",)
    hold = config.media.hold_music.strip()
    if hold.startswith("tone:"):
        # A preset name (media/tones.py TONE_PRESETS, checked when a call is held) or a cadence.
        spec = hold[5:].strip()
        if not (re.fullmatch(r"[a-z]+", spec) or re.fullmatch(_TONE_CADENCE, spec)):
            yield "media.hold_music", (f"hold music tone {spec!r} is neither a preset (ringback, busy, congestion) "
                                       "nor a cadence like 425/1000,0/4000"), ("media.hold_music",)
    elif not config.media.hold_music_off and hold != MediaConfig.hold_music:
        # The default is looked for when a call is held (a prompts folder without it: no music).
        path = Path(hold) if Path(hold).is_absolute() else config.directories.prompts / hold
        try:
            found = path.is_file()
        except OSError:  # a name the file system refuses (too long, ...)
            found = False
        if not found:
            yield "media.hold_music", f"hold music file not found: {path} (a WAV, tone:<preset>, or none)", (
                "media.hold_music",)
    # Entries the walker rejected are None here; they have been reported already.
    for name, trunk in config.trunks.items():
        if trunk is not None and trunk.connection is not None and trunk.connection not in config.connections:
            known = ", ".join(config.connections) or "none defined"
            key = f"trunks.{name}.connection"
            yield key, f"no connection named {trunk.connection!r} (connections: {known})", (key,)
    for name, trunk in config.trunks.items():
        if trunk is None:
            continue
        key = f"trunks.{name}"
        if trunk.mode == "fixed" and trunk.address is None and trunk.connection is None:
            yield f"{key}.address", "a fixed trunk needs an address or a connection", (f"{key}.address",)
        if trunk.mode == "dynamic" and (not trunk.username or not trunk.password):
            yield f"{key}.username", "a dynamic trunk needs a username and a password to register with", (
                f"{key}.username", f"{key}.password")
    if not config.registrar.algorithms:
        yield "registrar.algorithms", "no digest algorithm: list MD5, SHA-256 or both", ("registrar.algorithms",)
    if config.registrar.min_expires > config.registrar.max_expires:
        yield "registrar.min_expires", "min_expires is above max_expires", (
            "registrar.min_expires", "registrar.max_expires")
    for set_name, users in config.extension_users.items():
        first_index: dict[str, int] = {}
        for i, user in enumerate(users or ()):
            if user is None or user.username is None:
                continue
            first = first_index.setdefault(user.username, i)
            if first != i:
                key = f"extension_users.{set_name}[{i}].username"
                yield key, f"duplicate username {user.username!r} (also at [{first}])", (key,)


def _tls_checks(config: Config) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """The TLS files must be usable before SIP starts: readable PEM, a key that matches the
    certificate. OpenSSL (through Python's ssl) reads them as pjsip's TLS transport will."""
    tls = config.sip.tls
    if not config.sip.tls_port:
        return
    reads = ("sip.tls_port", "sip.tls.certificate", "sip.tls.private_key")
    for key, value in (("sip.tls.certificate", tls.certificate), ("sip.tls.private_key", tls.private_key)):
        if value is None:
            yield key, f"sip.tls_port is {config.sip.tls_port}: set {key.rsplit('.', 1)[1]} to a PEM file", reads
    if tls.verify_client and tls.ca_list is None:
        yield "sip.tls.verify_client", "verify_client needs sip.tls.ca_list (the CAs client certificates are checked against)", (
            "sip.tls.verify_client", "sip.tls.ca_list")
    if tls.certificate is None or tls.private_key is None:
        return
    for key, value, marker in (("sip.tls.certificate", tls.certificate, "CERTIFICATE-----"),
                               ("sip.tls.private_key", tls.private_key, "PRIVATE KEY-----"),
                               ("sip.tls.ca_list", tls.ca_list, "CERTIFICATE-----")):
        if value is None:
            continue
        try:
            text = value.read_text(encoding="ascii", errors="replace")
        except OSError as e:
            yield key, f"cannot read {value}: {e.strerror}", (key,)
            return
        if "-----BEGIN " not in text or marker not in text:
            yield key, f"{value} is not a PEM file (no '-----BEGIN ...{marker}' block)", (key,)
            return
    import ssl  # late: only configs with TLS pay for it

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(tls.certificate), str(tls.private_key))
    except ssl.SSLError as e:
        yield "sip.tls.private_key", f"OpenSSL cannot use this certificate and key together: {e.reason or e}", reads
    if tls.ca_list is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(str(tls.ca_list))
        except ssl.SSLError as e:
            yield "sip.tls.ca_list", f"OpenSSL cannot read these CA certificates: {e.reason or e}", ("sip.tls.ca_list",)


# --- The walker: YAML nodes checked against the schema -----------------------------------------

_INVALID = object()  # what the walker returns for a value it has reported as wrong
_YAML_TYPE_NAMES = {"int": "the integer", "float": "the number", "bool": "the boolean"}


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        return rest[0], len(rest) < len(get_args(tp))
    return tp, False


def _expected(tp: Any) -> str:
    if dataclasses.is_dataclass(tp) or get_origin(tp) is dict:
        return "a mapping"
    if get_origin(tp) is list:
        return "a list"
    if get_origin(tp) is Literal:
        return _expected(type(get_args(tp)[0]))
    names = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    return names[tp]


def _tag_name(node: Node) -> str:
    return node.tag.rsplit(":", 1)[-1]


def _got(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    name = _tag_name(node)
    if name == "null":
        return "null"
    if name == "str":
        return f'the string "{node.value}"'
    return f"{_YAML_TYPE_NAMES.get(name, name)} {node.value}"


def _suggest(word: str, choices: Iterable[str]) -> list[str]:
    choices = list(choices)
    return [c for c in choices if c.lower() == word.lower()] or difflib.get_close_matches(word, choices, n=1)


def _line(node: Node | None) -> int | None:
    return None if node is None or node.start_mark is None else node.start_mark.line + 1


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _empty_mapping(at: Node) -> MappingNode:
    return MappingNode("tag:yaml.org,2002:map", [], at.start_mark, at.end_mark)


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"


class _Walker:
    """Checks a YAML node tree against a type from the schema, building the typed value.

    Every problem becomes an issue and the walk goes on: a wrong value is replaced by its
    field's default (or None where there is none), so that one run reports everything.
    """

    def __init__(self, file: str, bases: Mapping[str, Path]):
        self.file = file
        self.bases = bases
        self.issues: list[ConfigIssue] = []
        self.key_lines: dict[str, int | None] = {}  # where each key (or list item) was written
        self.bad_keys: set[str] = set()
        self._constructor = yaml.constructor.SafeConstructor()

    def error(self, where: Node | int | None, key: str, message: str) -> object:
        line = where if isinstance(where, int) or where is None else _line(where)
        self.issues.append(ConfigIssue(self.file, line, key, message))
        self.bad_keys.add(key)
        return _INVALID

    def value(self, node: Node, tp: Any, rule: _Rule, key: str, name: str = "") -> Any:
        tp, optional = _strip_optional(tp)
        if _is_null(node):
            if optional:
                return None
            # A section whose lines are all commented out is empty, not an error.
            if get_origin(tp) is list:
                return []
            if get_origin(tp) is dict:
                return {}
            if dataclasses.is_dataclass(tp):
                node = _empty_mapping(node)
        if dataclasses.is_dataclass(tp):
            return self.section(node, tp, key, name)
        if get_origin(tp) is list:
            return self.sequence(node, tp, rule, key)
        if get_origin(tp) is dict:
            return self.mapping(node, tp, rule, key)
        return self.scalar(node, tp, rule, key)

    def entries(self, node: Node, key: str) -> Iterator[tuple[str, Node, Node]]:
        """The (name, key node, value node) of a mapping, with bad and repeated keys reported."""
        seen: dict[str, Node] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, ScalarNode):
                self.error(knode, key, "a key must be a plain name, not a list or mapping")
                continue
            name = knode.value
            if knode.tag != "tag:yaml.org,2002:str":
                self.error(knode, _join(key, name), f"a key must be a string, not {_tag_name(knode)}; quote it")
                continue
            if name in seen:
                self.error(knode, _join(key, name), f"duplicate key (first on line {_line(seen[name])})")
                continue
            seen[name] = knode
            yield name, knode, vnode

    def section(self, node: Node, cls: type, key: str, name: str) -> Any:
        if not isinstance(node, MappingNode):
            return self.error(node, key, f"expected a mapping, got {_got(node)}")
        fields = {f.name: f for f in dataclasses.fields(cls) if not _rule_of(f).from_key}
        hints = get_type_hints(cls)
        values: dict[str, Any] = {f.name: name for f in dataclasses.fields(cls) if _rule_of(f).from_key}
        for field_name, knode, vnode in self.entries(node, key):
            path = _join(key, field_name)
            f = fields.get(field_name)
            if f is None:
                close = _suggest(field_name, fields)
                hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(fields)}"
                self.error(knode, path, f"unknown key {field_name!r}; {hint}")
                continue
            self.key_lines[path] = _line(knode)
            converted = self.value(vnode, hints[field_name], _rule_of(f), path)
            if converted is not _INVALID:
                values[field_name] = converted
        for f in fields.values():
            if f.name in values:
                continue
            # Defaults go through the same resolution as written values: paths become absolute.
            if dataclasses.is_dataclass(hints[f.name]):
                values[f.name] = self.section(_empty_mapping(node), hints[f.name], _join(key, f.name), "")
            elif isinstance(f.default, Path):
                rule = _rule_of(f)
                values[f.name] = f.default if rule.in_state else self.resolve(f.default, rule)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                path = _join(key, f.name)
                if path not in self.bad_keys:  # not merely given a wrong value
                    self.error(self.key_lines.get(key) or _line(node), path, "required setting is missing")
                values[f.name] = None  # placeholder: this config is rejected anyway
        return cls(**values)

    def sequence(self, node: Node, tp: Any, rule: _Rule, key: str) -> Any:
        if not isinstance(node, SequenceNode):
            return self.error(node, key, f"expected a list, got {_got(node)}")
        (item_type,) = get_args(tp)
        items = []
        for i, item in enumerate(node.value):
            path = f"{key}[{i}]"
            self.key_lines[path] = _line(item)
            converted = self.value(item, item_type, rule, path)
            items.append(None if converted is _INVALID else converted)  # keep indices stable
        return items

    def mapping(self, node: Node, tp: Any, rule: _Rule, key: str) -> Any:
        if not isinstance(node, MappingNode):
            return self.error(node, key, f"expected a mapping, got {_got(node)}")
        key_type, value_type = get_args(tp)
        result = {}
        for name, knode, vnode in self.entries(node, key):
            path = _join(key, name)
            self.key_lines[path] = _line(knode)
            if get_origin(key_type) is Literal and name not in get_args(key_type):
                self.error(knode, path, f"{name!r} is not one of: {', '.join(get_args(key_type))}")
                continue
            converted = self.value(vnode, value_type, rule, path, name)
            result[name] = None if converted is _INVALID else converted
        return result

    def scalar(self, node: Node, tp: Any, rule: _Rule, key: str) -> Any:
        expected = _expected(tp)
        if not isinstance(node, ScalarNode):
            return self.error(node, key, f"expected {expected}, got {_got(node)}")
        try:
            value = self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError) as e:  # ValueError: an integer of thousands of digits
            return self.error(node, key, f"unreadable value: {e}")
        choices = get_args(tp) if get_origin(tp) is Literal else ()
        if choices and type(value) is bool and node.value in choices:
            value = node.value  # YAML 1.1 reads a bare `off` (or `on`) as a boolean: the word was meant
        if rule.from_bool is not None and type(value) is bool:
            value = rule.from_bool[value]
        wanted = type(choices[0]) if choices else (str if tp is Path else tp)
        # bool is a subclass of int, and "5060" is not a number: compare exact types.
        if type(value) is not wanted and not (wanted is float and type(value) is int):
            hint = ""
            if wanted in (int, float) and isinstance(value, str):
                hint = " (numbers are written without quotes)"
            elif wanted is str and type(value) in (int, float, bool):
                hint = f' (quote it: "{node.value}")'
            return self.error(node, key, f"expected {expected}, got {_got(node)}{hint}")
        if choices and value not in choices:
            allowed = ", ".join(str(c) for c in choices)
            close = _suggest(value, choices) if isinstance(value, str) else []
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return self.error(node, key, f"{value!r} is not one of: {allowed}{hint}")
        if rule.lo is not None and value < rule.lo or rule.hi is not None and value > rule.hi:
            bounds = f">= {rule.lo}" if rule.hi is None else f"{rule.lo}..{rule.hi}"  # every hi has a lo
            return self.error(node, key, f"{value} is out of range ({bounds})")
        if rule.check is not None:
            try:
                rule.check(value)
            except ValueError as e:
                return self.error(node, key, str(e))
        if tp is Path:
            if not value:
                return self.error(node, key, "expected a path, got an empty string")
            value = self.resolve(Path(value), rule)
            try:
                missing = rule.must_exist and not value.is_file()
            except OSError as e:  # e.g. a name longer than the file system allows
                return self.error(node, key, f"cannot use this path: {e.strerror}")
            if missing:
                return self.error(node, key, f"file not found: {value}")
        return value

    def resolve(self, path: Path, rule: _Rule) -> Path:
        path = path.expanduser()
        return path if path.is_absolute() else self.bases[rule.base] / path

    def cross_check(self, config: Config) -> None:
        for key, message, reads in _cross_checks(config):
            if self.bad_keys.isdisjoint(reads):
                # A missing setting has no line of its own: the section that lacks it has one.
                parents = [key.rsplit(".", n)[0] for n in range(1, key.count(".") + 1)]
                line = next((self.key_lines[k] for k in (key, *reads, *parents) if k in self.key_lines), None)
                self.issues.append(ConfigIssue(self.file, line, key, message))


# --- Loading ------------------------------------------------------------------------------------


def default_config_text() -> str:
    """The built-in default config, as shipped in the package: `softswitch` prints it as a starter."""
    return importlib.resources.files("softswitch").joinpath(DEFAULT_CONFIG_NAME).read_text(encoding="utf-8")


def load_config(path: Path | None) -> Config:
    """Load and validate a config file; None loads the built-in default.

    Relative paths resolve against the file's directory, so a config means the same thing from
    wherever softswitch is started. The built-in default has no directory of its own: its
    directories resolve against the working directory and its flows against the repo's flows/.
    Raises ConfigError listing every problem found.
    """
    if path is None:
        source = str(importlib.resources.files("softswitch").joinpath(DEFAULT_CONFIG_NAME))
        return _parse(default_config_text(), source, {"dirs": Path.cwd(), "flows": REPO_FLOWS_DIR})
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([ConfigIssue(str(path), None, "", f"cannot read config file: {e}")]) from None
    base = path.absolute().parent
    return _parse(text, str(path), {"dirs": base, "flows": base})


def _parse(text: str, source: str, bases: Mapping[str, Path]) -> Config:
    try:
        return _parse_document(text, source, bases)
    except RecursionError:  # lists or mappings nested thousands deep: no config is written so
        raise ConfigError([ConfigIssue(source, None, "", "the config nests too deeply (lists or mappings "
                                       "thousands of levels deep)")]) from None


def _parse_document(text: str, source: str, bases: Mapping[str, Path]) -> Config:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = None if mark is None else mark.line + 1
        detail = f"{e.problem} ({e.context})" if e.context else str(e.problem)
        raise ConfigError([ConfigIssue(source, line, "", f"YAML syntax error: {detail}")]) from None
    except yaml.YAMLError as e:
        position = getattr(e, "position", None)  # a character YAML refuses: an offset, not a mark
        line = None if position is None else text.count("\n", 0, position) + 1
        raise ConfigError([ConfigIssue(source, line, "", f"YAML syntax error: {e}")]) from None
    if root is None or _is_null(root):
        message = "the document is empty; expected a mapping"
        raise ConfigError([ConfigIssue(source, _line(root) or 1, "", message)])
    if not isinstance(root, MappingNode):
        message = f"expected a mapping at the top, got {_got(root)}"
        raise ConfigError([ConfigIssue(source, _line(root), "", message)])
    walker = _Walker(source, bases)
    config = walker.section(root, Config, "", "")
    walker.cross_check(config)
    if walker.issues:
        raise ConfigError(walker.issues)
    return config


# --- Overrides (tests, CLI flags) -----------------------------------------------------------------


def replace_path(config: Config, path: str, value: Any) -> Config:
    """A copy of `config` with one setting changed, e.g. replace_path(c, "sip.udp_port", 5071).

    Path components are field names or mapping keys ("connections.pbx.port"). The new value goes
    through the same checks as the file's values (relative paths resolve against the working
    directory), and the cross-setting rules are checked again; ConfigError otherwise.
    """
    walker = _Walker("<override>", {"dirs": Path.cwd(), "flows": Path.cwd()})
    new = _replace(config, path.split("."), path, value, walker)
    if not walker.issues:  # a rejected value is no input for the cross-setting rules
        walker.cross_check(new)
    if walker.issues:
        raise ConfigError(walker.issues)
    return new


def with_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """replace_path for each "dotted.path": value pair, in order."""
    for path, value in overrides.items():
        config = replace_path(config, path, value)
    return config


def _replace(
    obj: Any, parts: list[str], path: str, value: Any, walker: _Walker, tp: Any = None, rule: _Rule = _NO_RULE
) -> Any:
    if not parts:
        return _checked(value, tp, rule, path, walker)
    name, rest = parts[0], parts[1:]
    if isinstance(obj, dict):
        if name not in obj:
            raise KeyError(f"{path}: no entry {name!r} (have: {', '.join(obj) or 'none'})")
        value_type = get_args(_strip_optional(tp)[0])[1]
        return {**obj, name: _replace(obj[name], rest, path, value, walker, value_type, rule)}
    if not dataclasses.is_dataclass(obj):
        raise KeyError(f"{path}: {name!r} is below a plain value")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if name not in fields:
        raise KeyError(f"{path}: no setting {name!r} (have: {', '.join(fields)})")
    hint = get_type_hints(type(obj))[name]
    new = _replace(getattr(obj, name), rest, path, value, walker, hint, _rule_of(fields[name]))
    return dataclasses.replace(obj, **{name: new})


def _checked(value: Any, tp: Any, rule: _Rule, path: str, walker: _Walker) -> Any:
    """Run an override through the walker by representing it as the YAML it would be written as."""
    plain = [str(v) if isinstance(v, Path) else v for v in value] if isinstance(value, list) else value
    plain = str(plain) if isinstance(plain, Path) else plain
    try:
        node = yaml.SafeDumper(None).represent_data(plain)
    except yaml.representer.RepresenterError:
        return value  # a whole typed section: the caller built it from the schema's own classes
    return walker.value(node, tp, rule, path)
