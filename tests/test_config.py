"""Config loading: the built-in default, validation errors with file and line, paths, secrets."""

from dataclasses import replace
from pathlib import Path
from textwrap import dedent

import pytest

from softswitch.config import (
    REPO_FLOWS_DIR,
    ConfigError,
    MissingSecretError,
    SipConfig,
    default_config_text,
    load_config,
    replace_path,
    with_overrides,
)


def write_config(tmp_path: Path, text: str, name: str = "softswitch.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text))
    return path


def load_issues(path: Path):
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    return raised.value


def test_builtin_default_loads_with_documented_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None)

    assert config.sip.listen_address == "127.0.0.1"
    assert config.sip.contact_address == "127.0.0.1"
    assert (config.sip.udp_port, config.sip.tcp_port) == (5060, 5060)
    assert (config.sip.rtp_port_start, config.sip.rtp_port_count, config.sip.max_calls) == (20000, 4000, 1000)
    assert config.media.codecs == ["PCMU", "PCMA", "G722", "telephone-event"]
    assert config.media.clock_rate == 8000
    users = config.extension_users["internal"]
    assert [(u.username, u.password, u.extension) for u in users] == [
        ("1001", "pass1001", "1001"),
        ("1002", "pass1002", "1002"),
        ("1003", "pass1003", "1003"),
    ]
    trunk = config.trunks["trunk_main"]
    assert (trunk.name, trunk.address, trunk.port, trunk.connection) == ("trunk_main", "127.0.0.1", 0, None)
    assert config.connections == {}
    assert config.flows == [REPO_FLOWS_DIR / "full-demo.yaml"]  # the assembled demo
    # The built-in default has no directory of its own: its directories follow the working directory.
    assert config.directories.prompts == tmp_path / "prompts"
    assert config.directories.recordings == tmp_path / "recordings"
    assert config.directories.state == tmp_path / "state"
    assert (config.logging.level, config.logging.format, config.logging.file) == ("info", "text", None)
    assert config.metrics.http_listen == "127.0.0.1:9100"  # `softswitch status` works out of the box
    limits = config.limits
    assert (limits.max_concurrent_calls, limits.max_calls_per_second, limits.max_cpu_percent,
            limits.max_loop_lag_ms, limits.retry_after_seconds) == (500, 100, 0, 500, 5)
    assert limits.max_concurrent_calls * 2 <= config.sip.max_calls  # room for an agent leg per caller


def test_default_config_text_is_the_shipped_file_and_loads_the_same(tmp_path, monkeypatch):
    text = default_config_text()
    assert "trunk_main:" in text and "pass1003" in text
    monkeypatch.chdir(tmp_path)
    (tmp_path / "full-demo.yaml").symlink_to(REPO_FLOWS_DIR / "full-demo.yaml")
    copied = load_config(write_config(tmp_path, text))
    builtin = load_config(None)
    # A copy's flow paths resolve against its own directory, the built-in's against flows/.
    assert copied.flows == [tmp_path / "full-demo.yaml"] and builtin.flows == [REPO_FLOWS_DIR / "full-demo.yaml"]
    assert replace(copied, flows=[]) == replace(builtin, flows=[])


def test_builtin_default_flows_resolve_against_repo_flows_dir():
    assert REPO_FLOWS_DIR == Path(__file__).resolve().parent.parent / "flows"
    assert all(path.is_file() for path in load_config(None).flows)


