"""Run SIPp scenarios as owned child processes and read back their outcome.

SIPp plays the test actors (trunk callers, agents' phones, customers). Each instance gets its
own trace directory (errors, messages, stats, logs) so a failing test can show what SIPp saw.

SIPp 3.6.1 behaviour this relies on (checked against the installed binary):
- ``-set name value`` only sets variables declared in the scenario with
  ``<Global variables="a,b"/>`` (otherwise a fatal error), referenced as ``[$name]``. They are
  strings: ``<pause variable=...>`` needs ``<todouble>`` first. A status code (``SIP/2.0
  [$status]``), a recv ``timeout`` and ``play_pcap_audio`` are read when the scenario loads,
  so they take no ``[$var]``; ``play_pcap_audio`` does take a whole ``[keyword]`` from ``-key``.
- A message arriving while a ``<nop>`` is the current element (e.g. right after a ``<send>``
  with ``retrans``) is "unexpected"; scenarios keep nops away from those spots.
- With ``-nostdin`` and no terminal SIPp runs unattended and prints its final screen to
  stdout. Call counts come from ``-trace_stat -stf file -fd 1`` (last row, SuccessfulCall(C)
  and FailedCall(C)), else from that screen.
- Exit codes: 0 all calls successful; 1 at least one call failed, *or* a fatal scenario or
  command-line error (undeclared ``-set`` variable, missing ``-key``, unknown option); 255 (-1)
  fatal error, including the global ``-timeout`` with ``-timeout_error``; 254 (-2) fatal error
  binding a socket; 97 exit on internal command and 99 normal exit without calls are
  documented but not seen here. SIGUSR1 asks for a soft exit (no new calls; current ones
  finish) and then exits 0; SIGTERM exits at once, also 0 - hence ``SippResult.stopped``.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Iterable, Mapping

from tests.support.ports import HOST, free_port, free_port_block

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "sipp"

EXIT_CODES = {
    0: "all calls successful",
    1: "at least one call failed (or a fatal scenario/command-line error)",
    97: "exit on internal command",
    99: "normal exit without calls processed",
    254: "fatal error binding a socket",
    255: "fatal error",
}


def scenario_path(name: str) -> Path:
    """Path of a scenario shipped in tests/sipp/ (``.xml`` optional)."""
    path = SCENARIO_DIR / (name if name.endswith(".xml") else name + ".xml")
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def scenario_requirements(path: Path) -> tuple[set[str], set[str]]:
    """(global variables, -key keywords used as pcap files) a scenario needs from the command line."""
    text = path.read_text(encoding="latin-1")
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    globals_: set[str] = set()
    for decl in re.findall(r'<Global\s+variables="([^"]*)"', text):
        globals_.update(v.strip() for v in decl.split(",") if v.strip())
    keys = set(re.findall(r'play_pcap_(?:audio|video|image)="\[([^\]$]+)\]"', text))
    return globals_, keys


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _port_bound(port: int, tcp: bool) -> bool:
    """Whether something listens on 127.0.0.1:port (from /proc, so we never race for the port)."""
    table = "/proc/net/tcp" if tcp else "/proc/net/udp"
    wanted = f"0100007F:{port:04X}"
    any_addr = f"00000000:{port:04X}"
    for line in _read(Path(table)).splitlines()[1:]:
        parts = line.split()
        if len(parts) > 3 and parts[1] in (wanted, any_addr) and (not tcp or parts[3] == "0A"):
            return True
    return False


@dataclass
class SippResult:
    """Outcome of one SIPp run."""

    scenario: str
    returncode: int | None
    successful: int | None
    failed: int | None
    stopped: bool  # we had to stop it (bound reached) rather than it exiting by itself
    command: list[str]
    trace_dir: Path
    errors: str = ""  # SIPp's -trace_err log
    logs: str = ""  # <log> actions (-trace_logs)
    stdout_tail: str = ""
    stderr_tail: str = ""
    counters: dict[str, str] = field(default_factory=dict)  # last row of the stat CSV

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.stopped and not self.failed

    @property
    def meaning(self) -> str:
        if self.returncode is None:
            return "still running"
        return EXIT_CODES.get(self.returncode, "unknown exit code")

    def log_values(self, name: str) -> list[str]:
        """Values of ``name=value`` lines written by the scenario's <log> actions."""
        return re.findall(rf"(?:^|\s){re.escape(name)}=(\S*)", self.logs)

    def __str__(self) -> str:
        parts = [
            f"SIPp {self.scenario}: exit {self.returncode} ({self.meaning})"
            + (" after being stopped" if self.stopped else "")
            + f", successful={self.successful} failed={self.failed}",
            f"  command: {' '.join(self.command)}",
            f"  traces: {self.trace_dir}",
        ]
        for title, text in (("errors", self.errors), ("stderr", self.stderr_tail), ("logs", self.logs)):
            if text.strip():
                parts.append(f"  --- {title} (tail) ---\n" + _tail(text, 25))
        return "\n".join(parts)


