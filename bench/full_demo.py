#!/usr/bin/env python3
"""Full-load benchmark (issue 7): the assembled demo under a realistic mixed load, and a bare
pjsua2 script doing the same media work under the same load in the same run.

softswitch runs `flows/part-3-step-4-routing-queue-ai-recording-tools-callback.yaml` with one
change written to a copy: the two queue triggers list this run's agents (`--agents` N,
extensions 1001..1000+N, split between queue_support and queue_sales by their share of the
load). Everything else is the shipped demo: every trunk call recorded in split stereo by the
Recording branch, the menu, queues with hold music and position prompts, the parallel ring of
every free agent, callback on 9 (retry pause 30 s, customer dial timeout 30 s), the AI assistant.
Call records and queue events go to JSON-lines files in the run directory (read when the server
writes them; the server log is the fallback), metrics are served on a free port.

The actors, all SIPp on 127.0.0.1 (`bench/sipp/`):
- callers on the trunk (`uac_full_caller.xml`), one SIPp per kind at its share of `--cps` for
  `--duration` s, each with a 440 Hz pcap carrying its RFC 2833 choice: support presses 1,
  sales 2, assistant 3 (the AI provider is tests/support/fake_ai.py in its own process, echoing
  the caller), callback presses 1 then 9 at 9 s and hangs up at 11.5 s. The others hang up after
  `--hold` s unless the server hangs up first (the agent left). Every caller has its own number
  (kind prefix + call number); callback callers whose customers should not answer (`--no-answer`
  share) get numbers starting with 7;
- the agents: one SIPp UAS (`uas_agent_delayed.xml`) where every agent registered (digest) its
  Contact, answering after a uniform `--answer-delay` (default 1-4 s) with 1 kHz and hanging up
  after a uniform `--talk` time unless the caller hangs up first; it takes the CANCELs of the
  parallel ring's losers;
- the customers called back: a second instance of the same UAS with 660 Hz, where trunk_main's
  connection points (`dial_customer` dials the caller's number on trunk_main); numbers starting
  with 7 ring until cancelled, so the agent hears "customer unavailable".

The bare comparator (`bench/bare_pjsua2.py --workload full`) gets the same callers, agents and
customers; it has no queue or registrar: a caller who pressed 1 or 2 hears hold music for
`--bare-queue-wait` s, then the agent is dialled (see its docstring).

Reported per target (printed side by side, and written to `bench/results/full_demo.json`): calls
offered/failed/handled by kind (handled: the caller heard its agent's 1 kHz, or for the
assistant its own echoed 440 Hz, for at least 3 s, decoded from a loopback capture), queue
waits, callbacks requested/completed/not answered, RTP gap p99/max over every stream the server
sent (callers, agents, customers), server CPU and RSS, recordings (every WAV opened: channels,
8 kHz, length plausible and, for softswitch, equal to the logged length), errors logged.

A run is clean when no call failed, RTP gap p99 < 30 ms, every recording is valid and one per
answered call, and nothing was logged at ERROR. `--find-capacity` runs short steps at each of
`--rates` per target and reports the highest clean rate before the first unclean one.

    .venv/bin/python bench/full_demo.py --cps 0.5 --duration 40 --hold 30 --talk 10-20   # smoke, ~5 min
    .venv/bin/python bench/full_demo.py --cps 2 --duration 300     # both targets, ~8 min each
    .venv/bin/python bench/full_demo.py --find-capacity --rates 2,4,6,8 --duration 120
                                                   # ~4.5 min per step and target, up to ~36 min
"""

from __future__ import annotations

import argparse
import array
import json
import mmap
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ai_capacity import FAKE as FAKE_PROVIDER  # noqa: E402
from capacity import source_revision, tone_seconds  # noqa: E402
from queue_capacity import register_agents  # noqa: E402
from tests.support.audio import alaw_decode, tone, ulaw_decode  # noqa: E402
from tests.support.capture import LoopbackCapture  # noqa: E402
from tests.support.pcap import write_rtp_pcap  # noqa: E402
from tests.support.ports import free_port, free_port_block  # noqa: E402
from tests.support.server import ServerProcess, write_test_config  # noqa: E402
from tests.support.sipp import Sipp  # noqa: E402

DEMO = REPO / "flows" / "part-3-step-4-routing-queue-ai-recording-tools-callback.yaml"
SIPP_DIR = REPO / "bench" / "sipp"
KEY_ENV = "SOFTSWITCH_BENCH_AI_KEY"
CALLER_HZ, AGENT_HZ, CUSTOMER_HZ = 440.0, 1000.0, 660.0
HEARD_S = 3.0  # a caller "heard" its agent (or its AI echo) with at least this much of the tone
CLEAN_GAP_P99_MS = 30.0
CALLBACK_PRESS_S, CALLBACK_HOLD_S = 9.0, 11.5  # after the hold prompts; hang up during the confirmation
DEMO_RETRY_PAUSE_S, DEMO_CUSTOMER_TIMEOUT_S = 30.0, 30.0  # the demo's queue retry pause, customer dial wait
SETTLE_S = DEMO_RETRY_PAUSE_S + 10  # agents and customers idle this long after the callers: drained
TONE_SAMPLE = 5  # the capture keeps every 5th audio frame per stream for the tone checks
RECORDING_SLACK_S = 10.0


# ---- the load --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CallerKind:
    """One SIPp caller instance: a kind of caller (several instances may share a kind)."""

    name: str  # support, sales, assistant, callback, callback_no_answer
    kind: str  # the kind reported: support, sales, assistant, callback
    prefix: str  # number prefix (two digits; 7x: the customer never answers)
    digits: tuple[tuple[str, float], ...]
    hold_s: float
    heard: tuple[float, float] | None  # (Hz, s) that makes the call "handled"


