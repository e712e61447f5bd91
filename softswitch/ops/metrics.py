"""What an operator watches: counters kept by a `LegWatcher` on the UA thread, and gauges read
from the live objects in one pass (`Metrics.collect`, on the UA thread) into a typed snapshot
that the HTTP thread renders as status JSON, or as Prometheus text through a prometheus_client
custom collector (`SnapshotCollector`) on a registry of its own.

Labels stay bounded (directions, transports, hang-up reasons, queue refs, SIP codes, logger
names): never a call or leg id, so a busy day does not grow the scrape."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric,
                                            SummaryMetricFamily)
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from .. import __version__

if TYPE_CHECKING:
    from ..log import ErrorCounter
    from ..sip.endpoint import UserAgent

LegKey = tuple[str, str]  # (direction, transport)
# The native edge's counters (its stats also hold gauges: bindings, live_inbound, overloaded).
REGISTRAR_COUNTERS = ("register", "register_ok", "challenges", "auth_failures", "dropped", "invite_passed",
                      "invite_challenged", "invite_refused", "interval_too_brief", "out_of_order", "retransmissions",
                      "keepalive_options_sent", "keepalive_options_answered", "keepalive_options_failed",
                      "keepalive_crlf_sent", "keepalive_crlf_failed", "keepalive_became_unreachable")
# The edge's decisions about requests (native stats "security_<decision>"), as
# softswitch_security_decisions_total{decision=...}: README "Trunk addresses and the block list".
SECURITY_DECISIONS = ("blocked_auth_failures", "blocked_flood", "dropped_blocked_source", "dropped_user_agent",
                      "trunk_auth_failure", "trunk_not_blocked", "trunk_over_flood_rate", "trunk_options_dropped",
                      "trunk_requests_dropped")
# Answers the native edge sent to malformed or oversized requests, by code (native/malformed.c).
EDGE_ANSWER_PREFIX = "edge_answer_"
LEG_LABELS = ("direction", "transport")  # of the leg families, in LegKey order
MAX_REASON_LABELS = 64  # hang-up reasons come from code and SIP codes; a cap guards against surprises
OTHER = "other"


# ---- the snapshot -------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueGauge:
    """One queue (a flow's Queue trigger ref): who waits now, and its completed waits."""

    flow: str
    ref: str
    live: int  # callers on the line
    callbacks: int  # entries in callback mode (the caller hung up, asked to be called back)
    longest_wait_s: float  # the longest-waiting entry; 0 when none
    completed_count: int
    average_wait_s: float
    stats: Mapping[str, Any]  # the queue.getStats payload

    @property
    def size(self) -> int:
        return self.live + self.callbacks

    @property
    def wait_sum_s(self) -> float:
        return self.average_wait_s * self.completed_count


@dataclass(frozen=True)
class TrunkGauge:
    connection: str
    register: bool  # whether softswitch keeps a registration there at all
    registered: bool
    last_code: int
    last_reason: str


@dataclass(frozen=True)
class LoopLag:
    """`LoopStats` copied: per-bucket (not cumulative) turn counts, the last one above the largest."""

    buckets_ms: tuple[float, ...]
    bucket_counts: tuple[int, ...]
    sum_s: float
    turns: int
    recent_max_s: float


@dataclass(frozen=True)
class OverloadGauge:
    overloaded: bool | None  # None: no overload monitor in this process
    reason: str | None  # cpu | loop_lag while overloaded
    cpu_percent: float | None
    loop_lag_ms: float | None
    refusals: Mapping[str, int]  # by reason: concurrent, rate, cpu, loop_lag


@dataclass(frozen=True)
class ConnectionGauge:
    """Incoming SIP connections (TCP and TLS) and what the TCP guard closed (native/tcpguard.c)."""

    tcp: int = 0
    tls: int = 0
    trusted: int = 0  # over which a REGISTER succeeded or a call was admitted: not counted against limits
    pending: int = 0  # without a complete request yet, or with one in progress
    accepted: int = 0
    closed: Mapping[str, int] = field(default_factory=dict)  # by reason: connection_limit, request_timeout, ...

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> "ConnectionGauge":
        closed = {k[len("closed_"):]: int(v) for k, v in stats.items() if k.startswith("closed_")}
        return cls(tcp=int(stats.get("connections_tcp", 0)), tls=int(stats.get("connections_tls", 0)),
                   trusted=int(stats.get("connections_trusted", 0)), pending=int(stats.get("connections_pending", 0)),
                   accepted=int(stats.get("accepted", 0)), closed=closed)


@dataclass(frozen=True)
class ProcessGauge:
    cpu_seconds: float
    rss_bytes: int | None
    open_fds: int | None


@dataclass(frozen=True)
class ListenGauge:
    sip_address: str | None
    udp_port: int | None
    tcp_port: int | None


@dataclass(frozen=True)
class MetricsSnapshot:
    version: str
    taken_at: float  # epoch seconds
    uptime_s: float
    listen: ListenGauge
    legs_created: Mapping[LegKey, int]
    legs_ended: Mapping[LegKey, int]
    legs_answered: Mapping[LegKey, int]
    hangups: Mapping[str, int]
    legs_active: Mapping[LegKey, int]
    inbound_calls_active: int
    ai_legs_active: int
    registrations: int
    registered_extensions: tuple[str, ...]
    trunks: tuple[TrunkGauge, ...]
    queues: tuple[QueueGauge, ...]
    recordings_active: int
    recordings_finished: int | None  # None: this build's recordings do not count them
    recording_failures: int  # recordings stopped by a disk error (full, read-only)
    recording_health: Mapping[str, Any] | None  # /status "recordings"; None: the UA has none
    executions_active: int
    errors: Mapping[str, int]
    sip_responses: Mapping[tuple[str, int], int]  # (sent | received, code)
    registrar: Mapping[str, int]  # the native edge's counters
    overload: OverloadGauge
    cpu_percent: float
    loop_lag: LoopLag
    process: ProcessGauge
    security: Mapping[str, int] = field(default_factory=dict)  # the edge's decisions, by SECURITY_DECISIONS name
    connections: ConnectionGauge = field(default_factory=ConnectionGauge)


# ---- collecting ---------------------------------------------------------------------------------
def read_process() -> ProcessGauge:
    """CPU time, resident memory and open descriptors of this process (any thread)."""
    rss = None
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    try:
        fds: int | None = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = None
    return ProcessGauge(time.process_time(), rss, fds)


class Metrics:
    """Counters over every leg of the process (watch it with `ua.watch_legs`), and `collect`,
    which reads everything else from the UA's live objects. UA thread only, except `errors`."""

    def __init__(self, ua: "UserAgent", errors: "ErrorCounter | None" = None, *,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.ua = ua
        self.errors = errors
        self._monotonic, self._wall = monotonic, wall
        self._started = monotonic()
        self.legs_created: dict[LegKey, int] = {}
        self.legs_ended: dict[LegKey, int] = {}
        self.legs_answered: dict[LegKey, int] = {}
        self.hangups: dict[str, int] = {}
        self._live: dict[str, LegKey] = {}
        self._cpu_mark = (monotonic(), time.process_time())
        self._cpu_percent = 0.0

    # ---- LegWatcher -----------------------------------------------------------------------
    def leg_created(self, leg: Any) -> None:
        key = _leg_key(leg)
        self._live[leg.id] = key
        _add(self.legs_created, key)

    def leg_event(self, leg: Any, event: Any) -> None:
        from ..sip.events import LegAnswered, LegEnded
        if isinstance(event, LegAnswered):
            _add(self.legs_answered, _leg_key(leg))
        elif isinstance(event, LegEnded):
            key = self._live.pop(leg.id, None) or _leg_key(leg)
            _add(self.legs_ended, key)
            reason = event.reason if event.reason in self.hangups or len(self.hangups) < MAX_REASON_LABELS else OTHER
            _add(self.hangups, reason)

    # ---- one pass on the UA thread ----------------------------------------------------------
    def collect(self) -> MetricsSnapshot:
        ua = self.ua
        handler = ua.handler
        active: dict[LegKey, int] = {}
        for key in self._live.values():
            _add(active, key)
        bindings = _bindings(ua)
        from ..sip.registrar import DYNAMIC_TRUNK_GROUP
        extensions = tuple(sorted({b.extension for b in bindings if not b.group.startswith(DYNAMIC_TRUNK_GROUP)}))
        registrar = ua.registrar
        native = dict(registrar.stats()) if registrar is not None else {}
        responses_of = getattr(registrar, "sip_response_counts", None)
        guard = getattr(registrar, "tcp_guard", None)
        connections = ConnectionGauge.from_stats(guard.stats()) if guard is not None else ConnectionGauge()
        responses = dict(responses_of()) if callable(responses_of) else {}
        recordings = getattr(handler, "recordings", None)
        health = getattr(ua, "recording_health", None)
        runner = getattr(handler, "runner", None)
        stats = ua.loop_stats
        process = read_process()
        overload = _overload(registrar, native)
        listen = ua.listen
        return MetricsSnapshot(
            version=__version__,
            taken_at=self._wall(),
            uptime_s=self._monotonic() - self._started,
            listen=ListenGauge(listen.address if listen else None, listen.udp_port if listen else None,
                               listen.tcp_port if listen else None),
            legs_created=dict(self.legs_created),
            legs_ended=dict(self.legs_ended),
            legs_answered=dict(self.legs_answered),
            hangups=dict(self.hangups),
            legs_active=active,
            inbound_calls_active=active.get(("inbound", "sip"), 0),
            ai_legs_active=sum(n for (_, transport), n in active.items() if transport == "websocket"),
            registrations=len(bindings),
            registered_extensions=extensions,
            trunks=_trunks(ua),
            queues=_queues(handler),
            recordings_active=sum(1 for r in (getattr(recordings, "by_leg", None) or {}).values()
                                  if getattr(getattr(r, "recorder", None), "failure", None) is None),
            recordings_finished=getattr(recordings, "finished", None),
            recording_failures=health.failures_total if health is not None else 0,
            recording_health=health.document() if health is not None else None,
            executions_active=len({id(a.execution) for a in runner.running.values()}) if runner is not None else 0,
            errors=self.errors.counts() if self.errors is not None else {},
            sip_responses=responses,
            registrar={k: int(native[k]) for k in native
                       if k in REGISTRAR_COUNTERS or k.startswith(EDGE_ANSWER_PREFIX)},
            overload=overload,
            cpu_percent=overload.cpu_percent if overload.cpu_percent is not None else self._cpu(process.cpu_seconds),
            loop_lag=LoopLag(tuple(stats.BUCKETS_MS), tuple(stats.bucket_counts), stats.lag_sum, stats.turns,
                             stats.recent_max),
            process=process,
            security={d: int(native[f"security_{d}"]) for d in SECURITY_DECISIONS if f"security_{d}" in native},
            connections=connections,
        )

    def _cpu(self, cpu_now: float) -> float:
        """Process CPU since the previous collect (100 = one core busy), over at least a second."""
        now = self._monotonic()
        mark_time, mark_cpu = self._cpu_mark
        if now - mark_time >= 1.0:
            self._cpu_percent = 100.0 * (cpu_now - mark_cpu) / (now - mark_time)
            self._cpu_mark = (now, cpu_now)
        return self._cpu_percent


def _leg_key(leg: Any) -> LegKey:
    return (str(getattr(leg, "direction", "unknown")), str(getattr(leg, "transport", "sip")))


def _add(counts: dict, key: Any, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


def _bindings(ua: "UserAgent") -> list:
    return ua.registrar.bindings() if ua.registrar is not None else []


def _trunks(ua: "UserAgent") -> tuple[TrunkGauge, ...]:
    if ua.trunks is None:
        return ()
    return tuple(TrunkGauge(s.connection, s.register, s.registered, s.last_code, s.last_reason)
                 for _, s in sorted(ua.trunks.status().items()))


def _queues(handler: Any) -> tuple[QueueGauge, ...]:
    """Every queue a flow has a trigger for, and any other queue with entries or completed waits."""
    flow_queues = getattr(handler, "queues", None)
    if flow_queues is None or getattr(flow_queues.engine, "closed", True):
        return ()
    gauges = []
    for q in flow_queues.stats_json()["queues"]:
        stats = {"ref": q["ref"], "size": q["size"], "averageWaitSeconds": q["averageWaitSeconds"],
                 "completedCount": q["completedCount"], "updatedAt": q["updatedAt"]}  # as queue.getStats gives
        gauges.append(QueueGauge(flow=q["flow"], ref=q["ref"], live=q["live"], callbacks=q["callbacks"],
                                 longest_wait_s=q["longestWaitSeconds"], completed_count=q["completedCount"],
                                 average_wait_s=q["averageWaitSeconds"], stats=stats))
    return tuple(gauges)


def _overload(registrar: Any, native: Mapping[str, Any]) -> OverloadGauge:
    refusals = {k[len("overload_"):]: int(v) for k, v in native.items() if k.startswith("overload_")}
    state_of = getattr(getattr(registrar, "overload", None), "state", None)
    state = state_of() if callable(state_of) else None
    if state is None:
        return OverloadGauge(None, None, None, None, refusals)
    reason = getattr(state, "overloaded", None)
    return OverloadGauge(bool(reason), reason or None, getattr(state, "cpu_percent", None),
                         getattr(state, "loop_lag_ms", None), refusals)


# ---- Prometheus exposition (written by prometheus_client) ----------------------------------------
class SnapshotCollector:
    """The Prometheus families of one snapshot, as a prometheus_client custom collector: with no
    snapshot at all, only staleness and the process. Counter names passed with `_total` are
    exposed as given; no `_created` samples (none is given)."""

    def __init__(self, snap: MetricsSnapshot | None, *, stale: bool, process: ProcessGauge | None = None) -> None:
        self.snap, self.stale = snap, stale
        self.process = process or (snap.process if snap is not None else read_process())

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("softswitch_metrics_stale",
                                "1 when the UA thread did not answer in time and these figures are the last ones it gave",
                                value=1 if self.stale else 0)
        if self.snap is not None:
            yield from _snapshot_families(self.snap)
        yield from _process_families(self.process)


def render_prometheus(snap: MetricsSnapshot | None, *, stale: bool, process: ProcessGauge | None = None) -> bytes:
    """The text exposition of one snapshot, from a registry of its own (never the global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap, stale=stale, process=process))
    return generate_latest(registry)


def _labelled(family: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, help_text: str,
              labels: Sequence[str], samples: Iterable[tuple[Sequence[Any], float]]) -> Metric:
    """One family of labelled samples: (label values in `labels` order, value)."""
    fam = family(name, help_text, labels=labels)
    for values, value in samples:
        fam.add_metric([str(v) for v in values], value)
    return fam


def cumulative_buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (the last above every bound) as cumulative `le` buckets ending in +Inf."""
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(bounds, counts):
        running += n
        buckets.append((floatToGoString(bound), running))
    buckets.append(("+Inf", running + sum(counts[len(bounds):])))
    return buckets


def _snapshot_families(snap: MetricsSnapshot) -> Iterator[Metric]:
    yield _labelled(GaugeMetricFamily, "softswitch_info", "Version of the running softswitch", ["version"],
                    [((snap.version,), 1)])
    yield GaugeMetricFamily("softswitch_uptime_seconds", "Seconds since the server started", value=snap.uptime_s)
    legs = [("softswitch_legs_created_total", "Legs created (SIP and AI), by direction and transport", snap.legs_created),
            ("softswitch_legs_ended_total", "Legs ended, by direction and transport", snap.legs_ended),
            ("softswitch_legs_answered_total", "Legs answered (calls connected), by direction and transport",
             snap.legs_answered)]
    for name, help_text, counts in legs:
        yield _labelled(CounterMetricFamily, name, help_text, LEG_LABELS, sorted(counts.items()))
    yield _labelled(CounterMetricFamily, "softswitch_leg_hangups_total", "Ended legs by hang-up reason", ["reason"],
                    (((reason,), n) for reason, n in sorted(snap.hangups.items())))
    active_keys = sorted({("inbound", "sip"), ("outbound", "sip"), ("outbound", "websocket"), *snap.legs_active})
    yield _labelled(GaugeMetricFamily, "softswitch_legs_active", "Live legs, by direction and transport", LEG_LABELS,
                    ((key, snap.legs_active.get(key, 0)) for key in active_keys))
    yield GaugeMetricFamily("softswitch_inbound_calls_active", "Live inbound SIP calls", value=snap.inbound_calls_active)
    yield GaugeMetricFamily("softswitch_ai_legs_active", "Live AI voice legs", value=snap.ai_legs_active)
    yield GaugeMetricFamily("softswitch_registrations", "Live registration bindings (phones and dynamic trunks)",
                            value=snap.registrations)
    yield GaugeMetricFamily("softswitch_registered_extensions", "Extensions with at least one live binding",
                            value=len(snap.registered_extensions))
    yield _labelled(GaugeMetricFamily, "softswitch_trunk_registered",
                    "1 when softswitch's registration at a connection is live (connections that register)",
                    ["connection"], (((t.connection,), 1 if t.registered else 0) for t in snap.trunks if t.register))
    yield from _queue_families(snap.queues)
    yield GaugeMetricFamily("softswitch_recordings_active", "Call recordings being written", value=snap.recordings_active)
    if snap.recordings_finished is not None:
        yield CounterMetricFamily("softswitch_recordings_finished_total", "Call recordings finalized",
                                  value=snap.recordings_finished)
    yield CounterMetricFamily("softswitch_recording_failures_total",
                              "Recordings stopped by a disk error (full or read-only recordings disk)",
                              value=snap.recording_failures)
    if snap.recording_health is not None:
        yield GaugeMetricFamily("softswitch_recordings_failing",
                                "1 from a recording's disk error until a recording started after it writes audio",
                                value=1 if snap.recording_health["failing"] else 0)
    yield GaugeMetricFamily("softswitch_flow_executions_active", "Flow executions with a node running or waiting",
                            value=snap.executions_active)
    yield _labelled(CounterMetricFamily, "softswitch_errors_total", "Log records at ERROR or above, by logger",
                    ["logger"], (((logger,), n) for logger, n in sorted(snap.errors.items())))
    yield _labelled(CounterMetricFamily, "softswitch_sip_responses_total",
                    "SIP responses sent and received, by status code", ["direction", "code"],
                    sorted(snap.sip_responses.items()))
    yield _labelled(CounterMetricFamily, "softswitch_registrar_events_total",
                    "The SIP edge's counters: REGISTERs, challenges, auth failures, INVITEs passed, refused, dropped",
                    ["event"], (((event,), n) for event, n in sorted(snap.registrar.items())))
    yield _labelled(CounterMetricFamily, "softswitch_security_decisions_total",
                    "The SIP edge's decisions: sources blocked, requests dropped, trunk addresses left unblocked",
                    ["decision"], (((decision,), n) for decision, n in sorted(snap.security.items())))
    yield from _connection_families(snap.connections)
    yield _labelled(CounterMetricFamily, "softswitch_overload_refusals_total",
                    "New calls refused with 503 by overload control", ["reason"],
                    (((reason,), n) for reason, n in sorted(snap.overload.refusals.items())))
    if snap.overload.overloaded is not None:
        yield GaugeMetricFamily("softswitch_overloaded", "1 while overload control refuses new calls",
                                value=1 if snap.overload.overloaded else 0)
    yield GaugeMetricFamily("softswitch_cpu_percent", "Process CPU over the last scrape interval (100 = one core)",
                            value=snap.cpu_percent)
    lag = snap.loop_lag
    yield HistogramMetricFamily("softswitch_loop_lag_seconds", "How late UA loop turns ran beyond their 10 ms poll",
                                buckets=cumulative_buckets([b / 1000.0 for b in lag.buckets_ms], lag.bucket_counts),
                                sum_value=lag.sum_s)
    yield GaugeMetricFamily("softswitch_loop_lag_recent_max_seconds", "Worst UA loop lag in the last second",
                            value=lag.recent_max_s)


def _queue_families(queues: Sequence[QueueGauge]) -> Iterator[Metric]:
    labels = ["flow", "queue"]
    size = GaugeMetricFamily("softswitch_queue_size", "Queue entries, live callers plus callbacks pending", labels=labels)
    waiting = GaugeMetricFamily("softswitch_queue_waiting", "Callers on the line waiting in a queue", labels=labels)
    callbacks = GaugeMetricFamily("softswitch_queue_callbacks_pending", "Queue entries waiting for a callback",
                                  labels=labels)
    longest = GaugeMetricFamily("softswitch_queue_longest_wait_seconds",
                                "Wait so far of the longest-waiting entry (caller or callback)", labels=labels)
    waits = SummaryMetricFamily("softswitch_queue_wait_seconds", "Completed queue waits (until an operator answered)",
                                labels=labels)
    for q in queues:
        values = [q.flow, q.ref]
        size.add_metric(values, q.size)
        waiting.add_metric(values, q.live)
        callbacks.add_metric(values, q.callbacks)
        longest.add_metric(values, q.longest_wait_s)
        waits.add_metric(values, count_value=q.completed_count, sum_value=q.wait_sum_s)
    yield from (size, waiting, callbacks, longest, waits)


def _connection_families(conn: ConnectionGauge) -> Iterator[Metric]:
    yield _labelled(GaugeMetricFamily, "softswitch_sip_connections_open", "Incoming SIP connections open now, by transport",
                    ["transport"], [(("tcp",), conn.tcp), (("tls",), conn.tls)])
    yield GaugeMetricFamily("softswitch_sip_connections_trusted",
                            "Incoming connections over which a REGISTER succeeded or a call was admitted",
                            value=conn.trusted)
    yield GaugeMetricFamily("softswitch_sip_connections_pending",
                            "Incoming connections without a complete request yet, or with one in progress",
                            value=conn.pending)
    yield CounterMetricFamily("softswitch_sip_connections_accepted_total", "Incoming TCP and TLS connections accepted",
                              value=conn.accepted)
    yield _labelled(CounterMetricFamily, "softswitch_sip_connections_closed_total",
                    "Incoming connections the TCP guard closed, by reason", ["reason"],
                    (((reason,), n) for reason, n in sorted(conn.closed.items())))


def _process_families(process: ProcessGauge) -> Iterator[Metric]:
    yield CounterMetricFamily("softswitch_process_cpu_seconds_total", "CPU time of the process, all threads",
                              value=process.cpu_seconds)
    if process.rss_bytes is not None:
        yield GaugeMetricFamily("softswitch_process_resident_memory_bytes", "Resident memory", value=process.rss_bytes)
    if process.open_fds is not None:
        yield GaugeMetricFamily("softswitch_process_open_fds", "Open file descriptors", value=process.open_fds)


# ---- status JSON --------------------------------------------------------------------------------
def queue_document(q: QueueGauge) -> dict[str, Any]:
    return {"flow": q.flow, "ref": q.ref, "waiting": q.live, "callbacksPending": q.callbacks,
            "longestWaitSeconds": round(q.longest_wait_s, 3), "stats": dict(q.stats)}


def queues_document(snap: MetricsSnapshot | None, *, stale: bool) -> dict[str, Any]:
    return {"stale": stale, "queues": [queue_document(q) for q in snap.queues] if snap is not None else []}


def status_document(snap: MetricsSnapshot | None, *, stale: bool, http_listen: str | None = None,
                    process: ProcessGauge | None = None) -> dict[str, Any]:
    """GET /status and `softswitch status --json`."""
    process = process or (snap.process if snap is not None else read_process())
    doc: dict[str, Any] = {"stale": stale, "process": {"cpuSeconds": round(process.cpu_seconds, 3),
                                                        "rssBytes": process.rss_bytes, "openFds": process.open_fds}}
    if snap is None:
        return doc
    legs: dict[str, dict[str, int]] = {}
    for (direction, transport), n in sorted(snap.legs_active.items()):
        legs.setdefault(direction, {})[transport] = n
    doc.update({
        "version": snap.version,
        "takenAt": round(snap.taken_at, 3),
        "uptimeSeconds": round(snap.uptime_s, 1),
        "listen": {"sip": {"address": snap.listen.sip_address, "udp": snap.listen.udp_port,
                           "tcp": snap.listen.tcp_port}, "http": http_listen},
        "counts": {
            "inboundCallsActive": snap.inbound_calls_active,
            "legsActive": sum(snap.legs_active.values()),
            "legsActiveBy": legs,
            "aiLegsActive": snap.ai_legs_active,
            "legsCreated": sum(snap.legs_created.values()),
            "legsEnded": sum(snap.legs_ended.values()),
            "callsAnswered": sum(snap.legs_answered.values()),
            "flowExecutionsActive": snap.executions_active,
            "recordingsActive": snap.recordings_active,
            "recordingsFinished": snap.recordings_finished,
            "errors": sum(snap.errors.values()),
        },
        "hangups": dict(sorted(snap.hangups.items())),
        "recordings": dict(snap.recording_health) if snap.recording_health is not None else None,
        "registrations": {"bindings": snap.registrations, "extensions": list(snap.registered_extensions)},
        "trunks": [{"connection": t.connection, "register": t.register, "registered": t.registered,
                    "lastCode": t.last_code, "lastReason": t.last_reason} for t in snap.trunks],
        "queues": [queue_document(q) for q in snap.queues],
        "security": dict(sorted(snap.security.items())),
        "overload": {"overloaded": snap.overload.overloaded, "reason": snap.overload.reason,
                     "cpuPercent": snap.overload.cpu_percent,
                     "loopLagMs": snap.overload.loop_lag_ms, "refusals": dict(snap.overload.refusals)},
        "connections": {"tcp": snap.connections.tcp, "tls": snap.connections.tls,
                        "trusted": snap.connections.trusted, "pending": snap.connections.pending,
                        "accepted": snap.connections.accepted, "closed": dict(sorted(snap.connections.closed.items()))},
        "cpuPercent": round(snap.cpu_percent, 1),
        "loopLag": {"recentMaxMs": round(snap.loop_lag.recent_max_s * 1000, 1), "turns": snap.loop_lag.turns},
    })
    return doc