class Sipp:
    """One SIPp process bound to 127.0.0.1, run non-interactively; also a context manager.

    ``remote`` is "host:port" for a UAC (None for a UAS). ``variables`` go to ``-set`` (they
    must be the scenario's ``<Global>`` variables, all of them), ``keys`` to ``-key``
    (e.g. the pcap file). ``timeout_s`` is SIPp's global ``-timeout`` (a failure, with
    ``-timeout_error``) and, plus a grace period, the bound of ``wait()``.
    """

    def __init__(
        self,
        scenario: Path | str,
        remote: str | None = None,
        *,
        local_port: int | None = None,
        media_port: int | None = None,
        transport: str = "u1",
        calls: int | None = None,
        rate: float | None = None,
        rate_period_ms: int | None = None,
        limit: int | None = None,
        variables: Mapping[str, object] | None = None,
        keys: Mapping[str, object] | None = None,
        service: str | None = None,
        auth: tuple[str, str] | None = None,
        timeout_s: float = 60.0,
        auto_answer: bool = True,
        trace_msg: bool = True,
        extra_args: Iterable[str] = (),
        trace_dir: Path | str | None = None,
        sipp_bin: str = "sipp",
    ) -> None:
        self.scenario = Path(scenario) if Path(scenario).is_file() else scenario_path(str(scenario))
        if transport not in ("u1", "un", "ui", "t1", "tn", "l1", "ln"):
            raise ValueError(f"unsupported transport {transport!r}")
        self.remote = remote
        self.transport = transport
        self.tcp = transport[0] in "tl"
        self.local_port = local_port or free_port("both")
        self.media_port = media_port or free_port_block(4)  # audio, its RTCP, video, its RTCP
        self.control_port = free_port("udp")
        self.calls, self.rate, self.rate_period_ms, self.limit = calls, rate, rate_period_ms, limit
        self.variables = {k: str(v) for k, v in (variables or {}).items()}
        self.keys = {k: str(v) for k, v in (keys or {}).items()}
        self.service, self.auth, self.timeout_s = service, auth, timeout_s
        self.auto_answer, self.trace_msg = auto_answer, trace_msg
        self.extra_args = list(extra_args)
        self.sipp_bin = shutil.which(sipp_bin) or sipp_bin
        self._check_requirements()
        self._own_dir = trace_dir is None
        self.trace_dir = Path(trace_dir) if trace_dir else Path(tempfile.mkdtemp(prefix=f"sipp-{self.scenario.stem}-"))
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self.result: SippResult | None = None

    def _check_requirements(self) -> None:
        needed_vars, needed_keys = scenario_requirements(self.scenario)
        missing = sorted(needed_vars - self.variables.keys())
        unknown = sorted(self.variables.keys() - needed_vars)
        missing_keys = sorted(needed_keys - self.keys.keys())
        problems = []
        if missing:
            problems.append(f"missing -set variables {missing}")
        if unknown:
            problems.append(f"variables {unknown} are not <Global> in the scenario")
        if missing_keys:
            problems.append(f"missing -key values {missing_keys}")
        if problems:
            raise ValueError(f"{self.scenario.name}: " + "; ".join(problems))

    @property
    def address(self) -> str:
        """host:port of this instance's SIP socket (a UAC's remote for a UAS)."""
        return f"{HOST}:{self.local_port}"

    def command(self) -> list[str]:
        d = self.trace_dir
        cmd = [self.sipp_bin]
        if self.remote:
            cmd.append(self.remote)
        cmd += ["-sf", str(self.scenario), "-t", self.transport, "-nostdin"]
        cmd += ["-i", HOST, "-mi", HOST, "-p", str(self.local_port), "-mp", str(self.media_port)]
        cmd += ["-ci", HOST, "-cp", str(self.control_port)]
        cmd += ["-timeout", f"{self.timeout_s:g}s", "-timeout_error"]
        cmd += ["-trace_err", "-error_file", str(d / "errors.log")]
        cmd += ["-trace_stat", "-stf", str(d / "stat.csv"), "-fd", "1"]
        cmd += ["-trace_screen", "-screen_file", str(d / "screen.log")]
        cmd += ["-trace_logs", "-log_file", str(d / "logs.log")]
        if self.trace_msg:
            cmd += ["-trace_msg", "-message_file", str(d / "messages.log")]
        if self.auto_answer:
            cmd.append("-aa")
        if self.calls is not None:
            cmd += ["-m", str(self.calls)]
        if self.rate is not None:
            cmd += ["-r", f"{self.rate:g}"]
        if self.rate_period_ms is not None:
            cmd += ["-rp", str(self.rate_period_ms)]
        if self.limit is not None:
            cmd += ["-l", str(self.limit)]
        if self.service is not None:
            cmd += ["-s", self.service]
        if self.auth is not None:
            cmd += ["-au", self.auth[0], "-ap", self.auth[1]]
        for name, value in self.variables.items():
            cmd += ["-set", name, value]
        for name, value in self.keys.items():
            cmd += ["-key", name, value]
        return cmd + self.extra_args

    def start(self, ready_timeout: float = 10.0) -> "Sipp":
        """Start SIPp and return once its SIP socket is bound (or raise with its errors)."""
        if self._proc is not None:
            raise RuntimeError("SIPp already started")
        for name in _TRACE_FILES:  # a reused trace_dir must not show an earlier run's results
            (self.trace_dir / name).unlink(missing_ok=True)
        with open(self.trace_dir / "stdout.log", "wb") as out, open(self.trace_dir / "stderr.log", "wb") as err:
            self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=self.trace_dir)
        try:
            deadline = time.monotonic() + ready_timeout
            while not _port_bound(self.local_port, self.tcp):
                if self._proc.poll() is not None:
                    return self  # exited at once (e.g. a scenario error): wait() reports it
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SIPp did not bind {self.address} within {ready_timeout}s")
                time.sleep(0.01)  # no readiness signal from SIPp; poll the socket table
        except BaseException:
            self.stop()  # never leave SIPp running behind a failed start
            raise
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to exit by itself (bounded; stopped if the bound passes)."""
        if self._proc is None:
            raise RuntimeError("SIPp not started")
        bound = timeout if timeout is not None else self.timeout_s + 10.0
        try:
            self._proc.wait(bound)
        except subprocess.TimeoutExpired:
            self.stop()
        return self._collect()

    def stop(self, grace_s: float = 2.0) -> SippResult:
        """Soft exit (SIGUSR1), then SIGTERM, then SIGKILL, each bounded."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("SIPp not started")
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            self._stopped = True
            proc.send_signal(sig)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                continue
        return self._collect()

    def _collect(self) -> SippResult:
        d = self.trace_dir
        counters = _last_stat_row(d / "stat.csv")
        stdout = _read(d / "stdout.log")
        successful = _count(counters, "SuccessfulCall(C)", stdout, "Successful call")
        failed = _count(counters, "FailedCall(C)", stdout, "Failed call")
        self.result = SippResult(
            scenario=self.scenario.name,
            returncode=self._proc.poll() if self._proc else None,
            successful=successful,
            failed=failed,
            stopped=self._stopped,
            command=self.command(),
            trace_dir=d,
            errors=_read(d / "errors.log"),
            logs=_read(d / "logs.log"),
            stdout_tail=_tail(stdout),
            stderr_tail=_tail(_read(d / "stderr.log")),
            counters=counters,
        )
        return self.result

    def close(self) -> None:
        """Stop if still running; remove an automatic trace dir when the run went well."""
        if self.running:
            self.stop()
        if self._own_dir and self.result is not None and self.result.ok:
            shutil.rmtree(self.trace_dir, ignore_errors=True)

    def __enter__(self) -> "Sipp":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.running:
            self.stop()
        elif self._proc is not None and self.result is None:
            self._collect()
        self.close()


_TRACE_FILES = ("errors.log", "stat.csv", "screen.log", "logs.log", "messages.log", "stdout.log", "stderr.log")


def _last_stat_row(path: Path) -> dict[str, str]:
    lines = [line for line in _read(path).splitlines() if line.strip()]
    if len(lines) < 2:
        return {}
    header, last = lines[0].split(";"), lines[-1].split(";")
    return dict(zip(header, last))


def _count(counters: Mapping[str, str], column: str, screen: str, label: str) -> int | None:
    """A cumulative counter from the stat CSV, else from the final screen on stdout."""
    value = counters.get(column, "").strip()
    if value.isdigit():
        return int(value)
    rows = re.findall(rf"^\s*{re.escape(label)}\s*\|\s*\d+\s*\|\s*(\d+)", screen, flags=re.M)
    return int(rows[-1]) if rows else None


def run_sipp(scenario: Path | str, remote: str | None = None, **kwargs: object) -> SippResult:
    """Start SIPp, wait for it to exit (bounded) and return the result."""
    with Sipp(scenario, remote, **kwargs) as sipp:  # type: ignore[arg-type]
        return sipp.wait()