@dataclass(frozen=True)
class Load:
    cps: float
    duration_s: float
    agents: int
    mix: dict[str, float]  # kind -> share (sums to 1)
    hold_s: float
    talk_s: tuple[float, float]
    answer_s: tuple[float, float]
    no_answer: float  # share of callback customers who do not answer
    bare_queue_wait_s: float
    capture: bool = True

    def instances(self) -> list[tuple[CallerKind, int]]:
        """Each caller instance with its number of calls (the total split by the mix)."""
        total = self.cps * self.duration_s
        one = (("1", 1.0),)
        kinds = {"support": ("41", one, (AGENT_HZ, HEARD_S)), "sales": ("42", (("2", 1.0),), (AGENT_HZ, HEARD_S)),
                 "assistant": ("43", (("3", 1.0),), (CALLER_HZ, HEARD_S))}
        out = []
        for name, (prefix, digits, heard) in kinds.items():
            out.append((CallerKind(name, name, prefix, digits, self.hold_s, heard), round(total * self.mix.get(name, 0))))
        callbacks = round(total * self.mix.get("callback", 0))
        unanswered = round(callbacks * self.no_answer)
        digits = (("1", 1.0), ("9", CALLBACK_PRESS_S))
        out.append((CallerKind("callback", "callback", "61", digits, CALLBACK_HOLD_S, (AGENT_HZ, HEARD_S)),
                    callbacks - unanswered))
        out.append((CallerKind("callback_no_answer", "callback", "71", digits, CALLBACK_HOLD_S, (AGENT_HZ, HEARD_S)),
                    unanswered))
        return [(k, n) for k, n in out if n > 0]

    def agent_split(self) -> tuple[list[str], list[str]]:
        """(queue_support agents, queue_sales agents) by each queue's share of the callers; with
        one agent (or no sales callers) both queues list the same agents."""
        agents = [str(1001 + i) for i in range(self.agents)]
        support = self.mix.get("support", 0) + self.mix.get("callback", 0)
        sales = self.mix.get("sales", 0)
        if self.agents < 2 or not sales or not support:
            return agents, agents
        n_sales = min(self.agents - 1, max(1, round(self.agents * sales / (support + sales))))
        return agents[: self.agents - n_sales], agents[self.agents - n_sales:]


def default_agents(cps: float, mix: dict[str, float], talk: tuple[float, float], answer: tuple[float, float]) -> int:
    """90 % of the agent load the queue callers offer (Erlangs: arrivals x mean ring and talk
    time), so queues form, callbacks are asked for, and agents are seldom idle."""
    erlangs = cps * (1 - mix.get("assistant", 0)) * (sum(talk) / 2 + sum(answer) / 2)
    return max(2, round(0.9 * erlangs))


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in ("support", "sales", "assistant", "callback"):
            raise argparse.ArgumentTypeError(f"unknown kind {name!r} (support, sales, assistant, callback)")
        mix[name.strip()] = float(value)
    total = sum(mix.values())
    if total <= 0:
        raise argparse.ArgumentTypeError("the mix is empty")
    return {k: v / total for k, v in mix.items()}


def parse_range(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition("-")
    lo_f, hi_f = float(lo), float(hi or lo)
    if hi_f < lo_f:
        raise argparse.ArgumentTypeError(f"{text}: the range runs backwards")
    return lo_f, hi_f


# ---- process sampling ------------------------------------------------------------------------------
def proc_figures(pid: int) -> dict:
    """CPU seconds, RSS, open fds and sockets (UDP/TCP, from /proc/<pid>/net) of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss_mb = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_mb = int(line.split()[1]) / 1024
    inodes = set()
    fds = 0
    for fd in os.scandir(f"/proc/{pid}/fd"):
        fds += 1
        try:
            target = os.readlink(fd.path)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    counts = {}
    for proto in ("udp", "tcp"):
        n = 0
        for table in (proto, proto + "6"):
            try:
                lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            n += sum(1 for line in lines if len(line.split()) > 9 and line.split()[9] in inodes)
        counts[proto] = n
    return {"cpu_s": cpu_s, "rss_mb": round(rss_mb, 1), "fds": fds, "udp": counts["udp"], "tcp": counts["tcp"]}


class ProcSampler:
    """Samples a process every `every` s on a thread (plus `extra()` figures, e.g. metrics)."""

    def __init__(self, pid: int, every: float = 1.0, extra: Callable[[], dict] | None = None) -> None:
        self.pid, self.every, self.extra = pid, every, extra
        self.samples: list[dict] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)

    def sample(self) -> dict | None:
        try:
            figures = {"t": round(time.monotonic() - self.t0, 2), **proc_figures(self.pid)}
        except (OSError, IndexError, ValueError):
            return None  # the process is gone
        if self.extra is not None:
            figures.update(self.extra())
        self.samples.append(figures)
        return figures

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def start(self) -> "ProcSampler":
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.every + 5)

    def cpu_percent(self, t_from: float, t_to: float) -> float | None:
        """Average CPU (% of one core) between two times (s since start)."""
        inside = [s for s in self.samples if t_from <= s["t"] <= t_to]
        if len(inside) < 2 or inside[-1]["t"] <= inside[0]["t"]:
            return None
        return round(100 * (inside[-1]["cpu_s"] - inside[0]["cpu_s"]) / (inside[-1]["t"] - inside[0]["t"]), 1)

    def cpu_peak(self, window_s: float = 10.0) -> float | None:
        best = None
        for i, s in enumerate(self.samples):
            later = [x for x in self.samples[i:] if x["t"] - s["t"] >= window_s]
            if later:
                pct = 100 * (later[0]["cpu_s"] - s["cpu_s"]) / (later[0]["t"] - s["t"])
                best = pct if best is None else max(best, pct)
        return None if best is None else round(best, 1)


def legs_active(metrics_port: int | None) -> float | None:
    """`softswitch_legs_active` (summed over its labels) from the metrics endpoint; None if it does not answer."""
    if metrics_port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    values = [float(line.rsplit(None, 1)[1]) for line in text.splitlines()
              if re.match(r"softswitch_legs_active(\{|\s)", line)]
    return sum(values) if values else None


# ---- the targets -----------------------------------------------------------------------------------
FAKE_AI = FAKE_PROVIDER  # the fake OpenAI Realtime provider process of ai_capacity.py


class FakeAi:
    """The fake OpenAI Realtime provider (echoing the caller) in its own process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", FAKE_AI.format(repo=str(REPO))], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the fake AI provider did not start: {line!r}")
        self.url = f"ws://127.0.0.1:{int(line)}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class BareProcess:
    """bench/bare_pjsua2.py --workload full, its output kept."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.sip_port = free_port("udp")
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "bare_pjsua2.py"), "--port", str(self.sip_port),
             "--rtp-port", str(free_port_block(2000)), "--rtp-count", "2000", "--workload", "full", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO / "bench")
        self.lines: list[str] = []
        ready = threading.Event()

        def pump() -> None:
            for line in self.proc.stdout:
                self.lines.append(line)
                if "bare pjsua2 ready" in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(30):
            self.stop()
            raise RuntimeError("bare pjsua2 did not start:\n" + "".join(self.lines))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        time.sleep(0.2)  # the pump thread reads the last lines
        self.log_path.write_text("".join(self.lines))

    def text(self) -> str:
        return "".join(self.lines)


def demo_flow(support: list[str], sales: list[str], path: Path) -> Path:
    """The shipped demo with the queue triggers' queueExtensions replaced: nothing else."""
    doc = yaml.safe_load(DEMO.read_text())
    for trigger in doc["triggers"]:
        if trigger["name"] == "queue_support":
            trigger["params"]["queueExtensions"] = ",".join(support)
        elif trigger["name"] == "queue_sales":
            trigger["params"]["queueExtensions"] = ",".join(sales)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def stat_row(trace_dir: Path) -> dict[str, str]:
    """The last row of a SIPp stat CSV (a row a second: only its header and its tail are read)."""
    try:
        with open(trace_dir / "stat.csv", "rb") as f:
            header = f.readline().decode(errors="replace").strip()
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            tail = [x for x in f.read().decode(errors="replace").splitlines() if x.strip()]
    except FileNotFoundError:
        return {}
    if not header or not tail or tail[-1].strip() == header:
        return {}
    return dict(zip(header.split(";"), tail[-1].split(";")))


