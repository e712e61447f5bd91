"""Call-centre test actors and evidence shared by the queue and demo suites: tone pcaps, agent
phones that register and answer, and what the server logged (queue events, node runs, times)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.actors import register_phone, uas_answer, uas_no_answer
from tests.support.audio import dominant_frequency, tone
from tests.support.pcap import write_rtp_pcap
from tests.support.ports import free_port

AGENT_HZ = 1000


def pcap_of(tmp_path: Path, name: str, freq: float, seconds: float, dtmf=()) -> Path:
    """An RTP pcap of a tone, with RFC 2833 digits (digit, at_s, ms). Name it apart from captures."""
    path = tmp_path / f"{name}.pcap"
    write_rtp_pcap(path, tone(freq, seconds), dtmf=list(dtmf))
    return path


def agent(server, tmp_path: Path, extension: str = "1001", *, answer: bool = True, calls: int = 1,
          timeout_s: float = 60, seconds: float = 60, **kw: Any):
    """An agent's phone: REGISTER `extension` with digest, then answer with 1 kHz (or ring until
    cancelled) on the registered port. Returns the unstarted answering Sipp."""
    port = free_port("both")
    result = register_phone(f"127.0.0.1:{server.sip_port}", extension, port)
    assert result.ok, str(result)
    trace = tmp_path / f"agent-{extension}-{port}"
    if answer:
        return uas_answer(pcap_of(tmp_path, f"agent{extension}", AGENT_HZ, seconds), local_port=port, calls=calls,
                          timeout_s=timeout_s, trace_dir=trace, **kw)
    return uas_no_answer(local_port=port, calls=calls, timeout_s=timeout_s, trace_dir=trace, **kw)


def received(cap, port: int) -> np.ndarray:
    """Every RTP stream a LoopbackCapture saw towards `port`, decoded and joined."""
    streams = [s for s in cap.streams().values() if s.dst[1] == port]
    return np.concatenate([s.audio() for s in streams]) if streams else np.zeros(0, np.int16)


def heard(audio: np.ndarray, freq: float, window: int = 4000) -> bool:
    """Whether some half-second window of `audio` is dominated by `freq`."""
    return any(abs(dominant_frequency(audio[i:i + window], 8000) - freq) < 8
               for i in range(0, max(1, len(audio) - window), window // 2))


def queue_events(server, branch: str | None = None, ref: str = r"queue_\w+") -> list[tuple[str, dict]]:
    """The Queue trigger emissions the server logged, in order, as (branch, payload)."""
    found = re.findall(rf"queue ({ref}): (Placed|Dispatch|Offline) (\{{.*\}})$", server.text(), flags=re.M)
    return [(b, ast.literal_eval(p)) for _, b, p in found if branch is None or b == branch]


def ran(server, node: str) -> int:
    """How many times the flows ran a node (the engine's debug line)."""
    return len(re.findall(rf": node {re.escape(node)} \(", server.text()))


def log_time(text: str, needle: str, nth: int = 0) -> float:
    """When the `nth` log line containing `needle` was written (seconds of the day)."""
    lines = [line for line in text.splitlines() if needle in line]
    h, m, s = re.search(r"(\d{2}):(\d{2}):(\d{2}\.\d{3})", lines[nth]).groups()
    return int(h) * 3600 + int(m) * 60 + float(s)


def no_errors(server) -> None:
    """No ERROR line and no traceback in the server's log (the assertion shows them, with context)."""
    lines = server.text().splitlines()
    bad = [i for i, line in enumerate(lines) if " ERROR " in line or line.startswith("Traceback")]
    assert not bad, "\n".join("\n".join(lines[i:i + 12]) for i in bad[:3])


def json_lines(path: Path) -> list[dict]:
    """Every object of a JSON-lines file (call records, queue events), in order; [] if absent."""
    import json
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
