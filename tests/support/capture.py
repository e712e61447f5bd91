"""Loopback packet capture with tcpdump, to check the RTP a server under test really sent.

The server latches its RTP to where the peer's RTP comes from (symmetric RTP), so the only
neutral observer of what it sends is the loopback interface itself.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

from tests.support.pcap import Packet, RtpStream, read_pcap, rtp_streams


class CaptureError(RuntimeError):
    """tcpdump is missing, not permitted, or did not start/stop as expected."""


class LoopbackCapture:
    """Context manager running ``tcpdump -i lo -U -s 0 -w path <filter>`` for its body.

    Entering waits for tcpdump's "listening on"; but tcpdump writes packets only when a kernel
    ring block retires (up to ~1 s later) and SIGINT discards what is still queued. So the
    capture also matches a private sentinel UDP port: entering returns once a probe to it is in
    the file, and leaving sends a last probe and waits for it before SIGINT, so everything sent
    in the body is in the file. Sentinel datagrams are left out of ``packets()``.
    """

    def __init__(
        self,
        filter: str,  # noqa: A002 - a tcpdump filter expression; "" captures everything
        path: str | Path,
        *,
        interface: str = "lo",
        buffer_kib: int = 16384,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.filter = filter
        self.path = Path(path)
        self.interface = interface
        self.buffer_kib = buffer_kib
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_lines: list[str] = []
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None
        self._sentinel: socket.socket | None = None
        self._nonce = secrets.token_hex(8).encode()
        self._probes = 0
        self._scan_offset = 0
        self._capturing = False  # the start probe made it into the file

    def command(self) -> list[str]:
        tcpdump = shutil.which("tcpdump") or next(
            (p for p in ("/usr/sbin/tcpdump", "/usr/bin/tcpdump", "/sbin/tcpdump") if os.path.exists(p)), None
        )
        if tcpdump is None:
            raise CaptureError("tcpdump is not installed (apt-get install tcpdump)")
        cmd = [tcpdump, "-i", self.interface, "-U", "-n", "-s", "0", "-B", str(self.buffer_kib), "-w", str(self.path)]
        if os.geteuid() == 0:
            cmd += ["-Z", "root"]  # otherwise tcpdump drops to user "tcpdump", who may not write here
        term = f"({self.filter}) or (udp and dst host 127.0.0.1 and dst port {self.sentinel_port})"
        return cmd + ([term] if self.filter.strip() else [])

    @property
    def sentinel_port(self) -> int:
        if self._sentinel is None:
            self._sentinel = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sentinel.bind(("127.0.0.1", 0))  # bound, so probes cause no ICMP errors
        return self._sentinel.getsockname()[1]

    def _close_sentinel(self) -> None:
        if self._sentinel is not None:
            self._sentinel.close()
            self._sentinel = None

    def _probe(self) -> bytes:
        """Send one sentinel datagram to ourselves and return its unique payload."""
        self._probes += 1
        marker = b"loopback-capture-sentinel-" + self._nonce + b"-%d" % self._probes
        assert self._sentinel is not None
        self._sentinel.sendto(marker, self._sentinel.getsockname())
        return marker

    def _seen(self, marker: bytes) -> bool:
        """Whether ``marker`` has been written to the file since the last scan."""
        try:
            with open(self.path, "rb") as f:
                f.seek(max(0, self._scan_offset - len(marker)))
                data = f.read()
        except FileNotFoundError:
            return False
        found = marker in data
        if found:
            self._scan_offset = max(0, self._scan_offset - len(marker)) + data.index(marker) + len(marker)
        return found

    def _await_probe(self, timeout: float, resend: bool) -> bool:
        """Probe until a probe shows up in the file (tcpdump is capturing and flushing), bounded.

        Without --immediate-mode (whose fixed-size ring slots drop bursts), tcpdump writes a
        packet only when its kernel block retires, i.e. within about a second.
        """
        deadline = time.monotonic() + timeout
        markers = [self._probe()]
        last_sent = time.monotonic()
        while time.monotonic() < deadline:
            if any(self._seen(m) for m in markers):
                return True
            if self._proc is None or self._proc.poll() is not None:
                return False
            time.sleep(0.02)  # tcpdump gives no notification for a written packet; poll the file
            if resend and time.monotonic() - last_sent > 0.25:
                markers.append(self._probe())
                last_sent = time.monotonic()
        return False

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._stderr_lines.append(line)
            if "listening on" in line:
                self._listening.set()
        self._listening.set()  # EOF: tcpdump exited; start() tells the two apart

    @property
    def stderr(self) -> str:
        return "\n".join(self._stderr_lines)

    def start(self) -> "LoopbackCapture":
        if self._proc is not None:
            raise CaptureError("capture already started")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            return self._await_start()
        except BaseException:
            self.stop()  # never leave tcpdump running behind a failed start
            raise

    def _await_start(self) -> "LoopbackCapture":
        assert self._proc is not None
        self._reader = threading.Thread(target=self._read_stderr, name="tcpdump-stderr", daemon=True)
        self._reader.start()
        if not self._listening.wait(self.start_timeout):
            raise CaptureError(f"tcpdump did not start listening within {self.start_timeout}s:\n{self.stderr}")
        if not any("listening on" in line for line in self._stderr_lines):  # stderr closed: it exited
            try:
                code: int | str = self._proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                code = f"{self._proc.wait(self.stop_timeout)} (killed)"
            self._reader.join(self.stop_timeout)
            hint = " (capturing needs root or CAP_NET_RAW)" if "ermission" in self.stderr or "not permitted" in self.stderr else ""
            raise CaptureError(f"tcpdump exited with {code}{hint}:\n{self.stderr}")
        if not self._await_probe(self.start_timeout, resend=True):
            raise CaptureError(f"tcpdump did not capture a probe on {self.interface} within {self.start_timeout}s:\n{self.stderr}")
        self._capturing = True
        return self

    def stop(self) -> None:
        """SIGINT (tcpdump flushes and closes the file), then SIGKILL if it does not exit in time."""
        if self._capturing and self._proc is not None and self._proc.poll() is None:
            self._await_probe(self.stop_timeout, resend=False)  # everything before it is written
        self._capturing = False
        proc, self._proc = self._proc, None
        self._close_sentinel()
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(self.stop_timeout)
        if self._reader is not None:
            self._reader.join(self.stop_timeout)
        if proc.stderr is not None:
            proc.stderr.close()

    def __enter__(self) -> "LoopbackCapture":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def packets(self) -> list[Packet]:
        """UDP datagrams captured so far (complete once the capture is stopped)."""
        if not self.path.exists():
            return []
        return [p for p in read_pcap(self.path) if not p.payload.startswith(b"loopback-capture-sentinel-")]

    def streams(self, dst_port: int | None = None) -> dict[tuple[str, int, int], RtpStream]:
        """RTP streams in the capture, optionally only those sent to ``dst_port``."""
        return rtp_streams(self.packets(), dst_port)