def current_calls(trace_dir: Path) -> int:
    value = stat_row(trace_dir).get("CurrentCall", "0").strip()
    return int(value) if value.isdigit() else 0


def make_pcaps(run: Path, load: Load) -> dict[str, Path]:
    """The callers' 440 Hz with their digits; agents' 1 kHz and customers' 660 Hz for the longest talk."""
    pcaps = {}
    for kind, _ in load.instances():
        pcaps[kind.name] = run / f"caller-{kind.name}.pcap"
        write_rtp_pcap(pcaps[kind.name], tone(CALLER_HZ, kind.hold_s + 2),
                       dtmf=[(d, at, 200) for d, at in kind.digits])
    pcaps["agent"] = run / "agent.pcap"
    write_rtp_pcap(pcaps["agent"], tone(AGENT_HZ, load.talk_s[1] + 5))
    pcaps["customer"] = run / "customer.pcap"
    write_rtp_pcap(pcaps["customer"], tone(CUSTOMER_HZ, load.talk_s[1] + 5))
    return pcaps


class TargetRun:
    """One target (softswitch or bare) under the load: start, load, drain, stop, analyse."""

    def __init__(self, target: str, load: Load, run_dir: Path, sample_every: float = 1.0,
                 extra_sample: bool = False, progress: Callable[[dict], None] | None = None,
                 keep: bool = True) -> None:
        self.target, self.load, self.dir, self.keep = target, load, run_dir, keep
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sample_every, self.extra_sample, self.progress = sample_every, extra_sample, progress
        self.pcaps = make_pcaps(self.dir, load)
        self.metrics_port: int | None = None
        self.times: dict[str, float] = {}
        self.results: dict = {}

    # ---- start ---------------------------------------------------------------------------------
    def _start_server(self, agent_port: int, customer_port: int, ai_url: str):
        support, sales = self.load.agent_split()
        self.agents = sorted(set(support + sales))
        if self.target == "bare":
            args = ["--prompt-dir", str(REPO / "prompts"), "--agent-uri", f"sip:agent@127.0.0.1:{agent_port}",
                    "--customer-host", f"127.0.0.1:{customer_port}", "--ai-url", ai_url,
                    "--record-dir", str(self.dir / "recordings"), "--queue-wait", f"{self.load.bare_queue_wait_s:g}",
                    "--callback-delay", f"{DEMO_RETRY_PAUSE_S:g}", "--customer-timeout", f"{DEMO_CUSTOMER_TIMEOUT_S:g}"]
            return BareProcess(args, self.dir / "server.log")
        self.metrics_port = free_port("tcp")
        flow = demo_flow(support, sales, self.dir / DEMO.name)
        cfg = write_test_config(
            self.dir,
            flows=[str(flow)],
            sip={"rtp_port_start": free_port_block(2000), "rtp_port_count": 2000},
            directories={"prompts": str(REPO / "prompts"), "recordings": str(self.dir / "recordings"),
                         "state": str(self.dir / "state")},
            logging={"level": "info", "file": str(self.dir / "server.log")},
            extension_users={"internal": [{"username": x, "password": f"pass{x}", "extension": x} for x in self.agents]},
            # Callbacks leave through trunk_main towards the "provider": the customers' UAS.
            connections={"provider": {"sip_server": "127.0.0.1", "port": customer_port, "register": False}},
            trunks={"trunk_main": {"address": "127.0.0.1", "port": 0, "connection": "provider"}},
            ai={"providers": {"openai_realtime": {"url": ai_url, "api_key_env": KEY_ENV}}},
            records={"call_records": str(self.dir / "call-records.jsonl"),
                     "queue_events": str(self.dir / "queue-events.jsonl")},
            metrics={"http_listen": f"127.0.0.1:{self.metrics_port}"},
        )
        return ServerProcess(cfg).start(timeout=60)

    def _uas(self, name: str, port: int, pcap: Path) -> Sipp:
        lo, hi = self.load.answer_s
        tlo, thi = self.load.talk_s
        return Sipp(SIPP_DIR / "uas_agent_delayed.xml", local_port=port, calls=10_000_000, keys={"pcap": pcap},
                    variables={"answer_min_ms": int(lo * 1000), "answer_max_ms": int(hi * 1000),
                               "talk_min_ms": int(tlo * 1000), "talk_max_ms": int(thi * 1000)},
                    timeout_s=24 * 3600, trace_msg=False, trace_dir=self.dir / name)

    def _callers(self, sip_port: int) -> list[tuple[CallerKind, int, Sipp]]:
        out = []
        for kind, calls in self.load.instances():
            bound = self.load.duration_s + kind.hold_s + 180
            out.append((kind, calls, Sipp(
                SIPP_DIR / "uac_full_caller.xml", f"127.0.0.1:{sip_port}", service="2000", calls=calls,
                rate=calls, rate_period_ms=int(self.load.duration_s * 1000), limit=calls,
                variables={"prefix": kind.prefix, "hold_ms": int(kind.hold_s * 1000)},
                keys={"pcap": self.pcaps[kind.name]}, timeout_s=bound, trace_msg=False,
                trace_dir=self.dir / f"callers-{kind.name}")))
        return out

    def run(self) -> dict:
        fake = FakeAi()
        agent_port, customer_port = free_port("both"), free_port("both")
        server = sampler = capture = None
        agents = self._uas("agents", agent_port, self.pcaps["agent"])
        customers = self._uas("customers", customer_port, self.pcaps["customer"])
        callers: list = []
        try:
            server = self._start_server(agent_port, customer_port, fake.url)
            sip_port = server.sip_port
            if self.target == "softswitch":
                t0 = time.monotonic()
                register_agents(sip_port, self.agents, agent_port)
                print(f"  {len(self.agents)} agents registered in {time.monotonic() - t0:.1f} s", flush=True)
            extra = (lambda: {"legs_active": legs_active(self.metrics_port)}) if self.extra_sample else None
            sampler = ProcSampler(server.proc.pid, self.sample_every, extra).start()
            agents.start()
            customers.start()
            callers = self._callers(sip_port)
            ports = [s.media_port for _, _, s in callers] + [agents.media_port, customers.media_port]
            if self.load.capture:
                capture = LoopbackCapture("udp and (" + " or ".join(f"dst port {p}" for p in ports) + ")",
                                          self.dir / "rtp.pcap", buffer_kib=65536).start()
            self.times["load_start"] = time.monotonic() - sampler.t0
            for _, _, sipp in callers:
                sipp.start()
            self._wait_callers(callers, sampler)
            self.times["load_end"] = time.monotonic() - sampler.t0
            self.results["legs_active_at_load_end"] = legs_active(self.metrics_port)
            self._drain(agents, customers, sampler)
            self.times["drained"] = time.monotonic() - sampler.t0
            self.results["legs_active_after_drain"] = legs_active(self.metrics_port)
            if capture is not None:
                capture.stop()
            self.results["rss_end_mb"] = (sampler.sample() or {}).get("rss_mb")
            self.results["proc_after_drain"] = sampler.samples[-1] if sampler.samples else None
        finally:
            # stop() also collects the outcome of an instance that has exited by itself.
            for sipp in [s for _, _, s in callers] + [agents, customers]:
                if sipp.pid is not None and (sipp.running or sipp.result is None):
                    sipp.stop()
            if capture is not None:
                capture.stop()  # idempotent
            if sampler is not None:
                sampler.stop()
            if server is not None:
                server.stop()
            fake.stop()
        self.sampler = sampler
        return self.analyse(callers, agents, customers, server)

    def _wait_callers(self, callers: list, sampler: ProcSampler) -> None:
        deadline = time.monotonic() + self.load.duration_s + self.load.hold_s + 240
        next_note = time.monotonic() + 30
        while any(s.running for _, _, s in callers):
            if time.monotonic() > deadline:
                print("  callers did not finish in time: stopping them", flush=True)
                break
            time.sleep(1)
            if self.progress is not None and sampler.samples:
                self.progress(sampler.samples[-1])
            if self.progress is None and time.monotonic() > next_note:
                next_note += 30
                live = sum(current_calls(s.trace_dir) for _, _, s in callers)
                s = sampler.samples[-1] if sampler.samples else {}
                print(f"  t={s.get('t', 0):.0f}s callers up {live}, RSS {s.get('rss_mb')} MB", flush=True)
        for _, _, sipp in callers:
            if sipp.running:
                sipp.stop()

    def _drain(self, agents: Sipp, customers: Sipp, sampler: ProcSampler) -> None:
        """Wait until agents and customers have been idle for SETTLE_S (callbacks are dispatched
        after the demo's retry pause), bounded."""
        bound = time.monotonic() + SETTLE_S + DEMO_RETRY_PAUSE_S + DEMO_CUSTOMER_TIMEOUT_S + self.load.talk_s[1] + 120
        idle_since = time.monotonic()
        while time.monotonic() < bound:
            time.sleep(1)
            if self.progress is not None and sampler.samples:
                self.progress(sampler.samples[-1])
            if current_calls(agents.trace_dir) or current_calls(customers.trace_dir):
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= SETTLE_S:
                return
        print("  agents or customers still busy at the drain bound", flush=True)

    # ---- analysis ----------------------------------------------------------------------------------
    def analyse(self, callers: list, agents: Sipp, customers: Sipp, server) -> dict:
        load, r = self.load, self.results
        log = (self.dir / "server.log").read_text(errors="replace") if (self.dir / "server.log").exists() else ""
        if self.target == "softswitch":
            log += server.text() if server is not None else ""  # start-up and crash output (stdout)
        kinds: dict[str, dict] = {}
        handled_ports: dict[int, tuple[str, tuple[float, float] | None]] = {}
        for kind, calls, sipp in callers:
            res = sipp.result
            k = kinds.setdefault(kind.kind, {"offered": 0, "successful": 0, "failed": 0, "answered": 0,
                                             "hung_up_by_server": 0, "handled": None})
            created = stat_row(sipp.trace_dir).get("TotalCallCreated", "").strip()
            k["offered"] += int(created) if created.isdigit() else calls
            k["successful"] += (res.successful or 0) if res else 0
            # A caller stopped at the bound, or never started, counts its unfinished calls as failed.
            k["failed"] += calls - ((res.successful or 0) if res else 0) if (res is None or res.stopped) else (res.failed or 0)
            k["answered"] += len(res.log_values("ended_by"))
            k["hung_up_by_server"] += res.log_values("ended_by").count("them")
            handled_ports[sipp.media_port] = (kind.kind, kind.heard)
        agent_res, customer_res = agents.result, customers.result
        outcomes = _uas_outcomes(agent_res.logs if agent_res else "")
        customer_outcomes = _uas_outcomes(customer_res.logs if customer_res else "")
        r["agents"] = {"invites": int(stat_row(agents.trace_dir).get("TotalCallCreated", "0") or 0),
                       "failed": agent_res.failed if agent_res else None, **outcomes}
        r["customers"] = {"invites": int(stat_row(customers.trace_dir).get("TotalCallCreated", "0") or 0),
                          "failed": customer_res.failed if customer_res else None, **customer_outcomes}
        if load.capture and (self.dir / "rtp.pcap").exists():
            cap = analyse_capture(self.dir / "rtp.pcap", handled_ports,
                                  {agents.media_port: "agents", customers.media_port: "customers"})
            for name, k in kinds.items():
                k["handled"] = cap["handled"].get(name, 0)
            r["rtp"] = cap["rtp"]
            r["customers"]["heard_agent"] = cap["handled"].get("customers", 0)
            if "callback" in kinds:  # served live, or called back and bridged with an agent
                kinds["callback"]["handled"] += r["customers"]["heard_agent"]
        else:
            r["rtp"] = None
        r["kinds"] = kinds
        r["calls"] = {f: sum(k[f] for k in kinds.values()) for f in ("offered", "successful", "failed", "answered")}
        s = self.sampler
        r["cpu_percent"] = s.cpu_percent(self.times.get("load_start", 0), self.times.get("load_end", 0))
        r["cpu_peak_10s_percent"] = s.cpu_peak(10.0)
        r["rss_start_mb"] = s.samples[0]["rss_mb"] if s.samples else None
        r["rss_peak_mb"] = max((x["rss_mb"] for x in s.samples), default=None)
        errors = [line for line in log.splitlines() if re.search(r" ERROR |Traceback|^\S+ error: ", line)]
        r["errors_logged"] = len(errors)
        r["error_lines"] = errors[:10]  # the first ones, for the write-up
        r["warnings_logged"] = len(re.findall(r" WARNING ", log))
        if self.target == "softswitch":
            r.update(softswitch_figures(log, self.dir))
        else:
            r.update(bare_figures(log))
        r["callbacks"]["completed"] = customer_outcomes["answered"]
        r["callbacks"]["not_answered"] = customer_outcomes["not_answered"]
        expected = r["calls"]["answered"] + customer_outcomes["answered"]
        r["recordings"] = check_recordings(self.dir / "recordings", 2 if self.target == "softswitch" else 1,
                                           max(load.hold_s, CALLBACK_HOLD_S, load.talk_s[1]) + RECORDING_SLACK_S,
                                           r.pop("logged_recordings", None), expected)
        r["times"] = {k: round(v, 1) for k, v in self.times.items()}
        r["clean"], r["not_clean_because"] = verdict(r)
        if not self.keep:  # a ramp's captures and recordings run to gigabytes
            (self.dir / "rtp.pcap").unlink(missing_ok=True)
            shutil.rmtree(self.dir / "recordings", ignore_errors=True)
        return r


