"""A small SIP client for tests that need control SIPp scenarios make awkward: several contacts
in one REGISTER, chosen CSeq and Call-ID, SHA-256 digest, replayed nonce counts, raw or
malformed messages. It speaks real SIP over UDP or TCP on loopback."""

from __future__ import annotations

import hashlib
import re
import socket
import uuid
from dataclasses import dataclass, field


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: str
    raw: str

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def challenges(self) -> list[dict[str, str]]:
        out = []
        for value in self.all("WWW-Authenticate") + self.all("Proxy-Authenticate"):
            params = dict(re.findall(r'(\w+)="?([^",]*)"?', value.split(" ", 1)[1]))
            out.append(params)
        return out

    def contacts(self) -> list[str]:
        return self.all("Contact")


def _h(alg: str, text: str) -> str:
    fn = hashlib.sha256 if alg.upper() == "SHA-256" else hashlib.md5
    return fn(text.encode()).hexdigest()


@dataclass
class SipClient:
    """One SIP user agent bound to 127.0.0.1 (or another loopback address) on a free port."""

    server: tuple[str, int]
    transport: str = "udp"
    local_ip: str = "127.0.0.1"
    timeout: float = 2.0
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    cseq: int = 0
    nc: int = 0

    def __post_init__(self) -> None:
        if self.transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((self.local_ip, 0))
        else:
            self.sock = socket.create_connection(self.server, timeout=self.timeout,
                                                 source_address=(self.local_ip, 0))
        self.sock.settimeout(self.timeout)
        self.local_port = self.sock.getsockname()[1]
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "SipClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- messages ----------------------------------------------------------------------------
    def request(self, method: str, uri: str, *, from_user: str, to_user: str | None = None,
                headers: list[tuple[str, str]] = (), body: str = "", cseq: int | None = None,
                branch: str | None = None, to_tag: str | None = None) -> str:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        branch = branch or "z9hG4bK" + uuid.uuid4().hex[:16]
        host = f"{self.server[0]}"
        to_user = to_user or from_user
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.upper()} {self.local_ip}:{self.local_port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:{from_user}@{host}>;tag={self.call_id[:8]}",
            f"To: <sip:{to_user}@{host}>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            *[f"{k}: {v}" for k, v in headers],
            f"Content-Length: {len(body.encode())}",
            "", body,
        ]
        return "\r\n".join(lines)

    def send(self, message: str | bytes) -> None:
        data = message.encode() if isinstance(message, str) else message
        if self.transport == "udp":
            self.sock.sendto(data, self.server)
        else:
            self.sock.sendall(data)

    def receive(self, timeout: float | None = None) -> Response | None:
        """The next response (provisional ones included), or None on timeout."""
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            if self.transport == "udp":
                data = self.sock.recv(65535)
            else:
                while b"\r\n\r\n" not in self._buffer:
                    chunk = self.sock.recv(65535)
                    if not chunk:
                        return None
                    self._buffer += chunk
                head, _, rest = self._buffer.partition(b"\r\n\r\n")
                length = int((re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head) or [0, b"0"])[1])
                while len(rest) < length:
                    rest += self.sock.recv(65535)
                data, self._buffer = head + b"\r\n\r\n" + rest[:length], rest[length:]
        except (socket.timeout, TimeoutError):
            return None
        return parse_response(data.decode(errors="replace"))

    def final(self, timeout: float | None = None) -> Response | None:
        while True:
            resp = self.receive(timeout)
            if resp is None or resp.status >= 200:
                return resp

    # ---- dialogs ------------------------------------------------------------------------------
    def ack_and_bye(self, answer: Response, uri: str, *, from_user: str, to_user: str) -> Response | None:
        """ACK a 200 to our INVITE, then hang up with BYE; returns the BYE's final response."""
        to_tag = re.search(r";tag=([^;>\s]+)", answer.header("To") or "")
        tag = to_tag.group(1) if to_tag else None
        invite_cseq = int((answer.header("CSeq") or "1").split()[0])
        self.send(self.request("ACK", uri, from_user=from_user, to_user=to_user, cseq=invite_cseq, to_tag=tag))
        self.send(self.request("BYE", uri, from_user=from_user, to_user=to_user, to_tag=tag))
        return self.final()

    # ---- REGISTER with digest -----------------------------------------------------------------
    def register(self, user: str, password: str | None, *, contacts: list[str] | None = None,
                 expires: int | None = 3600, algorithm: str | None = None, realm: str | None = None,
                 auth_user: str | None = None, extra_headers: list[tuple[str, str]] = ()) -> Response:
        """REGISTER, answer the 401 with digest (choosing `algorithm` among the challenges, or
        the first offered), return the final response."""
        uri = f"sip:{self.server[0]}:{self.server[1]}"
        contacts = [f"<sip:{user}@{self.local_ip}:{self.local_port}>"] if contacts is None else contacts
        headers = [("Contact", c) for c in contacts] + list(extra_headers)
        if expires is not None:
            headers.append(("Expires", str(expires)))
        self.send(self.request("REGISTER", uri, from_user=user, headers=headers))
        first = self.final()
        if first is None or first.status != 401 or password is None:
            return first  # type: ignore[return-value]
        return self.answer_challenge("REGISTER", uri, first, user, password, headers=headers, algorithm=algorithm,
                                     realm=realm, auth_user=auth_user)

    def answer_challenge(self, method: str, uri: str, challenge: Response, user: str, password: str, *,
                         headers: list[tuple[str, str]], algorithm: str | None = None,
                         realm: str | None = None, auth_user: str | None = None, nc: int | None = None,
                         body: str = "", to_user: str | None = None, branch: str | None = None,
                         cseq: int | None = None) -> Response:
        offers = challenge.challenges()
        chosen = next((c for c in offers if algorithm is None or c.get("algorithm", "MD5").upper() == algorithm.upper()),
                      None)
        if chosen is None:
            raise AssertionError(f"no {algorithm} challenge in {offers}")
        auth = self.authorization(method, uri, chosen, auth_user or user, password, realm=realm, nc=nc)
        name = "Proxy-Authorization" if challenge.status == 407 else "Authorization"
        self.send(self.request(method, uri, from_user=user, to_user=to_user, headers=[*headers, (name, auth)],
                               body=body, branch=branch, cseq=cseq))
        return self.final()  # type: ignore[return-value]

    def authorization(self, method: str, uri: str, challenge: dict[str, str], user: str, password: str, *,
                      realm: str | None = None, nc: int | None = None) -> str:
        alg = challenge.get("algorithm", "MD5")
        realm = realm or challenge["realm"]
        if nc is None:
            self.nc += 1
            nc = self.nc
        ncs = f"{nc:08x}"
        cnonce = uuid.uuid4().hex[:12]
        ha1 = _h(alg, f"{user}:{realm}:{password}")
        ha2 = _h(alg, f"{method}:{uri}")
        response = _h(alg, f"{ha1}:{challenge['nonce']}:{ncs}:{cnonce}:auth:{ha2}")
        return (f'Digest username="{user}", realm="{realm}", nonce="{challenge["nonce"]}", uri="{uri}", '
                f'response="{response}", algorithm={alg}, cnonce="{cnonce}", qop=auth, nc={ncs}')


def parse_response(text: str) -> Response:
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    m = re.match(r"SIP/2\.0 (\d{3}) ?(.*)", lines[0])
    if not m:
        raise ValueError(f"not a SIP response: {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers.append((k.strip(), v.strip()))
    return Response(int(m.group(1)), m.group(2), headers, body, text)