def test_unknown_key_and_wrong_type_are_both_reported_with_file_and_line(tmp_path):
    path = write_config(
        tmp_path,
        """\
        sip:
          listen_address: 127.0.0.1
          udp_prot: 5061
          tcp_port: "5060"
        """,
    )
    error = load_issues(path)

    assert [(i.file, i.line, i.key) for i in error.issues] == [
        (str(path), 3, "sip.udp_prot"),
        (str(path), 4, "sip.tcp_port"),
    ]
    assert "did you mean 'udp_port'?" in error.issues[0].message
    assert "expected an integer" in error.issues[1].message
    assert f"{path}:3: sip.udp_prot: unknown key" in str(error)
    assert f"{path}:4: sip.tcp_port: expected an integer" in str(error)


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        pytest.param("sip:\n  udp_port: 70000\n", 2, "sip.udp_port", "out of range (0..65535)", id="port-range"),
        pytest.param("sip:\n  udp_port: -1\n", 2, "sip.udp_port", "out of range", id="negative-port"),
        pytest.param("sip:\n  tcp_port: true\n", 2, "sip.tcp_port", "got the boolean", id="bool-is-not-int"),
        pytest.param("sip:\n  max_calls: 2000\n", 2, "sip.max_calls", "1..1024", id="max-calls"),
        pytest.param("sip:\n  rtp_port_start: 20001\n", 2, "sip.rtp_port_start", "must be even", id="rtp-odd"),
        pytest.param("security:\n  tcp_request_timeout_seconds: -1\n", 2, "security.tcp_request_timeout_seconds",
                     "out of range", id="tcp-timeout-negative"),
        pytest.param("security:\n  tcp_max_connections_per_source: lots\n", 2,
                     "security.tcp_max_connections_per_source", "expected an integer", id="tcp-limit-not-int"),
        pytest.param("sip:\n  listen_address: localhost\n", 2, "sip.listen_address", "IPv4 or IPv6", id="bind-ip"),
        pytest.param(
            "logging:\n  format: text\n  level: verbose\n",
            3,
            "logging.level",
            "not one of: debug, info, warning, error",
            id="bad-enum",
        ),
        pytest.param("media:\n  clock_rate: 44100\n", 2, "media.clock_rate", "one of: 8000, 16000", id="int-enum"),
        pytest.param(
            "media:\n  codecs: [PCMU, pcma]\n", 2, "media.codecs[1]", "did you mean 'PCMA'?", id="codec-enum"
        ),
        pytest.param(
            "connections:\n  pbx:\n    port: 5070\n",
            2,
            "connections.pbx.sip_server",
            "required setting is missing",
            id="missing-required",
        ),
        pytest.param(
            "connections:\n  pbx:\n    sip_server: sip:pbx.example.com\n",
            3,
            "connections.pbx.sip_server",
            "bare host name",
            id="sip-server-host-only",
        ),
        pytest.param(
            "connections:\n  pbx:\n    sip_server: pbx\n    transport: sctp\n",
            4,
            "connections.pbx.transport",
            "not one of: udp, tcp, tls",
            id="transport-enum",
        ),
        pytest.param(
            "sip:\n  udp_port: 5060\n\tuser_agent: x\n", 3, "", "YAML syntax error", id="yaml-syntax"
        ),
        pytest.param(
            "sip:\n  udp_port: 5060\n  user_agent: x\n  udp_port: 5062\n",
            4,
            "sip.udp_port",
            "duplicate key (first on line 2)",
            id="duplicate-key",
        ),
        pytest.param("- sip\n- media\n", 1, "", "expected a mapping at the top, got a list", id="list-document"),
        pytest.param("just text\n", 1, "", "expected a mapping at the top", id="scalar-document"),
        pytest.param("# nothing but a comment\n", 1, "", "document is empty", id="empty-document"),
        pytest.param(
            "connections:\n  pbx: {sip_server: pbx.example.com}\ntrunks:\n  t1:\n    address: 10.0.0.1\n"
            "    connection: pbz\n",
            6,
            "trunks.t1.connection",
            "no connection named 'pbz' (connections: pbx)",
            id="trunk-unknown-connection",
        ),
        pytest.param("flows:\n  - missing.yaml\n", 2, "flows[0]", "file not found", id="missing-flow"),
        pytest.param(
            "sip:\n  rtp_port_start: 64000\n  rtp_port_count: 2000\n",
            3,
            "sip.rtp_port_count",
            "66000 is above 65536",
            id="rtp-overflow",
        ),
        pytest.param(
            # An out-of-range count is one error, not also an overflow computed from it.
            "sip:\n  rtp_port_start: 64000\n  rtp_port_count: 70000\n",
            3,
            "sip.rtp_port_count",
            "out of range (2..60000)",
            id="rtp-count-range-only",
        ),
        pytest.param(
            "sip:\n  udp_port: 0\n  tcp_port: 0\n", 2, "sip.udp_port", "enable at least one", id="no-transport"
        ),
        pytest.param(
            "extension_users:\n  internal:\n    - {username: '1001', password: a, extension: '1001'}\n"
            "    - {username: '1001', password: b, extension: '1002'}\n",
            4,
            "extension_users.internal[1].username",
            "duplicate username '1001'",
            id="duplicate-username",
        ),
        pytest.param(
            "extension_users:\n  internal:\n    - {username: 1001, password: a, extension: '1001'}\n",
            3,
            "extension_users.internal[0].username",
            'quote it: "1001"',
            id="unquoted-username",
        ),
        pytest.param(
            "ai:\n  providers:\n    openai:\n      api_key_env: OPENAI_API_KEY\n",
            3,
            "ai.providers.openai",
            "not one of: openai_realtime, gemini_live, generic",
            id="unknown-ai-profile",
        ),
        pytest.param(
            "metrics:\n  http_listen: '127.0.0.1'\n", 2, "metrics.http_listen", "host:port", id="metrics-address"
        ),
        pytest.param(
            "limits:\n  max_calls_per_second: 1.5\n", 2, "limits.max_calls_per_second", "expected an integer",
            id="float-is-not-int",
        ),
        pytest.param("sip: [5060]\n", 1, "sip", "expected a mapping, got a list", id="section-not-mapping"),
        pytest.param(
            "trunks:\n  t1: 5\n", 2, "trunks.t1", "expected a mapping, got the integer 5", id="entry-not-mapping"
        ),
        pytest.param(
            "extension_users:\n  internal: {username: a}\n",
            2,
            "extension_users.internal",
            "expected a list, got a mapping",
            id="user-set-not-list",
        ),
        pytest.param("sip:\n  5060: udp\n", 2, "sip.5060", "must be a string, not int", id="non-string-key"),
        pytest.param("media:\n  hold_music: missing.wav\n", 2, "media.hold_music", "hold music file not found",
                     id="hold-music-file"),
        pytest.param("media:\n  hold_music: 'tone:440/x'\n", 2, "media.hold_music", "neither a preset",
                     id="hold-music-tone"),
    ],
)
def test_each_invalid_config_gives_one_located_error(tmp_path, text, line, key, fragment):
    path = write_config(tmp_path, text)
    error = load_issues(path)

    assert len(error.issues) == 1, str(error)
    (issue,) = error.issues
    assert (issue.file, issue.line, issue.key) == (str(path), line, key)
    assert fragment in issue.message
    assert f"{path}:{line}: " in str(error)


