"""Bounds on incoming TCP and TLS connections, seen from Python.

The guard is native (`native/tcpguard.c`): it watches every connection pjsip accepts and closes
those over a source's limits (`security.tcp_max_connections_per_source`, `..._pending_per_source`)
or holding an incomplete request too long (`security.tcp_request_timeout_seconds`,
`..._first_request_timeout_seconds`). Connections that registered or had a call admitted are
trusted by the registrar and not counted. This wrapper configures it and hands its decisions to
the registrar, which logs them as security events like its own.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

import _softswitch_native as native

if TYPE_CHECKING:
    from ..config import SecurityConfig


class TcpGuardDecision(str, Enum):
    """The guard's security events (`SecurityEvent.event`); each closes one connection."""

    CONNECTION_LIMIT = "tcp_connection_limit"  # the address holds its limit of unauthenticated connections
    PENDING_LIMIT = "tcp_pending_limit"  # ... or of connections without a complete request
    REQUEST_TIMEOUT = "tcp_request_timeout"  # a request begun and not completed in time
    SILENT_TIMEOUT = "tcp_silent_timeout"  # no complete request since the connection opened
    TABLE_FULL = "tcp_table_full"  # no room to watch it (more connections than the ioqueue holds)


class TcpGuard:
    """Owned by the Registrar; every method runs on the UA thread."""

    def configure(self, security: "SecurityConfig") -> None:
        """Installs the guard on first use; later calls (a config reload) change the limits."""
        native.tcpguard_configure(max_per_source=security.tcp_max_connections_per_source,
                                  max_pending_per_source=security.tcp_max_pending_per_source,
                                  request_timeout_ms=security.tcp_request_timeout_seconds * 1000,
                                  first_request_timeout_ms=security.tcp_first_request_timeout_seconds * 1000)

    def events(self) -> list[dict]:
        """Decisions since the last call, as dicts shaped like the registrar's security events."""
        return native.tcpguard_poll_events()

    def stats(self) -> dict:
        """Live incoming connections (`connections_tcp`, `_tls`, `_trusted`, `_pending`) and
        counters (`accepted`, `became_trusted`, `closed_<reason>`, `events_dropped`)."""
        return native.tcpguard_stats()

    def close(self) -> None:
        native.tcpguard_close()