def _uas_outcomes(logs: str) -> dict:
    answered = re.findall(r"outcome=answered ended_by=(\w+) callee=sip:(\d*)", logs)
    cancelled = re.findall(r"outcome=cancelled callee=sip:(\d*)", logs)
    return {"answered": len(answered), "ended_by_them": sum(1 for by, _ in answered if by == "them"),
            "cancelled": len(cancelled), "not_answered": sum(1 for c in cancelled if c.startswith("7"))}


def verdict(r: dict) -> tuple[bool, list[str]]:
    why = []
    if r["calls"]["failed"]:
        why.append(f"{r['calls']['failed']} calls failed")
    for peer in ("agents", "customers"):
        if r[peer]["failed"]:
            why.append(f"{r[peer]['failed']} {peer}' calls failed")
    if r["rtp"] is not None and not r["rtp"]["gap_p99_ms"] < CLEAN_GAP_P99_MS:
        why.append(f"RTP gap p99 {r['rtp']['gap_p99_ms']} ms")
    rec = r["recordings"]
    if rec["bad"] or rec["count"] != rec["expected"]:
        why.append(f"recordings: {rec['count']} for {rec['expected']} answered calls, {len(rec['bad'])} bad")
    if r["errors_logged"]:
        why.append(f"{r['errors_logged']} errors logged")
    return not why, why


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    a = np.array(values)
    return {"count": len(values), "p50": round(float(np.percentile(a, 50)), 2),
            "p95": round(float(np.percentile(a, 95)), 2), "max": round(float(a.max()), 2)}