def test_api_key_given_instead_of_a_variable_name_is_rejected_without_echoing_it(tmp_path):
    path = write_config(tmp_path, "ai:\n  providers:\n    generic:\n      api_key_env: sk-abc123\n")
    error = load_issues(path)

    assert [(i.line, i.key) for i in error.issues] == [(4, "ai.providers.generic.api_key_env")]
    assert "*name* of an environment variable" in error.issues[0].message
    assert "sk-abc123" not in str(error)


def test_all_errors_are_collected_in_one_run(tmp_path):
    path = write_config(
        tmp_path,
        """\
        sip:
          udp_port: 99999
        media:
          quality: 0
        logging:
          format: xml
        colour: blue
        """,
    )
    error = load_issues(path)
    assert [(i.line, i.key) for i in error.issues] == [
        (2, "sip.udp_port"),
        (4, "media.quality"),
        (6, "logging.format"),
        (7, "colour"),
    ]


def test_unreadable_file_is_a_config_error_naming_it(tmp_path):
    error = load_issues(tmp_path / "absent.yaml")
    assert error.issues[0].file == str(tmp_path / "absent.yaml")
    assert "cannot read config file" in str(error)


def test_empty_section_means_its_defaults(tmp_path):
    config = load_config(write_config(tmp_path, "sip:\nconnections:\nflows:\n"))
    assert config.sip == SipConfig()
    assert config.connections == {}
    assert config.flows == []


def test_default_directories_of_an_absent_section_resolve_against_the_file(tmp_path, monkeypatch):
    write_config(tmp_path / "etc", "sip: {udp_port: 5070}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc/softswitch.yaml"))
    assert config.directories.prompts == tmp_path / "etc" / "prompts"
    assert config.directories.state == tmp_path / "etc" / "state"


