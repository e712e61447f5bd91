"""The UA core: one thread that owns the pjsua2 endpoint and everything created from it.

pjsua2 runs with no worker threads of its own (`threadCnt=0`, `mainThreadOnly`), so every SIP
callback, every flow step and every timer runs here, in `UserAgent._loop`. Other threads
(signal handlers, WebSocket I/O, tests) hand work over with `call_soon`, a thread-safe queue
drained on every turn. Only the conference bridge's clock thread runs beside it, and the only
Python it runs is end-of-file notifications that are turned into commands for this loop.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..clock import Clock, MonotonicClock, Timers
from ..ids import IdFactory
from ..config import Config

log = logging.getLogger("softswitch.ua")
pjlog = logging.getLogger("softswitch.pjsip")

# pjsip levels 1..6 mapped onto Python logging.
_PJ_LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO,
              4: logging.DEBUG, 5: logging.DEBUG, 6: logging.DEBUG}

LOOP_POLL_MS = 10


class LegWatcher(Protocol):
    """Sees every leg of the process, SIP or WebSocket: call records and metrics are built on it."""

    def leg_created(self, leg: Any) -> None: ...

    def leg_event(self, leg: Any, event: Any) -> None: ...


class LoopStats:
    """How late the UA loop turns: a turn that takes longer than its 10 ms poll delays every
    SIP callback, timer and frame poller behind it. Read by overload control and metrics."""

    BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)

    def __init__(self) -> None:
        self.turns = 0
        self.lag_sum = 0.0
        self.lag_max = 0.0  # since start
        self.bucket_counts = [0] * (len(self.BUCKETS_MS) + 1)  # last: above the largest bucket
        self._window_max = 0.0
        self._window_start = time.monotonic()
        self.recent_max = 0.0  # worst lag in the last complete second

    def record(self, lag: float, now: float) -> None:
        lag = max(lag, 0.0)
        self.turns += 1
        self.lag_sum += lag
        if lag > self.lag_max:
            self.lag_max = lag
        ms = lag * 1000.0
        for i, bound in enumerate(self.BUCKETS_MS):
            if ms <= bound:
                self.bucket_counts[i] += 1
                break
        else:
            self.bucket_counts[-1] += 1
        if lag > self._window_max:
            self._window_max = lag
        if now - self._window_start >= 1.0:
            self.recent_max, self._window_max, self._window_start = self._window_max, 0.0, now


class StartupError(RuntimeError):
    """The endpoint could not start (port in use, bad address…): the message says what to fix."""


class CallHandler(Protocol):
    """What the UA asks when a call arrives. The flow engine is one; tests bring their own."""

    def on_incoming_leg(self, leg: "Leg") -> None: ...


@dataclass(frozen=True)
class ListenInfo:
    address: str
    udp_port: int | None
    tcp_port: int | None
    tls_port: int | None = None


def _import_pj():
    try:
        import pjsua2  # noqa: F401  (built by native/; see Makefile target `native`)
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise StartupError(f"pjsua2 is not importable ({exc}); run `make setup` to build it") from exc
    return pjsua2


class CycleCollector:
    """Python's cyclic garbage collector, run on the UA thread only.

    Automatic collection runs on whichever thread happens to allocate when a threshold is
    crossed: pjmedia's clock thread in the middle of a bridge tick (a player's end-of-file
    callback), the RTP worker, the AI I/O loop. A cycle holding a pjsua2 object or a FramePort
    then runs its C++ destructor there, and a bridge port freed inside the bridge's own tick, or
    a pjsua call torn down beside the UA thread, corrupts memory that crashes the process
    minutes later. So automatic collection is off while the UA runs, and the same generational
    schedule runs here between loop turns (a full collection at most every `full_every_s`)."""

    def __init__(self, threshold0: int = 700, threshold1: int = 10, threshold2: int = 10,
                 full_every_s: float = 30.0) -> None:
        self.threshold0, self.threshold1, self.threshold2 = threshold0, threshold1, threshold2
        self.full_every_s = full_every_s
        self._last_full = 0.0
        self._was_enabled = False

    def start(self, now: float) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._last_full = now

    def run(self, now: float) -> None:
        counts = gc.get_count()
        if counts[0] < self.threshold0:
            return
        if counts[2] >= self.threshold2 and now - self._last_full >= self.full_every_s:
            generation = 2
            self._last_full = now
        elif counts[1] >= self.threshold1:
            generation = 1
        else:
            generation = 0
        gc.collect(generation)

    def stop(self) -> None:
        if self._was_enabled:
            gc.enable()


class UserAgent:
    """Owns the pjsua2 endpoint, its thread, its timers and strong references to live objects."""

    def __init__(self, config: Config, handler_factory: Callable[["UserAgent"], CallHandler] | None = None,
                 clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or MonotonicClock()
        self.timers = Timers(self.clock, on_error=self._timer_failed)
        self._handler_factory = handler_factory
        self.handler: CallHandler | None = None
        self._commands: queue.SimpleQueue[tuple[Callable[..., Any], tuple, dict]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._stop_requested = threading.Event()
        self._startup_error: BaseException | None = None
        self._pollers: list[Callable[[], None]] = []
        from ..media.health import RecordingHealth
        self.recording_health = RecordingHealth()  # every recorder reports disk failures here
        # Strong references to every live pjsua2 object we created (calls, players, recorders,
        # frame ports): a Call without a Python reference is destroyed and answered 603.
        self.legs: dict[str, "Leg"] = {}
        self._media_objects: set[Any] = set()
        self._release_later: list[Any] = []
        self._retiring: collections.deque[tuple[float, Any]] = collections.deque()
        self.ids = IdFactory()
        self.pj = None
        self.ep = None
        self.account = None
        self.registrar = None
        self.extensions = None
        self.trunks = None  # trunks.Trunks: provider connections and registrations (outbound edge)
        self.dialer = None  # dialer.Dialer: outbound legs (outbound edge)
        self.referrals = None  # transfer.Referrals: REFERs from phones (native hook)
        self.bridge = None  # media.bridge.Bridge: mirrors for call recordings (set on the UA thread)
        self._log_writer = None
        self.listen: ListenInfo | None = None
        # pjsua transport id of the TLS listener: accounts that open TLS connections must name it
        # (this pjproject opens a new TLS connection only through an explicitly chosen listener).
        self.tls_transport_id: int | None = None
        self.loop_stats = LoopStats()
        self.cycles = CycleCollector()
        self._leg_watchers: list[LegWatcher] = []

    # ---- life cycle (any thread) --------------------------------------------------------
    def start(self, timeout: float = 15.0) -> None:
        """Start the UA thread and return once SIP is listening, or raise StartupError."""
        self._thread = threading.Thread(target=self._run, name="ua", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise StartupError(f"the UA did not start within {timeout:.0f} s")
        if self._startup_error is not None:
            raise StartupError(str(self._startup_error)) from self._startup_error

    def request_stop(self) -> None:
        """Ask for a graceful stop; safe from signal handlers and any thread."""
        self._stop_requested.set()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def stop(self, timeout: float = 15.0) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"the UA thread did not stop within {timeout:.0f} s")

    @property
    def running(self) -> bool:
        return self._ready.is_set() and not self._stopped.is_set()

    # ---- handing work to the UA thread (any thread) -------------------------------------
    def call_soon(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._commands.put((fn, args, kwargs))

    def run_sync(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0, **kwargs: Any) -> Any:
        """Run `fn` on the UA thread and return its result (for tests, the CLI and admin APIs)."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        done = threading.Event()
        box: dict[str, Any] = {}

        def job() -> None:
            try:
                box["result"] = fn(*args, **kwargs)
            except BaseException as exc:  # handed back to the caller
                box["error"] = exc
            finally:
                done.set()

        self.call_soon(job)
        if not done.wait(timeout):
            raise TimeoutError(f"the UA thread did not run {getattr(fn, '__name__', fn)!r} within {timeout} s")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    # ---- UA-thread services ---------------------------------------------------------------
    def add_poller(self, poll: Callable[[], None]) -> Callable[[], None]:
        """Run `poll` on every loop turn (frame-port consumers); returns a remover."""
        self._pollers.append(poll)
        return lambda: self._pollers.remove(poll) if poll in self._pollers else None

    def watch_legs(self, watcher: LegWatcher) -> Callable[[], None]:
        """Tell `watcher` about every leg created from now on and every event of every leg."""
        self._leg_watchers.append(watcher)
        return lambda: self._leg_watchers.remove(watcher) if watcher in self._leg_watchers else None

    def leg_created(self, leg: Any) -> None:
        """Called once by whatever creates a leg (inbound, dialed, AI), before its first event."""
        for watcher in list(self._leg_watchers):
            self.guard("leg watcher", watcher.leg_created, leg)

    def leg_event(self, leg: Any, event: Any) -> None:
        for watcher in list(self._leg_watchers):
            self.guard("leg watcher", watcher.leg_event, leg, event)

    def keep(self, obj: Any) -> Any:
        """Hold a strong reference to a pjsua2 media object until `release` is called."""
        self._media_objects.add(obj)
        return obj

    def release(self, obj: Any) -> None:
        """Drop our reference on the next loop turn, never inside the object's own callback."""
        self._release_later.append(obj)

    def retire_later(self, obj: Any, delay_s: float) -> None:
        """Keep a closed pjsua2 object `delay_s` longer, then drop it on this thread: for objects
        a pjmedia thread may still be calling back (a player's end-of-file)."""
        self._retiring.append((time.monotonic() + delay_s, obj))

    def new_leg_id(self) -> str:
        return self.ids.new("leg")

    def guard(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a callback body so that an exception is logged with its traceback, never swallowed."""
        try:
            return fn(*args, **kwargs)
        except Exception:
            log.exception("error in %s", what)
            return None

    # ---- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._create_endpoint()
            # -- call recording: the bridge's mirror table; WAVs a crash left open, repaired before any call --
            from ..media.bridge import Bridge
            from ..media.recorders import repair_recordings
            self.bridge = Bridge.install_on_current_thread()
            repair_recordings(self.config.directories.recordings)
            # -- end call recording --
            if self._handler_factory is not None:
                self.handler = self._handler_factory(self)
        except BaseException as exc:
            self._startup_error = exc
            log.error("startup failed: %s", exc)
            self._destroy_endpoint()
            self._ready.set()
            self._stopped.set()
            return
        self._ready.set()
        self.cycles.start(time.monotonic())
        try:
            self._loop()
        finally:
            self._shutdown()
            self.cycles.stop()
            self._stopped.set()

    def _loop(self) -> None:
        ep = self.ep
        while not self._stop_requested.is_set():
            turn_start = time.monotonic()
            ep.libHandleEvents(LOOP_POLL_MS)
            # pjsua2 runs callbacks queued by other threads (DTMF, media state) only at the start
            # of libHandleEvents: run those that arrived during the poll now, not after the next one.
            ep.libHandleEvents(0)
            self.registrar.poll()
            self._drain_commands()
            self.timers.run_due()
            for poll in list(self._pollers):
                self.guard("frame poller", poll)
            self._flush_releases()
            self.cycles.run(time.monotonic())
            now = time.monotonic()
            self.loop_stats.record(now - turn_start - LOOP_POLL_MS / 1000.0, now)

    def _drain_commands(self, limit: int = 1000) -> None:
        for _ in range(limit):
            try:
                fn, args, kwargs = self._commands.get_nowait()
            except queue.Empty:
                return
            self.guard(f"command {getattr(fn, '__name__', fn)!r}", fn, *args, **kwargs)

    def _flush_releases(self) -> None:
        while self._release_later:
            obj = self._release_later.pop()
            self._media_objects.discard(obj)
            close = getattr(obj, "close", None)
            if callable(close):
                self.guard("release", close)
        now = time.monotonic()
        while self._retiring and self._retiring[0][0] <= now:
            self._retiring.popleft()

    def _timer_failed(self, name: str, exc: BaseException) -> None:
        log.error("timer %s failed: %s", name, exc, exc_info=exc)

    # ---- endpoint creation and teardown ---------------------------------------------------
    def _create_endpoint(self) -> None:
        pj = self.pj = _import_pj()
        cfg = self.config
        ep = self.ep = pj.Endpoint()
        with _stdout_silenced():  # libCreate prints before any log writer exists
            ep.libCreate()

        ep_cfg = pj.EpConfig()
        ua = ep_cfg.uaConfig
        ua.threadCnt = 0
        ua.mainThreadOnly = True
        ua.maxCalls = cfg.sip.max_calls
        ua.userAgent = cfg.sip.user_agent

        self._log_writer = _PjLogWriter(pj)
        lc = ep_cfg.logConfig
        lc.writer = self._log_writer
        lc.level = cfg.logging.pjsip_level
        lc.consoleLevel = cfg.logging.pjsip_level
        lc.msgLogging = 1 if cfg.logging.pjsip_level >= 5 else 0
        # The writer adds its own time and level; keep pjsip's sender and thread names.
        lc.decor = pj.PJ_LOG_HAS_SENDER

        mc = ep_cfg.medConfig
        mc.clockRate = cfg.media.clock_rate
        mc.sndClockRate = cfg.media.clock_rate
        mc.quality = cfg.media.quality
        mc.ecTailLen = 0
        mc.noVad = True
        mc.ptime = 20
        mc.jbMax = cfg.media.jitter_buffer_ms if cfg.media.jitter_buffer_ms else -1
        ep.libInit(ep_cfg)

        addr = cfg.sip.listen_address
        public = cfg.sip.advertised_address or addr
        udp_port = tcp_port = tls_port = None
        try:
            if cfg.sip.udp_port:
                ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, self._transport_config(addr, public, cfg.sip.udp_port))
                udp_port = cfg.sip.udp_port
            if cfg.sip.tcp_port:
                ep.transportCreate(pj.PJSIP_TRANSPORT_TCP, self._transport_config(addr, public, cfg.sip.tcp_port))
                tcp_port = cfg.sip.tcp_port
        except pj.Error as exc:
            raise StartupError(
                f"cannot listen for SIP on {addr} (udp {cfg.sip.udp_port}, tcp {cfg.sip.tcp_port}): "
                f"{exc.reason or exc.info()}; is another process using the port?") from None
        if cfg.sip.tls_port:
            try:
                self.tls_transport_id = ep.transportCreate(pj.PJSIP_TRANSPORT_TLS,
                                                           self._tls_transport_config(addr, public))
            except pj.Error as exc:
                raise StartupError(
                    f"cannot listen for SIP over TLS on {addr}:{cfg.sip.tls_port}: {exc.reason or exc.info()}; "
                    f"is another process using the port, and are sip.tls.certificate and private_key a "
                    f"matching pair?") from None
            tls_port = cfg.sip.tls_port
        ep.libStart()
        ep.audDevManager().setNullDev()
        self._set_codecs()
        self.listen = ListenInfo(addr, udp_port, tcp_port, tls_port)

        from .legs import LocalAccount  # late: legs imports pjsua2 classes
        from .registrar import Registrar
        from .extensions import Extensions
        self.registrar = Registrar(self, cfg)
        self.extensions = Extensions(self)
        self.account = LocalAccount(self)
        # -- outbound edge: provider connections (registrations, route tokens) and the dialer --
        from .dialer import Dialer
        from .trunks import Trunks
        self.trunks = Trunks(self, cfg)
        self.dialer = Dialer(self, cfg, self.trunks)
        # -- end outbound edge --
        # -- transfer: REFERs from phones taken before pjsua, decided by the call handler --
        from .transfer import Referrals
        self.referrals = Referrals(self)
        # -- end transfer --
        log.info("softswitch listening on %s (udp %s, tcp %s, tls %s), RTP %d-%d, pjproject %s",
                 addr, udp_port or "off", tcp_port or "off", tls_port or "off", cfg.sip.rtp_port_start,
                 cfg.sip.rtp_port_start + cfg.sip.rtp_port_count - 1, ep.libVersion().full)

    def _transport_config(self, bound: str, public: str, port: int):
        tc = self.pj.TransportConfig()
        tc.port = port
        tc.boundAddress = bound
        tc.publicAddress = public
        return tc

    def _tls_transport_config(self, bound: str, public: str):
        """The TLS listener; pjsip uses the same settings for the connections it opens to
        connections with `transport: tls`. The files were checked by the config loader."""
        pj, tls = self.pj, self.config.sip.tls
        tc = self._transport_config(bound, public, self.config.sip.tls_port)
        t = tc.tlsConfig
        t.certFile = str(tls.certificate)
        t.privKeyFile = str(tls.private_key)
        # pjsip logs an error on every accepted connection when it has no CA list to name in a
        # certificate request. Without ca_list: the system's CAs when servers are verified, else
        # our own certificate (read on every handshake: one certificate is cheaper than 140).
        system = _system_ca_file() if tls.verify_server else None
        t.CaListFile = str(tls.ca_list or system or tls.certificate)
        t.verifyClient = tls.verify_client
        t.requireClientCert = tls.verify_client
        t.verifyServer = tls.verify_server
        # A non-zero proto set overrides `method`: only the versions we accept are offered.
        t.proto = pj.PJ_SSL_SOCK_PROTO_TLS1_3 | (pj.PJ_SSL_SOCK_PROTO_TLS1_2 if tls.min_version == "tlsv1.2" else 0)
        t.msecTimeout = tls.handshake_timeout_ms
        return tc

    def _set_codecs(self) -> None:
        """Only the configured codecs are offered, in the configured order."""
        wanted = [c.lower() for c in self.config.media.codecs]
        for info in self.ep.codecEnum2():
            codec_id = info.codecId  # e.g. "PCMU/8000/1"
            name = codec_id.split("/")[0].lower()
            prio = 0
            if name in wanted:
                prio = 250 - wanted.index(name)
            self.ep.codecSetPriority(codec_id, prio)

    def _shutdown(self) -> None:
        """Hang up every call, finalize recordings, then `libDestroy`."""
        log.info("stopping: %d live legs", len(self.legs))
        handler_stop = getattr(self.handler, "shutdown", None)
        if callable(handler_stop):
            self.guard("handler shutdown", handler_stop)
        for leg in list(self.legs.values()):
            self.guard("hangup at shutdown", leg.hangup, 503 if not leg.answered else 200, "daemon_shutdown")
        deadline = time.monotonic() + 3.0
        while self.legs and time.monotonic() < deadline:
            self.ep.libHandleEvents(LOOP_POLL_MS)
            self._drain_commands()
            self._flush_releases()
        if self.legs:
            log.warning("%d legs still open at shutdown; destroying them", len(self.legs))
        self._destroy_endpoint()

    def _destroy_endpoint(self) -> None:
        for leg in list(self.legs.values()):
            self.guard("leg destroy", leg.destroy)
        self.legs.clear()
        self._release_later.extend(self._media_objects)
        self._flush_releases()
        self._media_objects.clear()
        self._retiring.clear()
        self._pollers.clear()
        self.handler = None
        if self.referrals is not None:
            self.guard("transfer hook removal", self.referrals.close)
            self.referrals = None
        # -- outbound edge: caller-ID accounts, then the connections' accounts (un-REGISTER) --
        if self.dialer is not None:
            self.guard("dialer shutdown", self.dialer.shutdown)
            self.dialer = None
        if self.trunks is not None:
            self.guard("trunks shutdown", self.trunks.shutdown)
            self.trunks = None
        # -- end outbound edge --
        if self.account is not None:
            self.guard("account shutdown", self.account.shutdown)
            self.account = None
        if self.extensions is not None:
            self.guard("extensions close", self.extensions.close)
            self.extensions = None
        if self.registrar is not None:
            self.guard("registrar close", self.registrar.close)
            self.registrar = None
        gc.collect()
        self._disown_survivors()
        if self.ep is not None:
            try:
                self.ep.libDestroy()
            except Exception:
                log.exception("libDestroy failed")
            self.ep = None
        log.info("stopped")


    def _disown_survivors(self) -> None:
        """A pjsua2 Call whose Python object outlives libDestroy aborts the process in its C++
        destructor. Anything still alive here (a reference we failed to drop) is disowned, so
        Python never runs that destructor, and the leak is logged to be fixed."""
        if self.pj is None:
            return
        for obj in gc.get_objects():
            try:
                if isinstance(obj, self.pj.Call) and getattr(obj, "thisown", False):
                    log.warning("a pjsua2 Call outlived its leg at shutdown; disowning it")
                    obj.thisown = False
            except ReferenceError:
                continue


class _PjLogWriter:
    """Routes pjsua2 log lines into Python logging (no stdout noise, no 15-line hang-up dumps)."""

    def __new__(cls, pj):
        class Writer(pj.LogWriter):
            def write(self, entry):  # runs on any pjlib thread, the clock thread included
                try:
                    msg = entry.msg.rstrip()
                    if msg:
                        pjlog.log(_PJ_LEVELS.get(entry.level, logging.DEBUG), "%s", msg)
                except Exception:  # never let logging raise into C
                    pass

        return Writer()


def _system_ca_file() -> str | None:
    import ssl  # late: only TLS listeners need it

    cafile = ssl.get_default_verify_paths().cafile
    return cafile if cafile and os.path.isfile(cafile) else None


@contextlib.contextmanager
def _stdout_silenced():
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


from .legs import Leg  # noqa: E402  (type used in annotations above)
