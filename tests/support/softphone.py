"""A real, independent softphone for the interop suite: liblinphone's `linphone-daemon` (Debian's
linphone-cli package; belle-sip and mediastreamer2, no code shared with PJSIP), driven headless
over its command pipe.

Each `Linphone` is one daemon process with its own config file, SIP port and RTP ports on
127.0.0.1. Commands go to its stdin and answers ("Status: Ok" / "Status: Error") come back on its
stdout; call and registration states are events read with `pop-event`. The phone has no sound
card: what it sends is a WAV played into the call (`play`), and what it hears is checked on
loopback captures or on softswitch's own call recordings.

Every wait has a bound; `stop()` ends the process by its pid (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port, free_port_block

DAEMON = shutil.which("linphone-daemon")


def available() -> bool:
    return DAEMON is not None


class SoftphoneError(AssertionError):
    """The phone did not do what the test asked, within the bound."""


@dataclass
class Event:
    kind: str  # "call-state-changed", "registration-changed", ...
    fields: dict[str, str]

    @property
    def state(self) -> str:
        return self.fields.get("Event", "")

    @property
    def call_id(self) -> str:
        return self.fields.get("Id", "")


@dataclass
class Linphone:
    """One linphone-daemon. `transport` is udp, tcp or tls (the phone's listening transport)."""

    workdir: Path
    name: str = "phone"
    transport: str = "udp"
    auto_answer: bool = False
    user: str = ""  # the From user of calls it places (a caller's number); default: its name
    # Extra linphonerc settings: {"section": {"key": "value"}}.
    settings: dict[str, dict[str, str]] = field(default_factory=dict)
    sip_port: int = 0
    rtp_port: int = 0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    events: list[Event] = field(default_factory=list)
    _lines: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _event_pos: int = 0
    _playing: dict[str, Path] = field(default_factory=dict)
    _watcher: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _events_lock: threading.Lock = field(default_factory=threading.Lock)

    # ---- life cycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> "Linphone":
        if not available():
            raise SoftphoneError("linphone-daemon is not installed (native/setup-system.sh installs linphone-cli)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Its database lives under $HOME; without that folder the core never starts (no listening).
        (self.workdir / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        self.sip_port = self.sip_port or free_port("both")
        self.rtp_port = self.rtp_port or free_port_block(20, "udp")
        rc = self.workdir / f"{self.name}.linphonerc"
        rc.write_text(self._linphonerc())
        self.log_path = self.workdir / f"{self.name}.log"
        cmd = [DAEMON, "--config", str(rc), "--log", str(self.log_path), "--disable-stats-events"]
        if self.auto_answer:
            cmd.append("--auto-answer")
        env = {**os.environ, "HOME": str(self.workdir)}  # its database and caches stay in the test's dir
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, cwd=self.workdir)
        threading.Thread(target=self._pump, name=f"{self.name}-out", daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.command("port", timeout=2.0)
            if f"SIP: {self.sip_port}" in answer:
                return self
            time.sleep(0.2)
        self.stop()
        raise SoftphoneError(f"{self.name}: linphone-daemon did not listen on {self.sip_port}:\n{self.output()}")

    def _linphonerc(self) -> str:
        ports = {"udp": ("sip_port", "sip_tcp_port", "sip_tls_port"), "tcp": ("sip_tcp_port", "sip_port", "sip_tls_port"),
                 "tls": ("sip_tls_port", "sip_port", "sip_tcp_port")}[self.transport]
        sections: dict[str, dict[str, str]] = {
            "sip": {ports[0]: str(self.sip_port), ports[1]: "0", ports[2]: "0", "use_ipv6": "0",
                    "bind_address": "127.0.0.1", "default_proxy": "-1", "sip_random_port": "0",
                    "inc_timeout": "120", "verify_server_certs": "0", "verify_server_cn": "0",
                    "register_only_when_network_is_up": "0", "guess_hostname": "0", "ping_with_options": "0",
                    "keepalive_period": "0", "contact": f"sip:{self.user or self.name}@127.0.0.1"},
            "rtp": {"audio_rtp_port": f"{self.rtp_port}-{self.rtp_port + 19}", "audio_jitt_comp": "60", "bind_address": "127.0.0.1",
                    "symmetric": "1", "rtcp_enabled": "0"},
            "sound": {"echocancellation": "0", "mic_gain_db": "0"},
            "video": {"capture": "0", "display": "0", "automatically_initiate": "0", "automatically_accept": "0"},
            "net": {"firewall_policy": "0", "mtu": "0"},
            "misc": {"max_calls": "4", "history_max_size": "0"},
        }
        for section, values in self.settings.items():
            sections.setdefault(section, {}).update(values)
        return "".join(f"[{s}]\n" + "".join(f"{k}={v}\n" for k, v in kv.items()) + "\n" for s, kv in sections.items())

    def _pump(self) -> None:
        # Raw reads: the daemon's prompt that closes an answer has no line end.
        assert self.proc and self.proc.stdout
        fd = self.proc.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            with self._cond:
                self._lines.append(data.decode("utf-8", "replace"))
                self._cond.notify_all()

    def output(self) -> str:
        with self._cond:
            return "".join(self._lines)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            assert self.proc.stdin
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout)

    def __enter__(self) -> "Linphone":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- commands -----------------------------------------------------------------------------
    def command(self, text: str, timeout: float = 5.0) -> str:
        """Send one daemon command and return its answer: the text from `Status:` up to the
        prompt the daemon prints when it is ready for the next command."""
        assert self.proc and self.proc.stdin
        with self._lock:
            with self._cond:
                start = len("".join(self._lines))
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
            deadline = time.monotonic() + timeout
            with self._cond:
                while True:
                    block = "".join(self._lines)[start:]
                    m = re.search(r"(Status: (?:Ok|Error).*?)daemon-linphone>", block, re.S)
                    if m:
                        return m.group(1)
                    left = deadline - time.monotonic()
                    if left <= 0 or (self.proc.poll() is not None):
                        raise SoftphoneError(f"{self.name}: no answer to {text!r} in {timeout} s:\n{block[-2000:]}")
                    self._cond.wait(min(left, 0.5))

    def ok(self, text: str, timeout: float = 5.0) -> str:
        answer = self.command(text, timeout)
        if "Status: Ok" not in answer:
            raise SoftphoneError(f"{self.name}: {text!r} failed:\n{answer}")
        return answer

    def register(self, user: str, password: str, server: str, *, transport: str | None = None) -> str:
        """Register `user` at `server` (host:port); returns the daemon's register id."""
        transport = transport or self.transport
        scheme = "sips" if transport == "tls" else "sip"
        host = server.split(":")[0]
        identity = f"sip:{user}@{host}"
        proxy = f"sip:{server};transport={transport}"
        answer = self.ok(f"register {identity} {proxy} {password}")
        del scheme
        m = re.search(r"Id: (\d+)", answer)
        return m.group(1) if m else "1"

    def registration_state(self, reg_id: str = "1") -> str:
        answer = self.command(f"register-status {reg_id}")
        m = re.search(r"State: (\w+)", answer)
        return m.group(1) if m else ""

    def wait_registered(self, reg_id: str = "1", timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.registration_state(reg_id)
            if state == "LinphoneRegistrationOk":
                return
            if state == "LinphoneRegistrationFailed":
                break
            time.sleep(0.2)
        raise SoftphoneError(f"{self.name}: registration {reg_id} is {state or 'unknown'}, not Ok:\n{self.log_tail()}")

    def call(self, uri: str) -> str:
        """Start a call; returns the daemon's call id."""
        answer = self.ok(f"call {uri}")
        m = re.search(r"Id: (\d+)", answer)
        if not m:
            raise SoftphoneError(f"{self.name}: no call id in {answer!r}")
        return m.group(1)

    def answer(self, call_id: str = "") -> None:
        self.ok(f"answer {call_id}".strip())

    def terminate(self, call_id: str = "") -> None:
        self.command(f"terminate {call_id}".strip())

    def pause(self, call_id: str = "") -> None:
        """Hold: a re-INVITE with a=sendonly."""
        self.ok(f"call-pause {call_id}".strip())

    def resume(self, call_id: str = "") -> None:
        self.ok(f"call-resume {call_id}".strip())

    def dtmf(self, digits: str, gap: float = 0.3) -> None:
        for digit in digits:
            self.ok(f"dtmf {digit}")
            time.sleep(gap)

    def transfer(self, call_id: str, target: str) -> None:
        """Blind transfer (REFER) of `call_id` to a SIP URI, or attended to another call id."""
        self.ok(f"call-transfer {call_id} {target}")

    def play(self, wav: Path | str, call_id: str = "") -> None:
        """Play a WAV into the call instead of a microphone (loops are not supported: make it long)."""
        self.ok(f"incall-player-start {wav} {call_id}".strip())

    def call_status(self, call_id: str = "") -> str:
        answer = self.command(f"call-status {call_id}".strip())
        m = re.search(r"State: (\w+)", answer)
        return m.group(1) if m else ""

    def wait_call_state(self, state: str, call_id: str = "", timeout: float = 15.0) -> None:
        """Until the call is in `state` (LinphoneCallStreamsRunning, LinphoneCallIncomingReceived,
        LinphoneCallPaused, LinphoneCallPausedByRemote, LinphoneCallEnd ...)."""
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            seen = self.call_status(call_id)
            if seen == state:
                return
            time.sleep(0.1)
        raise SoftphoneError(f"{self.name}: call {call_id or 'current'} is {seen or 'gone'}, not {state}:\n{self.log_tail()}")

    _EVENT = re.compile(r"Event-type: (\S+)\n\n((?:[\w-]+: .*\n)+)")

    def pop_events(self) -> list[Event]:
        """Events the daemon printed since the last call, oldest first (also kept in `events`).
        In pipe mode linphone-daemon writes each event to its output as it happens."""
        with self._events_lock:
            text = self.output()
            got: list[Event] = []
            for m in self._EVENT.finditer(text, self._event_pos):
                fields = dict(line.split(": ", 1) for line in m.group(2).splitlines() if ": " in line)
                got.append(Event(m.group(1), fields))
                self._event_pos = m.end()
            self.events.extend(got)
            return got

    def keep_playing(self, wav: Path | str, call_id: str) -> None:
        """Play `wav` into the call now and again whenever linphone restarts the call's streams
        (after hold, resume or any re-INVITE its in-call player stops with the old stream)."""
        self._playing[call_id] = Path(wav)
        self.play(wav, call_id)
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._replay, name=f"{self.name}-player", daemon=True)
            self._watcher.start()

    def _replay(self) -> None:
        seen = len(self.events)
        while not self._stopping.wait(0.05) and self.proc is not None and self.proc.poll() is None:
            self.pop_events()
            fresh, seen = self.events[seen:], len(self.events)
            for event in fresh:
                wav = self._playing.get(event.call_id)
                if wav is not None and event.state == "LinphoneCallStreamsRunning":
                    try:
                        self.play(wav, event.call_id)
                    except SoftphoneError:
                        pass  # the call ended meanwhile

    def mark(self) -> int:
        """A position in the event history: `wait_event(..., since=mark)` sees only later events."""
        self.pop_events()
        return len(self.events)

    def wait_event(self, state: str, call_id: str = "", timeout: float = 15.0, since: int = 0) -> Event:
        """Until the daemon reports `state` (a call or registration state) for `call_id` (any),
        among the events after `since` (see `mark`)."""
        deadline = time.monotonic() + timeout
        while True:
            self.pop_events()
            for event in self.events[since:]:
                if event.state == state and (not call_id or event.call_id == call_id):
                    return event
            if time.monotonic() > deadline:
                raise SoftphoneError(f"{self.name}: no {state} in {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def wait_incoming(self, timeout: float = 15.0) -> str:
        """Until a call rings on this phone; returns its call id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.pop_events():
                if event.kind == "call-state-changed" and event.state == "LinphoneCallIncomingReceived":
                    return event.call_id
            time.sleep(0.1)
        raise SoftphoneError(f"{self.name}: no incoming call in {timeout} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:] if self.log_path else ""
        except OSError:
            return ""