def softswitch_figures(log: str, run_dir: Path) -> dict:
    """Queue waits and callbacks from queue events / call records when the server wrote them,
    else from the log lines the queue engine writes at info."""
    out: dict = {}
    dispatch = {}
    for ref, payload in re.findall(r"queue (queue_\w+): Dispatch (\{.*\})$", log, flags=re.M):
        found = re.search(r"'dialId': '([^']+)'", payload)
        mode = re.search(r"'mode': '(\w+)'", payload)
        if found:
            dispatch[found.group(1)] = mode.group(1) if mode else "live"
    live_waits, callback_waits = [], []
    for wait, dial in re.findall(r": taken by \S+ after ([\d.]+) s \(dial (\S+)\)", log):
        (callback_waits if dispatch.get(dial) == "callback" else live_waits).append(float(wait))
    out["queue_waits_s"] = {"live": percentiles(live_waits), "callback": percentiles(callback_waits),
                            "source": "server log"}
    records = _jsonl(run_dir / "call-records.jsonl")
    events = _jsonl(run_dir / "queue-events.jsonl")
    out["call_records"] = len(records) if records is not None else None
    out["queue_events"] = len(events) if events is not None else None
    waits = [(rec.get("queue") or {}).get("wait_seconds") for rec in records or []
             if (rec.get("queue") or {}).get("outcome") == "taken" and rec.get("kind") != "callback"]
    waits = [w for w in waits if isinstance(w, (int, float))]
    if waits:
        out["queue_waits_s"]["live"] = percentiles(waits)
        out["queue_waits_s"]["source"] = "call records"
    out["queue_abandoned"] = len(re.findall(r": caller hung up; removed from queue ", log))
    out["queue_offline"] = len(re.findall(r"entry \S+: offline \(", log))
    out["callbacks"] = {"requested": len(re.findall(r": callback enabled for queue entry ", log)),
                        "waiting_after_hang_up": len(re.findall(r"waits for a callback at position", log)),
                        "dispatched": sum(1 for m in dispatch.values() if m == "callback")}
    if events is not None:
        counts: dict[str, int] = {}
        for event in events:
            counts[str(event.get("event"))] = counts.get(str(event.get("event")), 0) + 1
        out["queue_event_counts"] = counts
        # The server's own view of the callbacks, beside the customers' (filled in by the caller).
        out["callbacks"]["server_answered"] = counts.get("callback_answered", 0)
        out["callbacks"]["server_not_answered"] = counts.get("callback_not_answered", 0)
    out["bridged"] = len(re.findall(r" bridged leg_\w+ <-> ", log))
    out["ai_failures"] = len(re.findall(r"AI provider \S+: ai_(?:provider_timeout|provider_error|connect_failed)", log))
    finalized = re.findall(r"call recording (\S+) finalized \((\w+)\): ([\d.]+) s", log)
    out["logged_recordings"] = {Path(p).name: float(s) for p, _, s in finalized}
    stopping = re.findall(r"stopping: (\d+) live legs", log)
    out["legs_live_at_stop"] = int(stopping[-1]) if stopping else None
    return out


