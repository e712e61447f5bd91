"""The operator's HTTP endpoint on `metrics.http_listen`: /metrics (Prometheus), /status and
/queues (JSON), /healthz. It runs in its own daemon threads and reads the UA thread only through
`run_sync` with a 2 s bound: when the UA is too busy to answer, the last snapshot is served
marked stale, so a scrape never hangs and never takes the server down."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from .metrics import MetricsSnapshot, queues_document, read_process, render_prometheus, status_document

if TYPE_CHECKING:
    from ..sip.endpoint import UserAgent
    from .metrics import Metrics

log = logging.getLogger("softswitch.http")

UA_TIMEOUT_S = 2.0  # how long a request waits for the UA thread before serving the last snapshot
HEALTH_WINDOW_S = 2.0  # /healthz: the UA loop must turn within this
SETTING = "metrics.http_listen"


class MetricsListenError(RuntimeError):
    """The endpoint cannot bind its address; the message names the setting to change."""


class SnapshotSource:
    """Snapshots from the UA thread, one collect in flight at a time: concurrent requests share
    it, and a collect that is late (the UA is busy) is not queued again behind itself."""

    def __init__(self, run_sync: Callable[..., Any], collect: Callable[[], MetricsSnapshot], *,
                 timeout: float = UA_TIMEOUT_S) -> None:
        self._run_sync = run_sync
        self._collect = collect
        self.timeout = timeout
        self._cond = threading.Condition()
        self._last: MetricsSnapshot | None = None
        self._generation = 0  # snapshots taken so far
        self._in_flight = False

    def _job(self) -> MetricsSnapshot:  # on the UA thread
        snap = None
        try:
            snap = self._collect()
            return snap
        finally:
            with self._cond:
                if snap is not None:
                    self._last, self._generation = snap, self._generation + 1
                self._in_flight = False
                self._cond.notify_all()

    def get(self) -> tuple[MetricsSnapshot | None, bool]:
        """(snapshot, stale): a fresh snapshot, or the last one (None if none yet) marked stale."""
        deadline = time.monotonic() + self.timeout
        with self._cond:
            target = self._generation + 1
            submit = not self._in_flight
            self._in_flight = True
        if submit:
            try:
                self._run_sync(self._job, timeout=self.timeout)
            except TimeoutError:
                log.warning("the UA thread did not answer a metrics collect within %.0f s; serving the last "
                            "snapshot as stale", self.timeout)
            except Exception:
                log.exception("collecting metrics failed")
        with self._cond:
            self._cond.wait_for(lambda: self._generation >= target, max(0.0, deadline - time.monotonic()))
            return self._last, self._generation < target


class LoopHeartbeat:
    """Whether the UA loop turns: it counts its turns, so a count that moves within the window
    means the loop is alive (a turn stuck in a callback stops the count)."""

    def __init__(self, turns: Callable[[], int], running: Callable[[], bool] = lambda: True,
                 window: float = HEALTH_WINDOW_S) -> None:
        self._turns, self._running, self.window = turns, running, window

    def alive(self) -> bool:
        if not self._running():
            return False
        start, deadline = self._turns(), time.monotonic() + self.window
        while time.monotonic() < deadline:
            time.sleep(0.01)
            if self._turns() != start:
                return True
        return False


class OpsHttpServer:
    """Bound at construction (so `softswitch run` fails before SIP starts if the port is taken),
    serving from `start` until `stop`."""

    def __init__(self, address: tuple[str, int], source: SnapshotSource | None = None,
                 heartbeat: LoopHeartbeat | None = None) -> None:
        self.source = source
        self.heartbeat = heartbeat
        host, port = address
        try:
            self._server = _Server((host, port), _Handler)
        except OSError as exc:
            raise MetricsListenError(
                f"cannot serve metrics and status on {host}:{port} ({SETTING}): {exc.strerror or exc}; "
                f"is another softswitch running? Set {SETTING} to a free address, or to null to turn it off"
            ) from None
        self._server.ops = self
        self._thread: threading.Thread | None = None

    def serve(self, ua: "UserAgent", metrics: "Metrics") -> None:
        """Serve `metrics` of a running UA: collects on its thread, health from its loop turns."""
        self.source = SnapshotSource(ua.run_sync, metrics.collect)
        self.heartbeat = LoopHeartbeat(lambda: ua.loop_stats.turns, lambda: ua.running)
        self.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def listen(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        assert self.source is not None and self.heartbeat is not None, "serve() or give source and heartbeat"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.25},
                                        name="ops-http", daemon=True)
        self._thread.start()
        log.info("metrics and status on http://%s (/metrics, /status, /queues, /healthz)", self.listen)

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    # ---- routes (request threads) ---------------------------------------------------------------
    def respond(self, method: str, target: str) -> tuple[int, str, bytes, dict[str, str]]:
        """(status, content type, body, extra headers) for one request."""
        path = urlsplit(target).path.rstrip("/") or "/"
        route = _ROUTES.get(path)
        if route is None:
            return 404, "text/plain; charset=utf-8", f"no such path {path}; try /metrics, /status, /queues, /healthz\n".encode(), {}
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", f"{method} is not allowed; use GET\n".encode(), {"Allow": "GET, HEAD"}
        return route(self)

    def _metrics(self) -> tuple[int, str, bytes, dict[str, str]]:
        snap, stale = self.source.get()
        process = read_process() if stale else None
        # generate_latest writes text format 0.0.4; prometheus_client's own server labels it this way too.
        return 200, CONTENT_TYPE_PLAIN_0_0_4, render_prometheus(snap, stale=stale, process=process), {}

    def _status(self) -> tuple[int, str, bytes, dict[str, str]]:
        snap, stale = self.source.get()
        doc = status_document(snap, stale=stale, http_listen=self.listen, process=read_process() if stale else None)
        return 200, "application/json", _json(doc), {}

    def _queues(self) -> tuple[int, str, bytes, dict[str, str]]:
        snap, stale = self.source.get()
        return 200, "application/json", _json(queues_document(snap, stale=stale)), {}

    def _healthz(self) -> tuple[int, str, bytes, dict[str, str]]:
        if self.heartbeat.alive():
            return 200, "text/plain; charset=utf-8", b"ok\n", {}
        return 503, "text/plain; charset=utf-8", f"the UA loop has not turned for {self.heartbeat.window:.0f} s\n".encode(), {}


_ROUTES: dict[str, Callable[[OpsHttpServer], tuple[int, str, bytes, dict[str, str]]]] = {
    "/metrics": OpsHttpServer._metrics,
    "/status": OpsHttpServer._status,
    "/queues": OpsHttpServer._queues,
    "/healthz": OpsHttpServer._healthz,
}


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    ops: OpsHttpServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a client that stalls mid-request lets its thread go
    server_version = "softswitch"
    protocol_version = "HTTP/1.0"

    def _serve(self) -> None:
        try:
            status, ctype, body, headers = self.server.ops.respond(self.command, self.path)
        except Exception:
            log.exception("%s %s failed", self.command, self.path)
            status, ctype, body, headers = 500, "text/plain; charset=utf-8", b"internal error; see the log\n", {}
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the base class's name)
        log.debug("%s %s", self.address_string(), format % args)
