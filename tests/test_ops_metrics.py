"""The metrics endpoint without SIP: what the leg watcher counts, what `collect` reads from a queue
engine, the Prometheus text (HELP/TYPE, escaping, cumulative histogram buckets), the routes
(404, 405, /healthz) and the stale fallback when the UA thread does not answer."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from softswitch.ops import metrics as m
from softswitch.ops.http import LoopHeartbeat, OpsHttpServer, SnapshotSource
from softswitch.sip.endpoint import LoopStats
from softswitch.sip.events import LegAnswered, LegEnded, LegRinging
from tests.support.server import sample_key
from tests.test_queue_engine import SCOPE, World


# ---- a UA without SIP -----------------------------------------------------------------------------
class FakeRegistrar:
    def __init__(self, bindings=(), stats=None, responses=None):
        self._bindings = list(bindings)
        self._stats = stats or {}
        self._responses = responses or {}

    def bindings(self):
        return list(self._bindings)

    def stats(self):
        return dict(self._stats)

    def sip_response_counts(self):
        return dict(self._responses)


def fake_ua(handler=None, registrar=None, loop_stats=None):
    return SimpleNamespace(handler=handler, registrar=registrar, trunks=None, loop_stats=loop_stats or LoopStats(),
                           listen=SimpleNamespace(address="127.0.0.1", udp_port=5060, tcp_port=5060))


def leg(leg_id, direction="inbound", transport="sip"):
    return SimpleNamespace(id=leg_id, direction=direction, transport=transport)


def binding(extension, group="internal"):
    return SimpleNamespace(extension=extension, group=group)


def snapshot(**changes) -> m.MetricsSnapshot:
    return replace(m.Metrics(fake_ua()).collect(), **changes)


def samples(text: str | bytes) -> dict[str, float]:
    """{'name{label="v",...}': value} of an exposition, parsed; labels in name order."""
    text = text.decode() if isinstance(text, bytes) else text  # rendered bytes, or a body read over HTTP
    return {sample_key(s.name, s.labels): s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


def full_snapshot() -> m.MetricsSnapshot:
    """A snapshot in which every optional family is present."""
    return snapshot(
        legs_created={("inbound", "sip"): 2}, legs_ended={("inbound", "sip"): 1}, legs_answered={("inbound", "sip"): 1},
        hangups={"remote_hangup": 1}, legs_active={("inbound", "sip"): 1},
        trunks=(m.TrunkGauge("provider", True, True, 200, "OK"), m.TrunkGauge("peer", False, False, 0, "")),
        queues=(m.QueueGauge("demo", "queue_support", 3, 1, 42.5, 4, 10.0, {"size": 4}),),
        recordings_finished=3, recording_health={"failing": False}, errors={"softswitch.flow": 1},
        sip_responses={("sent", 200): 1}, registrar={"register": 1}, security={"blocked_flood": 1},
        connections=m.ConnectionGauge(tcp=1, closed={"connection_limit": 1}),
        overload=m.OverloadGauge(False, None, 10.0, 1.0, {"concurrent": 1}))


# ---- counting -------------------------------------------------------------------------------------
def test_the_leg_watcher_counts_legs_answers_and_hangup_reasons_by_direction_and_transport():
    metrics = m.Metrics(fake_ua())
    a, b, ai = leg("leg_a"), leg("leg_b", "outbound"), leg("leg_ai", "outbound", "websocket")
    for x in (a, b, ai):
        metrics.leg_created(x)
    metrics.leg_event(a, LegRinging("leg_a"))
    metrics.leg_event(a, LegAnswered("leg_a"))
    metrics.leg_event(ai, LegAnswered("leg_ai"))
    metrics.leg_event(b, LegEnded("leg_b", "sip_486", 486))
    snap = metrics.collect()
    assert snap.legs_created == {("inbound", "sip"): 1, ("outbound", "sip"): 1, ("outbound", "websocket"): 1}
    assert snap.legs_answered == {("inbound", "sip"): 1, ("outbound", "websocket"): 1}
    assert snap.legs_ended == {("outbound", "sip"): 1} and snap.hangups == {"sip_486": 1}
    assert snap.legs_active == {("inbound", "sip"): 1, ("outbound", "websocket"): 1}
    assert (snap.inbound_calls_active, snap.ai_legs_active) == (1, 1)
    metrics.leg_event(a, LegEnded("leg_a", "remote_hangup", 200))
    metrics.leg_event(ai, LegEnded("leg_ai", "remote_hangup", 200))
    snap = metrics.collect()
    assert snap.legs_active == {} and snap.inbound_calls_active == 0
    assert snap.hangups == {"sip_486": 1, "remote_hangup": 2}


def test_hangup_reason_labels_are_capped_so_the_scrape_stays_bounded():
    metrics = m.Metrics(fake_ua())
    for i in range(m.MAX_REASON_LABELS + 10):
        x = leg(f"leg_{i}")
        metrics.leg_created(x)
        metrics.leg_event(x, LegEnded(x.id, f"reason_{i}", 200))
    hangups = metrics.collect().hangups
    assert len(hangups) == m.MAX_REASON_LABELS + 1 and hangups[m.OTHER] == 10


def test_collect_reads_registrations_sip_responses_overload_refusals_and_loop_lag():
    stats = LoopStats()
    for lag in (0.0005, 0.003, 0.003, 0.2, 2.0):
        stats.record(lag, time.monotonic())
    registrar = FakeRegistrar(
        bindings=[binding("1001"), binding("1001"), binding("pbx", "trunk:pbx")],
        stats={"register": 4, "challenges": 2, "bindings": 3, "live_inbound": 1, "overloaded": 0,
               "overload_concurrent": 5, "overload_rate": 1},
        responses={("sent", 401): 2, ("sent", 200): 7, ("received", 180): 1})
    snap = m.Metrics(fake_ua(registrar=registrar, loop_stats=stats)).collect()
    assert snap.registrations == 3 and snap.registered_extensions == ("1001",)
    assert snap.sip_responses == {("sent", 401): 2, ("sent", 200): 7, ("received", 180): 1}
    assert snap.registrar == {"register": 4, "challenges": 2}  # gauges in the native stats are not counters
    assert snap.overload.refusals == {"concurrent": 5, "rate": 1} and snap.overload.overloaded is None
    assert snap.loop_lag.turns == 5 and snap.loop_lag.bucket_counts[-1] == 1
    assert snap.process.rss_bytes > 0 and snap.process.open_fds > 0


def test_queue_gauges_count_live_callers_callbacks_the_longest_wait_and_completed_waits(tmp_path):
    world = World(tmp_path / "queues.sqlite3")
    try:
        world.operators.state = {"1001": "busy", "1002": "busy"}
        world.put("leg_a")
        world.run(10)
        world.put("leg_b")
        world.put("leg_c")
        world.engine.set_callback("leg_c", True)
        world.engine.leg_ended("leg_c")  # hung up after asking for a callback
        world.run(5)
        world.operators.state["1001"] = "free"
        world.engine.availability_changed("1001")
        world.run()
        world.finish(world.dialer.last(), answered=True)  # leg_a taken after 15 s
        world.run(2)
        queues = SimpleNamespace(engine=world.engine, stats_json=lambda: world.engine.stats_json([(SCOPE, "empty")]))
        snap = m.Metrics(fake_ua(handler=SimpleNamespace(queues=queues))).collect()
        empty, q = snap.queues  # a Queue trigger with no one in it is listed too
        assert (empty.ref, empty.size, empty.completed_count) == ("empty", 0, 0)
        assert (q.flow, q.ref, q.live, q.callbacks, q.size) == (SCOPE, "support", 1, 1, 2)
        assert q.longest_wait_s == pytest.approx(7.0)  # leg_b and leg_c, queued at 10 s, now 17 s
        assert q.completed_count == 1 and q.wait_sum_s == pytest.approx(15.0)
        assert q.stats["size"] == 2 and q.stats["updatedAt"] == int(world.engine.wall() * 1000)
    finally:
        world.engine.close()


# ---- Prometheus text ------------------------------------------------------------------------------
def test_every_family_has_help_and_type_before_its_samples_and_names_are_softswitch():
    text = m.render_prometheus(snapshot(), stale=False).decode()
    declared: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name.startswith("softswitch_")
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("counter", "gauge", "histogram", "summary")
            declared[name] = kind
        else:
            name = re.match(r"[a-z_]+", line).group(0)
            family = next(f for f in declared if name == f or name.startswith(f + "_"))
            assert name == family or declared[family] in ("histogram", "summary"), line
    assert declared["softswitch_legs_created_total"] == "counter" and declared["softswitch_loop_lag_seconds"] == "histogram"
    assert text.endswith("\n")


# What dashboards read: every family's exposed name (counters with _total), type, sample names and label
# names, as the hand-written writer exposed them before prometheus_client wrote the text.
FAMILIES = [
    ("softswitch_metrics_stale", "gauge", {"": ()}),
    ("softswitch_info", "gauge", {"": ("version",)}),
    ("softswitch_uptime_seconds", "gauge", {"": ()}),
    ("softswitch_legs_created_total", "counter", {"": ("direction", "transport")}),
    ("softswitch_legs_ended_total", "counter", {"": ("direction", "transport")}),
    ("softswitch_legs_answered_total", "counter", {"": ("direction", "transport")}),
    ("softswitch_leg_hangups_total", "counter", {"": ("reason",)}),
    ("softswitch_legs_active", "gauge", {"": ("direction", "transport")}),
    ("softswitch_inbound_calls_active", "gauge", {"": ()}),
    ("softswitch_ai_legs_active", "gauge", {"": ()}),
    ("softswitch_registrations", "gauge", {"": ()}),
    ("softswitch_registered_extensions", "gauge", {"": ()}),
    ("softswitch_trunk_registered", "gauge", {"": ("connection",)}),
    ("softswitch_queue_size", "gauge", {"": ("flow", "queue")}),
    ("softswitch_queue_waiting", "gauge", {"": ("flow", "queue")}),
    ("softswitch_queue_callbacks_pending", "gauge", {"": ("flow", "queue")}),
    ("softswitch_queue_longest_wait_seconds", "gauge", {"": ("flow", "queue")}),
    ("softswitch_queue_wait_seconds", "summary", {"_count": ("flow", "queue"), "_sum": ("flow", "queue")}),
    ("softswitch_recordings_active", "gauge", {"": ()}),
    ("softswitch_recordings_finished_total", "counter", {"": ()}),
    ("softswitch_recording_failures_total", "counter", {"": ()}),
    ("softswitch_recordings_failing", "gauge", {"": ()}),
    ("softswitch_flow_executions_active", "gauge", {"": ()}),
    ("softswitch_errors_total", "counter", {"": ("logger",)}),
    ("softswitch_sip_responses_total", "counter", {"": ("code", "direction")}),
    ("softswitch_registrar_events_total", "counter", {"": ("event",)}),
    ("softswitch_security_decisions_total", "counter", {"": ("decision",)}),
    ("softswitch_sip_connections_open", "gauge", {"": ("transport",)}),
    ("softswitch_sip_connections_trusted", "gauge", {"": ()}),
    ("softswitch_sip_connections_pending", "gauge", {"": ()}),
    ("softswitch_sip_connections_accepted_total", "counter", {"": ()}),
    ("softswitch_sip_connections_closed_total", "counter", {"": ("reason",)}),
    ("softswitch_overload_refusals_total", "counter", {"": ("reason",)}),
    ("softswitch_overloaded", "gauge", {"": ()}),
    ("softswitch_cpu_percent", "gauge", {"": ()}),
    ("softswitch_loop_lag_seconds", "histogram", {"_bucket": ("le",), "_count": (), "_sum": ()}),
    ("softswitch_loop_lag_recent_max_seconds", "gauge", {"": ()}),
    ("softswitch_process_cpu_seconds_total", "counter", {"": ()}),
    ("softswitch_process_resident_memory_bytes", "gauge", {"": ()}),
    ("softswitch_process_open_fds", "gauge", {"": ()}),
]
LOOP_LAG_BOUNDS = ["0.001", "0.002", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "+Inf"]


def test_every_family_keeps_its_name_type_and_label_names():
    text = m.render_prometheus(full_snapshot(), stale=False).decode()
    declared = [(line.split()[2], line.split()[3]) for line in text.splitlines() if line.startswith("# TYPE ")]
    assert declared == [(name, kind) for name, kind, _ in FAMILIES]
    got = {}
    for fam in text_string_to_metric_families(text):
        exposed = fam.name + "_total" if fam.type == "counter" else fam.name
        for s in fam.samples:
            got.setdefault(exposed, {})[s.name[len(exposed):]] = tuple(sorted(s.labels))
    assert got == {name: suffixes for name, _, suffixes in FAMILIES}
    lag = [s for fam in text_string_to_metric_families(text) if fam.name == "softswitch_loop_lag_seconds"
           for s in fam.samples if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in lag] == LOOP_LAG_BOUNDS  # seconds, as dashboards select them


def test_without_a_snapshot_only_staleness_and_the_process_are_exposed():
    got = samples(m.render_prometheus(None, stale=True))
    assert got.keys() == {"softswitch_metrics_stale", "softswitch_process_cpu_seconds_total",
                          "softswitch_process_resident_memory_bytes", "softswitch_process_open_fds"}
    assert got["softswitch_metrics_stale"] == 1 and got["softswitch_process_open_fds"] > 0


def test_the_tcp_guard_figures_are_gauges_and_counters_by_reason_and_in_status():
    stats = {"installed": True, "connections_tcp": 7, "connections_tls": 2, "connections_trusted": 5,
             "connections_pending": 1, "accepted": 40, "became_trusted": 6, "events_dropped": 0,
             "closed_connection_limit": 26, "closed_request_timeout": 2, "closed_silent_timeout": 0}
    snap = snapshot(connections=m.ConnectionGauge.from_stats(stats))
    got = samples(m.render_prometheus(snap, stale=False))
    assert got['softswitch_sip_connections_open{transport="tcp"}'] == 7
    assert got['softswitch_sip_connections_open{transport="tls"}'] == 2
    assert got["softswitch_sip_connections_trusted"] == 5 and got["softswitch_sip_connections_pending"] == 1
    assert got["softswitch_sip_connections_accepted_total"] == 40
    assert got['softswitch_sip_connections_closed_total{reason="connection_limit"}'] == 26
    assert got['softswitch_sip_connections_closed_total{reason="request_timeout"}'] == 2
    doc = m.status_document(snap, stale=False)["connections"]
    assert doc == {"tcp": 7, "tls": 2, "trusted": 5, "pending": 1, "accepted": 40,
                   "closed": {"connection_limit": 26, "request_timeout": 2, "silent_timeout": 0}}


def test_label_values_are_escaped_so_the_exposition_parses_back_to_them():
    logger = 'soft"switch\\x\ny'  # a logger name with a quote, a backslash and a newline
    text = m.render_prometheus(snapshot(errors={logger: 2}), stale=False).decode()
    (errors,) = [fam for fam in text_string_to_metric_families(text) if fam.name == "softswitch_errors"]
    assert [(s.labels, s.value) for s in errors.samples] == [({"logger": logger}, 2)]


def test_histogram_buckets_are_cumulative_and_end_with_inf_equal_to_count():
    lag = m.LoopLag((1, 10), (4, 1, 2), 0.75, 7, 0.5)
    got = samples(m.render_prometheus(snapshot(loop_lag=lag), stale=False))
    assert got['softswitch_loop_lag_seconds_bucket{le="0.001"}'] == 4
    assert got['softswitch_loop_lag_seconds_bucket{le="0.01"}'] == 5
    assert got['softswitch_loop_lag_seconds_bucket{le="+Inf"}'] == 7 == got["softswitch_loop_lag_seconds_count"]
    assert got["softswitch_loop_lag_seconds_sum"] == 0.75
    assert not any(k.startswith("softswitch_loop_lag_seconds_created") for k in got)


def test_queue_and_sip_response_samples_carry_their_labels():
    queue = m.QueueGauge("demo", "queue_support", 3, 1, 42.5, 4, 10.0, {"size": 4})
    snap = snapshot(queues=(queue,), sip_responses={("sent", 200): 9, ("sent", 401): 1})
    got = samples(m.render_prometheus(snap, stale=False))
    labels = '{flow="demo",queue="queue_support"}'
    assert got["softswitch_queue_size" + labels] == 4 and got["softswitch_queue_waiting" + labels] == 3
    assert got["softswitch_queue_callbacks_pending" + labels] == 1
    assert got["softswitch_queue_longest_wait_seconds" + labels] == 42.5
    assert got["softswitch_queue_wait_seconds_sum" + labels] == 40.0
    assert got["softswitch_queue_wait_seconds_count" + labels] == 4
    assert got['softswitch_sip_responses_total{code="401",direction="sent"}'] == 1


def test_the_edges_security_decisions_are_one_family_labelled_by_decision():
    registrar = FakeRegistrar(stats={"security_blocked_flood": 2, "security_trunk_options_dropped": 26,
                                     "security_trunk_not_blocked": 1, "security_unknown_future": 9,
                                     "overload_trunk_rate": 3})
    snap = m.Metrics(fake_ua(registrar=registrar)).collect()
    assert snap.security == {"blocked_flood": 2, "trunk_options_dropped": 26, "trunk_not_blocked": 1}
    assert snap.overload.refusals == {"trunk_rate": 3}
    got = samples(m.render_prometheus(snap, stale=False))
    assert got['softswitch_security_decisions_total{decision="trunk_options_dropped"}'] == 26
    assert got['softswitch_security_decisions_total{decision="blocked_flood"}'] == 2
    assert got['softswitch_overload_refusals_total{reason="trunk_rate"}'] == 3
    assert m.status_document(snap, stale=False)["security"]["trunk_not_blocked"] == 1


def test_the_native_edge_reports_every_security_decision_the_metrics_know(ua):
    stats = ua.run_sync(ua.registrar.stats)
    assert {f"security_{d}" for d in m.SECURITY_DECISIONS} == {k for k in stats if k.startswith("security_")}
    assert "overload_trunk_rate" in stats


# ---- HTTP -----------------------------------------------------------------------------------------
class Endpoint:
    """An OpsHttpServer on a free port with a scripted UA: `answer` False makes run_sync time out."""

    def __init__(self, snap: m.MetricsSnapshot, turning: bool = True) -> None:
        self.snap, self.answer, self.turning = snap, True, turning
        self.collects = 0
        self._turns = 0
        self.source = SnapshotSource(self.run_sync, self.collect, timeout=0.5)
        heartbeat = LoopHeartbeat(self.turns, window=0.5)
        self.server = OpsHttpServer(("127.0.0.1", 0), self.source, heartbeat)
        self.server.start()

    def turns(self) -> int:
        if self.turning:
            self._turns += 1
        return self._turns

    def collect(self) -> m.MetricsSnapshot:
        self.collects += 1
        return self.snap

    def run_sync(self, fn, timeout):
        if not self.answer:
            time.sleep(timeout)
            raise TimeoutError("the UA thread did not run 'job'")
        return fn()

    def request(self, path: str, method: str = "GET") -> tuple[int, str, dict]:
        host, port = self.server.address
        req = urllib.request.Request(f"http://{host}:{port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), dict(exc.headers)


@pytest.fixture
def endpoint():
    ep = Endpoint(snapshot(inbound_calls_active=3))
    yield ep
    ep.server.stop()


def test_metrics_status_and_queues_are_served(endpoint):
    code, body, headers = endpoint.request("/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    got = samples(body)
    assert got["softswitch_inbound_calls_active"] == 3 and got["softswitch_metrics_stale"] == 0
    code, body, headers = endpoint.request("/status")
    doc = json.loads(body)
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert doc["stale"] is False and doc["counts"]["inboundCallsActive"] == 3
    assert doc["listen"]["http"] == endpoint.server.listen
    code, body, _ = endpoint.request("/queues")
    assert code == 200 and json.loads(body) == {"stale": False, "queues": []}


def test_unknown_paths_are_404_and_other_methods_405(endpoint):
    assert endpoint.request("/nope")[0] == 404
    assert endpoint.request("/")[0] == 404
    code, _, headers = endpoint.request("/metrics", "POST")
    assert code == 405 and "GET" in headers["Allow"]
    assert endpoint.request("/status", "DELETE")[0] == 405
    assert endpoint.request("/metrics?x=1")[0] == 200


def test_a_ua_that_does_not_answer_gets_the_last_snapshot_marked_stale(endpoint):
    assert samples(endpoint.request("/metrics")[1])["softswitch_metrics_stale"] == 0
    endpoint.answer = False
    endpoint.snap = snapshot(inbound_calls_active=99)  # never collected: the UA is stuck
    started = time.monotonic()
    code, body, _ = endpoint.request("/metrics")
    assert code == 200 and time.monotonic() - started < 5
    got = samples(body)
    assert got["softswitch_metrics_stale"] == 1 and got["softswitch_inbound_calls_active"] == 3
    assert got["softswitch_process_open_fds"] > 0  # the process figures are read fresh
    doc = json.loads(endpoint.request("/status")[1])
    assert doc["stale"] is True and doc["counts"]["inboundCallsActive"] == 3
    assert json.loads(endpoint.request("/queues")[1])["stale"] is True


def test_without_any_snapshot_the_endpoint_still_answers_stale():
    ep = Endpoint(snapshot())
    ep.answer = False
    try:
        code, body, _ = ep.request("/metrics")
        assert code == 200 and samples(body)["softswitch_metrics_stale"] == 1
        assert "softswitch_inbound_calls_active" not in body
        code, body, _ = ep.request("/status")
        assert code == 200 and json.loads(body)["stale"] is True
    finally:
        ep.server.stop()


def test_concurrent_requests_share_one_collect_on_the_ua_thread():
    gate = threading.Event()
    calls = []

    def run_sync(fn, timeout):
        calls.append(fn)
        gate.wait(timeout)
        return fn()

    source = SnapshotSource(run_sync, lambda: snapshot(inbound_calls_active=len(calls)), timeout=5)
    results = []
    threads = [threading.Thread(target=lambda: results.append(source.get())) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    gate.set()
    for t in threads:
        t.join(10)
    assert len(calls) == 1
    assert [(snap.inbound_calls_active, stale) for snap, stale in results] == [(1, False)] * 4


def test_healthz_is_ok_while_the_loop_turns_and_503_when_it_stops(endpoint):
    assert endpoint.request("/healthz")[:2] == (200, "ok\n")
    endpoint.turning = False
    code, body, _ = endpoint.request("/healthz")
    assert code == 503 and "has not turned" in body


def test_a_taken_port_is_a_clear_error_naming_the_setting(endpoint):
    from softswitch.ops.http import MetricsListenError
    with pytest.raises(MetricsListenError, match=r"metrics\.http_listen"):
        OpsHttpServer(endpoint.server.address)