def bare_figures(log: str) -> dict:
    found = re.findall(r"^bare pjsua2 full (\{.*\})$", log, flags=re.M)
    summary = json.loads(found[-1]) if found else {}
    return {"bare_summary": summary,
            "queue_waits_s": {"live": {"count": summary.get("agent_waits", 0), "p50": summary.get("agent_wait_p50"),
                                       "p95": summary.get("agent_wait_p95"), "max": summary.get("agent_wait_max")},
                              "source": "bare: digit to agent answer (fixed --bare-queue-wait, no queue)"},
            "callbacks": {"requested": summary.get("callbacks_requested"),
                          "waiting_after_hang_up": summary.get("callbacks_waiting"),
                          "dispatched": summary.get("callbacks_dialled")},
            "bridged": (summary.get("bridged_1", 0) + summary.get("bridged_2", 0)) if summary else None,
            "ai_failures": summary.get("ai_failures")}


def _jsonl(path: Path) -> list[dict] | None:
    if not path.exists():
        return None
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def check_recordings(directory: Path, channels: int, longest_s: float, logged: dict | None, expected: int) -> dict:
    """Open every WAV: channels, 8 kHz, a length between 0 and the longest call (and equal to the
    length the server logged, within 1 s, where it logs one)."""
    paths = sorted(directory.glob("**/*.wav")) if directory.exists() else []
    bad, total_s = [], 0.0
    for path in paths:
        try:
            info = sf.info(str(path))
        except Exception as exc:  # a broken file is a finding
            bad.append(f"{path.name}: {exc}")
            continue
        total_s += info.duration
        problems = []
        if info.channels != channels or info.samplerate != 8000:
            problems.append(f"{info.channels} ch {info.samplerate} Hz")
        if not 0 < info.duration <= longest_s:
            problems.append(f"{info.duration:.1f} s")
        if logged is not None and path.name in logged and abs(logged[path.name] - info.duration) > 1.0:
            problems.append(f"{info.duration:.1f} s, logged {logged[path.name]:.1f} s")
        if problems:
            bad.append(f"{path.name}: " + ", ".join(problems))
    return {"count": len(paths), "expected": expected, "channels": channels, "bad": bad[:20], "bad_count": len(bad),
            "total_minutes": round(total_s / 60, 1),
            "logged": len(logged) if logged is not None else None}