def test_relative_paths_resolve_against_the_config_files_directory(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc"
    (conf_dir / "flows").mkdir(parents=True)
    (conf_dir / "flows" / "main.yaml").write_text("{}\n")
    write_config(
        conf_dir,
        f"""\
        flows: [flows/main.yaml]
        directories:
          prompts: media/prompts
          recordings: {tmp_path / "rec"}
        logging:
          file: logs/softswitch.log
        """,
    )
    monkeypatch.chdir(tmp_path)  # somewhere else: the working directory must not matter

    config = load_config(Path("etc") / "softswitch.yaml")

    assert config.flows == [conf_dir / "flows" / "main.yaml"]
    assert config.directories.prompts == conf_dir / "media" / "prompts"
    assert config.directories.recordings == tmp_path / "rec"  # absolute stays as written
    assert config.directories.state == conf_dir / "state"  # the default, relative to the file too
    assert config.logging.file == conf_dir / "logs" / "softswitch.log"


def test_connection_fields_and_names(tmp_path):
    path = write_config(
        tmp_path,
        """\
        connections:
          carrier:
            sip_server: sip.example.com
            transport: tcp
            username: "4930123"
            password: secret
            register: true
            registration_expires: 3600
        trunks:
          from_carrier: {address: 192.0.2.10, port: 5060, connection: carrier}
        """,
    )
    config = load_config(path)
    carrier = config.connections["carrier"]
    assert (carrier.name, carrier.sip_server, carrier.port, carrier.transport) == (
        "carrier",
        "sip.example.com",
        5060,
        "tcp",
    )
    assert (carrier.username, carrier.register, carrier.registration_expires) == ("4930123", True, 3600)
    assert config.trunks["from_carrier"].connection == "carrier"


API_KEY_CONFIG = """\
ai:
  providers:
    openai_realtime:
      url: ws://127.0.0.1:9000/v1
      api_key_env: SOFTSWITCH_TEST_OPENAI_KEY
"""


def test_api_key_is_read_from_the_named_variable_at_use_time(tmp_path, monkeypatch):
    monkeypatch.delenv("SOFTSWITCH_TEST_OPENAI_KEY", raising=False)
    config = load_config(write_config(tmp_path, API_KEY_CONFIG))  # loads without the key
    provider = config.ai.provider("openai_realtime")
    assert provider.url == "ws://127.0.0.1:9000/v1"

    monkeypatch.setenv("SOFTSWITCH_TEST_OPENAI_KEY", "sk-test-value")
    assert provider.api_key() == "sk-test-value"


def test_missing_api_key_variable_is_named_in_the_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SOFTSWITCH_TEST_OPENAI_KEY", raising=False)
    provider = load_config(write_config(tmp_path, API_KEY_CONFIG)).ai.provider("openai_realtime")

    with pytest.raises(MissingSecretError, match="SOFTSWITCH_TEST_OPENAI_KEY"):
        provider.api_key()
    with pytest.raises(MissingSecretError, match="SOFTSWITCH_TEST_OPENAI_KEY"):
        provider.api_key(environ={"SOFTSWITCH_TEST_OPENAI_KEY": ""})


def test_provider_without_key_variable_and_unknown_profile(tmp_path):
    config = load_config(write_config(tmp_path, API_KEY_CONFIG))
    generic = config.ai.provider("generic")  # known profile, not configured: defaults
    assert (generic.url, generic.api_key_env) == (None, None)
    with pytest.raises(MissingSecretError, match=r"ai\.providers\.generic\.api_key_env"):
        generic.api_key(environ={})
    with pytest.raises(ValueError, match="unknown AI provider profile"):
        config.ai.provider("openai")


def test_replace_path_changes_one_setting_and_keeps_the_original(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None)

    changed = replace_path(config, "sip.udp_port", 5071)
    assert changed.sip.udp_port == 5071
    assert config.sip.udp_port == 5060
    assert changed.sip.tcp_port == 5060

    moved = replace_path(config, "trunks.trunk_main.port", 5099)
    assert moved.trunks["trunk_main"].port == 5099
    assert config.trunks["trunk_main"].port == 0

    both = with_overrides(config, {"sip.udp_port": 5072, "sip.tcp_port": 0, "directories.state": "run/state"})
    assert (both.sip.udp_port, both.sip.tcp_port) == (5072, 0)
    assert both.directories.state == tmp_path / "run" / "state"


def test_replace_path_validates_like_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None)

    with pytest.raises(ConfigError, match=r"sip\.udp_port: 70000 is out of range"):
        replace_path(config, "sip.udp_port", 70000)
    with pytest.raises(ConfigError, match="expected an integer"):
        replace_path(config, "sip.udp_port", "5071")
    with pytest.raises(ConfigError, match="enable at least one"):
        with_overrides(config, {"sip.udp_port": 0, "sip.tcp_port": 0})
    with pytest.raises(KeyError, match="udp_prt"):
        replace_path(config, "sip.udp_prt", 5071)


@pytest.mark.parametrize(("written", "mode"), [
    ("false", "off"), ("off", "off"), ("no", "off"), ("true", "supported"), ("supported", "supported"),
    ("required", "required"), ("always", "always"),
])
def test_session_timers_take_a_mode_or_the_old_boolean(tmp_path, written, mode):
    config = load_config(write_config(tmp_path, f"sip:\n  session_timers: {written}\n"))
    assert config.sip.session_timers == mode
    assert (config.sip.session_expires, config.sip.min_se) == (1800, 90)


def test_session_timer_errors_are_located(tmp_path):
    issues = load_issues(write_config(tmp_path, """\
        sip:
          session_timers: sometimes
          session_expires: 95
          min_se: 120
        """)).issues
    assert [(i.line, i.key) for i in issues] == [(2, "sip.session_timers"), (3, "sip.session_expires")]
    assert "off, supported, required, always" in issues[0].message
    assert "below min_se 120" in issues[1].message
    issues = load_issues(write_config(tmp_path, "sip:\n  min_se: 60\n")).issues
    assert [(i.line, i.key) for i in issues] == [(2, "sip.min_se")] and "90..86400" in issues[0].message
