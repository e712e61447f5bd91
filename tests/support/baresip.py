"""A second independent softphone for the interop suite: Debian's baresip (baresip-core, on libre
and librem; no code shared with PJSIP or liblinphone), run headless.

Each `Baresip` is one process with its own config directory (`-f DIR`): SIP and RTP on
127.0.0.1, audio from and to files (aufile), G.711 only, and no console (the stdio module needs a
terminal). It is driven over its ctrl_tcp module: commands and answers are JSON netstrings on a
TCP port, and the same connection carries its events (REGISTER_OK, REGISTER_FAIL, CALL_...).

Every wait has a bound; `stop()` ends the process by its pid (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port, free_port_block

BARESIP = shutil.which("baresip")
MODULES = Path("/usr/lib/baresip/modules")


def available() -> bool:
    return BARESIP is not None and (MODULES / "ctrl_tcp.so").is_file()


class BaresipError(AssertionError):
    """The phone did not do what the test asked, within the bound."""


@dataclass
class Baresip:
    """One baresip with one account: `user`@`server` (host:port) with `password`."""

    workdir: Path
    user: str
    password: str
    server: str
    name: str = "baresip"
    register: bool = True
    sip_port: int = 0
    rtp_port: int = 0
    ctrl_port: int = 0
    proc: subprocess.Popen | None = None
    events: list[dict] = field(default_factory=list)
    _sock: socket.socket | None = None
    _answers: dict[str, dict] = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _token: int = 0

    # ---- life cycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "Baresip":
        if not available():
            raise BaresipError("baresip is not installed (native/setup-system.sh installs baresip-core)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sip_port = self.sip_port or free_port("both")
        self.rtp_port = self.rtp_port or free_port_block(20, "udp")
        self.ctrl_port = self.ctrl_port or free_port("tcp")
        (self.workdir / "config").write_text(self._config())
        regint = 600 if self.register else 0
        (self.workdir / "accounts").write_text(
            f"<sip:{self.user}@{self.server}>;auth_pass={self.password};regint={regint};answermode=manual\n")
        log = open(self.workdir / f"{self.name}.log", "w")
        self.proc = subprocess.Popen([BARESIP, "-f", str(self.workdir)], stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + timeout
        while self._sock is None:
            try:
                self._sock = socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=0.5)
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise BaresipError(f"{self.name}: ctrl_tcp did not listen on {self.ctrl_port}:\n{self.output()}")
                time.sleep(0.1)
        self._sock.settimeout(None)
        threading.Thread(target=self._pump, name=f"{self.name}-ctrl", daemon=True).start()
        return self

    def _config(self) -> str:
        lines = {
            "sip_listen": f"127.0.0.1:{self.sip_port}",
            "net_interface": "127.0.0.1",  # an address: baresip 1.0 finds no address on the name "lo"
            "rtp_ports": f"{self.rtp_port}-{self.rtp_port + 19}",
            "audio_player": "aufile,/dev/null",
            "audio_source": "aufile,/dev/null",
            "module_path": str(MODULES),
            "ctrl_tcp_listen": f"127.0.0.1:{self.ctrl_port}",
        }
        modules = ["module g711.so", "module aufile.so", "module_app account.so", "module_app menu.so",
                   "module_app ctrl_tcp.so"]
        return "".join(f"{k} {v}\n" for k, v in lines.items()) + "\n".join(modules) + "\n"

    def output(self) -> str:
        try:
            return (self.workdir / f"{self.name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout)

    def __enter__(self) -> "Baresip":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- ctrl_tcp: JSON netstrings ------------------------------------------------------------
    def _pump(self) -> None:
        buf = b""
        sock = self._sock
        while sock is not None:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b":" in buf:
                length, _, rest = buf.partition(b":")
                if not length.isdigit() or len(rest) < int(length) + 1:
                    break
                body, buf = rest[:int(length)], rest[int(length) + 1:]
                try:
                    message = json.loads(body)
                except ValueError:
                    continue
                with self._cond:
                    if message.get("response"):
                        self._answers[str(message.get("token", ""))] = message
                    else:
                        self.events.append(message)
                    self._cond.notify_all()

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict:
        """Run one command (`dial URI`, `accept`, `hangup`, `reginfo` ...); its answer."""
        assert self._sock is not None, "not started"
        self._token += 1
        token = str(self._token)
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._sock.sendall(str(len(body)).encode() + b":" + body + b",")
        deadline = time.monotonic() + timeout
        with self._cond:
            while token not in self._answers:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BaresipError(f"{self.name}: no answer to {command!r} in {timeout} s")
                self._cond.wait(left)
            return self._answers.pop(token)

    def wait_event(self, *types: str, timeout: float = 10.0) -> dict:
        """The first event of one of `types` (REGISTER_OK, REGISTER_FAIL, CALL_ESTABLISHED ...)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if event.get("type") in types:
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [e.get("type") for e in self.events]
                    raise BaresipError(f"{self.name}: none of {types} in {timeout} s (events: {seen}):\n"
                                       f"{self.output()[-3000:]}")
                self._cond.wait(left)

    def registration(self) -> str:
        """The account's registration state from `reginfo`: "OK", "ERR" (failed, or not yet
        answered) or "" (none shown). Polled, since events before ctrl_tcp's connection are lost."""
        data = re.sub(r"\x1b\[[0-9;]*m", "", str(self.command("reginfo").get("data", "")))
        m = re.search(rf"sip:{re.escape(self.user)}@\S+\s+(OK|ERR)\b", data)
        return m.group(1) if m else ""

    def wait_registration(self, timeout: float = 10.0, settle: float = 3.0) -> str:
        """"OK" as soon as the account is registered, else its state once `settle` seconds have
        shown no success (a refused challenge is final: baresip retries only much later)."""
        deadline = time.monotonic() + timeout
        settled = time.monotonic() + settle
        state = ""
        while time.monotonic() < deadline:
            state = self.registration()
            if state == "OK" or (state == "ERR" and time.monotonic() > settled):
                return state
            time.sleep(0.2)
        return state