# ---- the capture ----------------------------------------------------------------------------------
def analyse_capture(path: Path, callers: dict[int, tuple[str, tuple[float, float] | None]],
                    others: dict[int, str]) -> dict:
    """One pass over a (large) loopback capture without keeping packets: per server stream (a
    destination port, a source and an SSRC) its arrival times, and every TONE_SAMPLE-th audio
    frame for the tone checks. Gaps as bench/capacity.py: first second of each stream skipped."""
    streams: dict[tuple, list] = {}
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 24:
            return {"rtp": None, "handled": {}}
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            magic = struct.unpack_from("<I", mm)[0]
            endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
            divisor = 1e9 if struct.unpack_from(endian + "I", mm)[0] == 0xA1B23C4D else 1e6
            linktype = struct.unpack_from(endian + "I", mm, 20)[0] & 0x0FFFFFFF
            l2 = {1: 14, 113: 16, 276: 20, 101: 0, 228: 0}.get(linktype)
            if l2 is None:
                raise ValueError(f"unsupported link type {linktype}")
            hdr = struct.Struct(endian + "IIII")
            wanted = set(callers) | set(others)
            off, size = 24, len(mm)
            while off + 16 <= size:
                sec, frac, incl, _ = hdr.unpack_from(mm, off)
                frame = off + 16
                off = frame + incl
                if off > size:
                    break
                ip = frame + l2
                if incl < l2 + 28 or mm[ip] >> 4 != 4 or mm[ip + 9] != 17:
                    continue
                udp = ip + (mm[ip] & 0x0F) * 4
                sport, dport, ulen = struct.unpack_from("!HHH", mm, udp)
                if dport not in wanted:
                    continue
                rtp = udp + 8
                b0, b1 = mm[rtp], mm[rtp + 1]
                pt = b1 & 0x7F
                if b0 >> 6 != 2 or 72 <= pt <= 76 or ulen < 20:
                    continue
                seq, ssrc = struct.unpack_from("!H", mm, rtp + 2)[0], struct.unpack_from("!I", mm, rtp + 8)[0]
                key = (dport, bytes(mm[ip + 12: ip + 16]), sport, ssrc)
                st = streams.get(key)
                if st is None:
                    st = streams[key] = [array.array("d"), bytearray(), pt]
                st[0].append(sec + frac / divisor)
                if pt in (0, 8) and seq % TONE_SAMPLE == 0:
                    start = rtp + 12 + 4 * (b0 & 0x0F)
                    st[1] += mm[start: udp + ulen]
                    st[2] = pt
        finally:
            mm.close()
    gaps = []
    handled: dict[str, int] = {}
    per_port: dict[str, int] = {}
    for (dport, _src, _sport, _ssrc), (times, audio, pt) in streams.items():
        t = np.sort(np.frombuffer(times, dtype=np.float64))
        label = callers[dport][0] if dport in callers else others[dport]
        per_port[label] = per_port.get(label, 0) + 1
        kept = t[t > t[0] + 1.0]
        if kept.size > 2:
            gaps.append(np.diff(kept) * 1000)
        heard = callers[dport][1] if dport in callers else ((AGENT_HZ, HEARD_S) if label == "customers" else None)
        if heard is not None and audio:
            pcm = ulaw_decode(bytes(audio)) if pt == 0 else alaw_decode(bytes(audio))
            if tone_seconds(pcm, heard[0]) * TONE_SAMPLE >= heard[1]:
                handled[label] = handled.get(label, 0) + 1
    all_gaps = np.concatenate(gaps) if gaps else np.zeros(0)
    rtp = {"streams": len(streams), "streams_by_peer": per_port,
           "gap_p99_ms": round(float(np.percentile(all_gaps, 99)), 2) if all_gaps.size else None,
           "gap_max_ms": round(float(all_gaps.max()), 2) if all_gaps.size else None,
           "packets": int(sum(len(s[0]) for s in streams.values()))}
    return {"rtp": rtp, "handled": handled}


# ---- reporting -------------------------------------------------------------------------------------
def row_values(r: dict) -> dict[str, str]:
    def f(v, unit=""):
        return "n/a" if v is None else f"{v}{unit}"

    rows = {}
    for name, k in r["kinds"].items():
        rows[f"{name}: offered / failed / handled"] = f"{k['offered']} / {k['failed']} / {f(k['handled'])}"
    w = r["queue_waits_s"]["live"]
    rows["queue wait p50 / p95 / max (live)"] = f"{f(w['p50'], ' s')} / {f(w['p95'], ' s')} / {f(w['max'], ' s')}"
    cb = r["callbacks"]
    rows["queue abandoned (caller left while queued)"] = f(r.get("queue_abandoned"))
    rows["callbacks requested / completed / not answered"] = (f"{f(cb.get('requested'))} / {f(cb.get('completed'))}"
                                                              f" / {f(cb.get('not_answered'))}")
    rtp = r["rtp"] or {}
    rows["RTP gap p99 / max, streams"] = (f"{f(rtp.get('gap_p99_ms'), ' ms')} / {f(rtp.get('gap_max_ms'), ' ms')}, "
                                          f"{f(rtp.get('streams'))}")
    rows["CPU load avg / peak 10 s"] = f"{f(r['cpu_percent'], ' %')} / {f(r['cpu_peak_10s_percent'], ' %')}"
    rows["RSS start / peak / end"] = f"{f(r['rss_start_mb'])} / {f(r['rss_peak_mb'])} / {f(r['rss_end_mb'])} MB"
    rec = r["recordings"]
    rows["recordings / expected, bad"] = f"{rec['count']} / {rec['expected']}, {rec['bad_count']}"
    rows["agent INVITEs / answered"] = f"{r['agents']['invites']} / {r['agents']['answered']}"
    rows["errors logged"] = str(r["errors_logged"])
    rows["clean"] = "yes" if r["clean"] else "NO: " + "; ".join(r["not_clean_because"])
    return rows


