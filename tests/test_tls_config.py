"""TLS and SRTP settings: bad certificate files are config errors with their line, checked before
SIP starts; bindings made over TLS are called over TLS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from softswitch.config import ConfigError, load_config
from softswitch.sip.registrar import Binding

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """A throwaway certificate and key, made with the openssl CLI (never committed)."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def config_file(tmp_path: Path, cert: object, key: object, extra: str = "") -> Path:
    path = tmp_path / "softswitch.yaml"
    path.write_text("sip:\n"
                    "  udp_port: 5070\n"
                    "  tls_port: 5071\n"
                    "  tls:\n"
                    f"    certificate: {cert}\n"
                    f"    private_key: {key}\n" + extra)
    return path


def only_issue(path: Path):
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.issues) == 1, str(info.value)
    return info.value.issues[0]


def test_a_valid_pair_loads_and_tls_is_off_by_default(tmp_path, pair):
    cert, key = pair
    config = load_config(config_file(tmp_path, cert, key))
    assert config.sip.tls_port == 5071 and config.sip.tls.certificate == cert
    default = load_config(None)
    assert default.sip.tls_port == 0 and default.sip.tls.certificate is None  # `make run` needs no certificate


@pytest.mark.parametrize("which, line", [("cert", 5), ("key", 6)])
def test_a_missing_file_is_an_error_on_its_line(tmp_path, pair, which, line):
    cert, key = pair
    missing = tmp_path / "nope.pem"
    issue = only_issue(config_file(tmp_path, missing if which == "cert" else cert, missing if which == "key" else key))
    assert issue.line == line and "file not found" in issue.message and str(missing) in issue.message


def test_a_file_that_is_not_pem_is_an_error_on_its_line(tmp_path, pair):
    cert, key = pair
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"\x30\x82\x01\x0a binary DER, not PEM")
    issue = only_issue(config_file(tmp_path, junk, key))
    assert (issue.line, issue.key) == (5, "sip.tls.certificate") and "not a PEM file" in issue.message


def test_a_key_that_is_not_the_certificates_is_an_error(tmp_path, pair):
    cert, _ = pair
    other = tmp_path / "other.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-out", str(other)], check=True, capture_output=True, timeout=30)
    issue = only_issue(config_file(tmp_path, cert, other))
    assert (issue.line, issue.key) == (6, "sip.tls.private_key") and "together" in issue.message


def test_tls_port_without_a_certificate_and_verify_client_without_cas(tmp_path):
    path = tmp_path / "softswitch.yaml"
    path.write_text("sip:\n  tls_port: 5061\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    keys = {i.key for i in info.value.issues}
    assert keys == {"sip.tls.certificate", "sip.tls.private_key"}
    assert all(i.line == 2 for i in info.value.issues), str(info.value)


def test_verify_client_needs_a_ca_list(tmp_path, pair):
    issue = only_issue(config_file(tmp_path, *pair, "    verify_client: true\n"))
    assert issue.key == "sip.tls.verify_client" and issue.line == 7


def test_srtp_settings_and_their_mistakes(tmp_path):
    path = tmp_path / "softswitch.yaml"
    path.write_text("extension_sets:\n  internal: {srtp: mandatory}\n"
                    "extension_users:\n  internal: [{username: '1', password: p, extension: '1'}]\n"
                    "trunks:\n  t: {address: 127.0.0.1, srtp: optional}\n")
    config = load_config(path)
    assert config.extension_sets["internal"].srtp == "mandatory" and config.trunks["t"].srtp == "optional"
    path.write_text("trunks:\n  t: {address: 127.0.0.1, srtp: off}\n")  # YAML reads off as a boolean
    issue = only_issue(path)
    assert (issue.line, issue.key) == (2, "trunks.t.srtp")
    path.write_text("extension_sets:\n  sales: {srtp: optional}\n")
    issue = only_issue(path)
    assert (issue.line, issue.key) == (2, "extension_sets.sales") and "no extension_users set" in issue.message
    path.write_text("connections:\n  p:\n    sip_server: 127.0.0.1\n    transport: tls\n")
    issue = only_issue(path)
    assert (issue.line, issue.key) == (4, "connections.p.transport") and "sip.tls_port" in issue.message


def test_softswitch_check_reports_the_bad_file_with_its_line(tmp_path, pair):
    path = config_file(tmp_path, tmp_path / "missing.crt", pair[1])
    done = subprocess.run([sys.executable, "-m", "softswitch", "check", "--config", str(path)], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert done.returncode == 2, done
    assert f"{path}:5: sip.tls.certificate: file not found" in done.stdout + done.stderr


@pytest.mark.parametrize("contact, transport, nat, expected", [
    ("sip:1001@127.0.0.1:5555;transport=tls", "TLS", False, "sip:1001@127.0.0.1:5555;transport=tls"),
    ("sip:1001@127.0.0.1:5555", "TLS", False, "sip:1001@127.0.0.1:5555;transport=tls"),
    ("sips:1001@127.0.0.1:5555", "TLS", False, "sips:1001@127.0.0.1:5555"),
    ("sip:1001@127.0.0.1:5555", "UDP", False, "sip:1001@127.0.0.1:5555"),
    ("sip:1001@10.0.0.5:5555;ob", "TLS", True, "sip:1001@127.0.0.1:40001;transport=tls;ob"),
])
def test_bindings_made_over_tls_are_called_over_tls(contact, transport, nat, expected):
    b = Binding(username="1001", extension="1001", group="internal", contact=contact, expires=60,
                source_ip="127.0.0.1", source_port=40001, transport=transport, nat=nat, user_agent="", call_id="x")
    assert b.target_uri == expected
