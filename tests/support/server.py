"""Starting softswitch for tests and benchmarks: a real `softswitch run` process on free ports,
or an in-process UserAgent whose call handler a test can swap."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.ports import free_port, free_port_block

REPO = Path(__file__).resolve().parents[2]


def sample_key(name: str, labels: dict[str, str]) -> str:
    """A sample as `name{label="v",...}` with its labels in name order (as prometheus_client writes them)."""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}" if labels else name


def write_test_config(tmp: Path, **sections: dict) -> Path:
    """A config file for a test: free SIP and RTP ports on 127.0.0.1, directories under `tmp`.

    Keyword arguments are top-level sections merged over those defaults."""
    sip_port = free_port("both")
    doc: dict = {
        "sip": {"listen_address": "127.0.0.1", "udp_port": sip_port, "tcp_port": sip_port,
                "rtp_port_start": free_port_block(400, "udp"), "rtp_port_count": 400},
        "directories": {"prompts": str(REPO / "prompts"), "recordings": str(tmp / "recordings"),
                        "state": str(tmp / "state")},
        "logging": {"level": "info"},
        # Calls from 127.0.0.1 (SIPp callers) arrive as calls from trunk_main, as in the default.
        "trunks": {"trunk_main": {"address": "127.0.0.1", "port": 0}},
        "extension_users": {"internal": [
            {"username": n, "password": f"pass{n}", "extension": n} for n in ("1001", "1002", "1003")]},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    path = tmp / "softswitch.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def sip_options_ok(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """Whether a SIP server answers an OPTIONS on UDP host:port with 200 (readiness probe)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        sock.settimeout(timeout)
        local = sock.getsockname()[1]
        tag = uuid.uuid4().hex[:10]
        msg = (f"OPTIONS sip:probe@{host}:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {host}:{local};branch=z9hG4bK{tag};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:probe@{host}>;tag={tag}\r\nTo: <sip:probe@{host}>\r\n"
               f"Call-ID: {tag}@{host}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        sock.sendto(msg.encode(), (host, port))
        try:
            data = sock.recv(65535)
        except OSError:
            return False
        return data.startswith(b"SIP/2.0 200")


@dataclass
class ServerProcess:
    """A running `softswitch run`. Its output is collected; `stop()` is bounded."""

    config: Path | None  # None: the built-in default config (give `port` and --set overrides)
    extra_args: list[str] = field(default_factory=list)
    port: int | None = None
    # Where the server serves /metrics and /status: read from the config file, or for the built-in
    # default (whose 127.0.0.1:9100 may be taken) moved to a free port unless --set gives one.
    metrics_port: int | None = None
    proc: subprocess.Popen | None = None
    output: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    @property
    def sip_port(self) -> int:
        if self.config is None:
            assert self.port is not None, "a server on the built-in config needs its port"
            return self.port
        return int(yaml.safe_load(self.config.read_text())["sip"]["udp_port"])

    @property
    def rtp_ports(self) -> range:
        sip = yaml.safe_load(self.config.read_text())["sip"]
        return range(sip["rtp_port_start"], sip["rtp_port_start"] + sip["rtp_port_count"])

    def _metrics_args(self) -> list[str]:
        if self.config is not None:
            listen = (yaml.safe_load(self.config.read_text()).get("metrics") or {}).get("http_listen")
            if listen:
                self.metrics_port = int(str(listen).rsplit(":", 1)[1])
            return []
        if any(a.startswith("metrics.http_listen=") for a in self.extra_args):
            given = next(a for a in self.extra_args if a.startswith("metrics.http_listen="))
            value = given.partition("=")[2]
            self.metrics_port = int(value.rsplit(":", 1)[1]) if value not in ("", "null") else None
            return []
        self.metrics_port = self.metrics_port or free_port("tcp")
        return ["--set", f"metrics.http_listen=127.0.0.1:{self.metrics_port}"]

    def start(self, timeout: float = 20.0) -> "ServerProcess":
        config = [] if self.config is None else ["--config", str(self.config)]
        cmd = [sys.executable, "-m", "softswitch", "run", *config, *self._metrics_args(), *self.extra_args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not sip_options_ok(self.sip_port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("softswitch did not become ready:\n" + self.text())
            time.sleep(0.05)
        self._ready.set()
        return self

    def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.output.append(line)

    def text(self) -> str:
        return "".join(self.output)

    # ---- the operator endpoint (metrics.http_listen) ------------------------------------------
    @property
    def http_url(self) -> str:
        assert self.metrics_port is not None, "this server has no metrics.http_listen"
        return f"http://127.0.0.1:{self.metrics_port}"

    def http_get(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        """(status, body) of a GET on the operator endpoint; error statuses are returned, not raised."""
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=timeout) as response:
                return response.status, response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")

    def status(self) -> dict:
        """GET /status as a dict."""
        code, body = self.http_get("/status")
        assert code == 200, (code, body)
        return json.loads(body)

    def metrics(self) -> dict[str, float]:
        """GET /metrics as {'name{label="v",...}': value}, parsed, labels in name order."""
        code, body = self.http_get("/metrics")
        assert code == 200, (code, body)
        return {sample_key(s.name, s.labels): s.value
                for family in text_string_to_metric_families(body) for s in family.samples}

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait (bounded); SIGKILL if it hangs. Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