def print_table(results: dict[str, dict]) -> None:
    targets = list(results)
    rows = {t: row_values(results[t]) for t in targets}
    names = list(next(iter(rows.values())))
    width = max(len(n) for n in names) + 2
    print("\n" + " " * width + "".join(f"{t:>44s}" for t in targets))
    for name in names:
        print(f"{name:<{width}s}" + "".join(f"{rows[t].get(name, ''):>44s}" for t in targets))


def load_note() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def run_targets(targets: list[str], load: Load, base: Path, keep: bool = False) -> dict[str, dict]:
    results = {}
    for target in targets:
        print(f"{target}: {load.cps:g} calls/s for {load.duration_s:g} s ({load.agents} agents)", flush=True)
        started = time.monotonic()
        results[target] = TargetRun(target, load, base / f"{target}-{load.cps:g}", keep=keep).run()
        results[target]["wall_s"] = round(time.monotonic() - started)
        r = results[target]
        print(f"  {target}: {r['calls']['offered']} calls, {r['calls']['failed']} failed, RTP gap p99 "
              f"{(r['rtp'] or {}).get('gap_p99_ms')} ms, {r['recordings']['count']} recordings, "
              f"{r['errors_logged']} errors -> {'clean' if r['clean'] else 'NOT clean: ' + '; '.join(r['not_clean_because'])}"
              f" ({r['wall_s']} s)", flush=True)
    return results


def add_load_args(ap: argparse.ArgumentParser) -> None:
    """The load's options, shared with bench/soak.py."""
    ap.add_argument("--agents", type=int, default=None,
                    help="agents registered (default: 90 %% of the agent load the queue callers offer, in Erlangs)")
    ap.add_argument("--mix", type=parse_mix, default=parse_mix("support=45,sales=25,assistant=15,callback=15"),
                    help="shares by kind (default support=45,sales=25,assistant=15,callback=15)")
    ap.add_argument("--hold", type=float, default=90.0,
                    help="seconds a support/sales/assistant caller stays at most, waiting and talking (default 90)")
    ap.add_argument("--talk", type=parse_range, default=(30.0, 60.0),
                    help="agent talk time range, s (default 30-60: above the 30 s a called-back customer may ring)")
    ap.add_argument("--answer-delay", type=parse_range, default=(1.0, 4.0), help="agent ring time range, s (default 1-4)")
    ap.add_argument("--no-answer", type=float, default=0.25, help="share of callback customers not answering (0.25)")
    ap.add_argument("--bare-queue-wait", type=float, default=12.0,
                    help="bare: seconds of hold music before the agent is dialled (default 12)")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs, recordings, capture)")


def load_from_args(args: argparse.Namespace, cps: float, duration_s: float, capture: bool) -> Load:
    agents = args.agents or default_agents(cps, args.mix, args.talk, args.answer_delay)
    return Load(cps, duration_s, agents, args.mix, args.hold, args.talk, args.answer_delay, args.no_answer,
                args.bare_queue_wait, capture=capture)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cps", type=float, default=1.0, help="calls per second arriving (default 1)")
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of arrivals (default 120)")
    add_load_args(ap)
    ap.add_argument("--target", choices=("softswitch", "bare", "both"), default="both")
    ap.add_argument("--find-capacity", action="store_true", help="ramp over --rates; report the highest clean rate")
    ap.add_argument("--rates", default="2,4,6,8", help="calls/s steps for --find-capacity (default 2,4,6,8)")
    ap.add_argument("--no-capture", action="store_true", help="no loopback capture (no RTP gaps, no handled counts)")
    ap.add_argument("--json", default=None, help="default bench/results/full_demo.json (full_demo_capacity.json "
                                                 "with --find-capacity)")
    args = ap.parse_args()
    os.environ[KEY_ENV] = "bench-key"  # the server inherits it
    targets = ["softswitch", "bare"] if args.target == "both" else [args.target]
    base = Path(tempfile.mkdtemp(prefix="full-demo-"))
    json_path = Path(args.json or REPO / "bench" / "results" /
                     ("full_demo_capacity.json" if args.find_capacity else "full_demo.json"))

    def load_at(cps: float) -> Load:
        return load_from_args(args, cps, args.duration, not args.no_capture)

    before = load_note()
    print(before + (f"; run directory {base} (kept)" if args.keep else ""), flush=True)
    started = time.monotonic()
    doc: dict = {"command": " ".join(sys.argv), "revision": source_revision(), "load_before": before}
    try:
        if args.find_capacity:
            steps, capacity = [], {}
            for target in targets:
                capacity[target] = 0.0
                for cps in [float(x) for x in args.rates.split(",")]:  # ascending
                    r = run_targets([target], load_at(cps), base, args.keep)[target]
                    steps.append({"target": target, "cps": cps, **r})
                    if not r["clean"]:
                        break
                    capacity[target] = cps
            rates = [float(x) for x in args.rates.split(",")]
            doc.update({"mode": "find-capacity", "steps": steps,
                        "load": asdict(load_at(rates[0])) | {"cps": None, "agents": args.agents or "auto"},
                        "capacity_cps": capacity})
            print("\nhighest clean rate: " + ", ".join(f"{t} {c:g} calls/s" for t, c in capacity.items()))
            if "softswitch" in capacity and capacity.get("bare"):
                print(f"ratio softswitch / bare: {capacity['softswitch'] / capacity['bare']:.2f}")
        else:
            load = load_at(args.cps)
            results = run_targets(targets, load, base, args.keep)
            doc.update({"mode": "run", "load": asdict(load), "results": results})
            print_table(results)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    doc["load_after"] = load_note()
    doc["wall_s"] = round(time.monotonic() - started)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=2, default=str))
    print(f"\n{doc['load_after']}; run took {doc['wall_s']} s; results in {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
