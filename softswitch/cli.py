"""The `softswitch` command: run the server, check a config, show a running server's status, print the version."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from . import __version__
from .config import Config, ConfigError, load_config, with_overrides

if TYPE_CHECKING:
    from .sip.endpoint import UserAgent

log = logging.getLogger("softswitch")

EXIT_CONFIG = 2
EXIT_STARTUP = 3


def _load(args: argparse.Namespace) -> Config:
    config = load_config(Path(args.config) if args.config else None)
    if args.set:
        overrides: dict[str, object] = {}
        for pair in args.set:
            key, sep, raw = pair.partition("=")
            if not sep or not key.strip():
                raise SystemExit(f"error: --set expects KEY=VALUE, got {pair!r}")
            overrides[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        try:
            config = with_overrides(config, overrides)
        except KeyError as exc:
            raise SystemExit(f"error: --set: unknown setting {exc.args[0]!r}") from None
    return config


def _load_with_flows(args: argparse.Namespace):
    """The config and every flow it activates; raises ConfigError or FlowError."""
    from .flow.loader import load_flows
    config = _load(args)
    return config, load_flows(config.flows)


def cmd_check(args: argparse.Namespace) -> int:
    from .flow.model import FlowError
    try:
        config, _ = _load_with_flows(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except FlowError as exc:
        # Every problem of every file, as FILE:LINE: node NAME: message.
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return EXIT_CONFIG
    source = args.config or "built-in default config"
    print(f"{source}: OK ({len(config.flows)} flow files)")
    records = config.records.in_state(config.directories.state)
    print(f"call records: {records.call_records or 'off'}; queue events: {records.queue_events or 'off'}")
    return 0


def cmd_import_n8n(args: argparse.Namespace) -> int:
    """Convert an exported n8n workflow into a flow file (stdout, or -o FILE)."""
    from .flow.n8n import N8nImportError, import_workflow_file
    try:
        text = import_workflow_file(args.workflow)
    except N8nImportError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .flow.model import FlowError
    try:
        config, flows = _load_with_flows(args)
    except (ConfigError, FlowError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG

    from .log import setup_logging
    errors = setup_logging(config.logging.level, config.logging.format, config.logging.file)

    from .flow.welcome import WelcomeHandler
    from .sip.endpoint import StartupError, UserAgent

    record_dir = config.directories.recordings if args.record else None

    # The operator endpoint binds before SIP starts, so a taken port fails fast; it serves once the UA runs.
    http = None
    if config.metrics.http_address is not None:
        from .ops.http import MetricsListenError, OpsHttpServer
        try:
            http = OpsHttpServer(config.metrics.http_address)
        except MetricsListenError as exc:
            log.error("%s", exc)
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_STARTUP
    metrics = None

    def handler_factory(ua: UserAgent):
        nonlocal metrics
        if http is not None:  # on the UA thread, before any call: every leg is counted
            from .ops.metrics import Metrics
            metrics = Metrics(ua, errors)
            ua.watch_legs(metrics)
        if flows:
            from .flow.runtime import FlowEngine
            return FlowEngine(ua, flows)
        return WelcomeHandler(ua, config.directories.prompts / "welcome.wav", record_dir)

    ua = UserAgent(config, handler_factory)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        ua.request_stop()

    # SIGHUP only raises a flag: flows are loaded on this (main) thread, off the UA loop, then
    # handed over. Installed before start so an early SIGHUP never kills the process.
    reload_requested = threading.Event()
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reload_requested.set())
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        ua.start()
    except StartupError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        if http is not None:
            http.stop()
        return EXIT_STARTUP
    if http is not None and metrics is not None:
        http.serve(ua, metrics)
    log.info("ready")
    try:
        while not ua.wait_stopped(0.2):
            if reload_requested.is_set():
                reload_requested.clear()
                config = _reload_flows(args, config, ua)
    finally:
        if http is not None:
            http.stop()  # before the UA: no request waits on a thread that is going away
    ua.stop()
    return 0


def _reload_flows(args: argparse.Namespace, config: Config, ua: "UserAgent") -> Config:
    """SIGHUP: load the config's flow files again and hand them to the UA thread.

    New calls use the new flows; running executions keep theirs. If anything fails to load,
    every error is logged and the current flows stay. Only `flows:` is applied: other settings
    need a restart. Returns the config now in force."""
    from .flow.model import FlowError
    source = args.config or "built-in default config"
    log.info("received SIGHUP: reloading the flows of %s", source)
    try:
        new_config, flows = _load_with_flows(args)
    except ConfigError as exc:
        log.error("reload failed, keeping the current flows: %s", exc)
        return config
    except FlowError as exc:
        plural = "" if len(exc.issues) == 1 else "s"
        log.error("reload failed (%d error%s), keeping the current flows:", len(exc.issues), plural)
        for issue in exc.issues:
            log.error("  %s", issue)
        return config
    if dataclasses.replace(new_config, flows=config.flows) != config:
        log.warning("reload: settings other than flows changed in %s; they take effect at the next restart",
                    source)

    def apply() -> None:  # on the UA thread, which owns the call handler
        from .flow.runtime import FlowEngine
        handler = ua.handler
        if isinstance(handler, FlowEngine):
            if not flows:
                log.error("reload refused: the config lists no flow files; keeping the %d current flows "
                          "(restart to go back to the built-in welcome handler)", len(handler.flows))
                return
            handler.reload(flows)
        elif flows:
            # Started without flows: calls in progress finish with the welcome handler.
            engine = FlowEngine(ua, [])
            engine.reload(flows)
            ua.handler = engine
        else:
            log.info("reload: still no flow files; the built-in welcome handler stays")

    ua.call_soon(lambda: ua.guard("flow reload", apply))
    return dataclasses.replace(config, flows=new_config.flows)


def cmd_status(args: argparse.Namespace) -> int:
    """Ask a running softswitch for its /status: a short summary, or the JSON with --json."""
    import json
    import socket
    import urllib.error
    import urllib.request
    if args.url:
        base = args.url.rstrip("/")
        where = base
    else:
        try:
            config = _load(args)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_CONFIG
        address = config.metrics.http_address
        if address is None:
            source = args.config or "the built-in default config"
            print(f"metrics.http_listen is off in {source}, so softswitch serves no status; set it "
                  f"(e.g. 127.0.0.1:9100) or pass --url", file=sys.stderr)
            return 1
        host, port = address
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # a wildcard bind is reached locally
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        base = f"http://{where}"
    try:
        with urllib.request.urlopen(base + "/status", timeout=args.timeout) as response:
            doc = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        print(f"{where} answered {exc.code} {exc.reason} for /status; is it softswitch?", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, (TimeoutError, socket.timeout)):
            why = f"no answer within {args.timeout:g} s"
        else:
            why = str(getattr(reason, "strerror", None) or reason)
        print(f"softswitch is not running at {where} ({why}); is `metrics.http_listen` set?", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"{where} answered /status with something that is not JSON ({exc}); is it softswitch?",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(_status_summary(doc, where))
    return 0


def _status_summary(doc: dict, where: str) -> str:
    """A few lines an operator reads at a glance."""
    if "counts" not in doc:
        return f"softswitch at {where}: the UA thread is not answering (no snapshot yet)"
    counts, regs, overload = doc["counts"], doc["registrations"], doc["overload"]
    up = int(doc.get("uptimeSeconds", 0))
    lines = [f"softswitch {doc.get('version', '?')} at {where}, up {up // 3600}h{up % 3600 // 60:02d}m{up % 60:02d}s"
             + (" (STALE: the UA thread is busy; last known figures)" if doc.get("stale") else "")]
    by = ", ".join(f"{direction} {transport} {n}" for direction, per in counts["legsActiveBy"].items()
                   for transport, n in per.items()) or "none"
    lines.append(f"calls: {counts['inboundCallsActive']} inbound active; legs: {counts['legsActive']} ({by}); "
                 f"AI legs {counts['aiLegsActive']}; answered {counts['callsAnswered']}, ended {counts['legsEnded']}")
    exts = ", ".join(regs["extensions"]) or "none"
    lines.append(f"registrations: {regs['bindings']} bindings; extensions online: {exts}")
    for trunk in doc.get("trunks", []):
        if trunk["register"]:
            state = "registered" if trunk["registered"] else f"NOT registered ({trunk['lastCode']} {trunk['lastReason']})"
            lines.append(f"trunk {trunk['connection']}: {state}")
    queues = doc.get("queues", [])
    lines.append("queues:" if queues else "queues: none")
    for q in queues:
        stats = q["stats"]
        lines.append(f"  {q['ref']} ({q['flow']}): {q['waiting']} waiting, longest {q['longestWaitSeconds']:.0f} s, "
                     f"{q['callbacksPending']} callbacks pending; {stats['completedCount']} answered, "
                     f"average wait {stats['averageWaitSeconds']:.0f} s")
    recordings = doc.get("recordings")
    if recordings:
        last = recordings.get("lastFailure")
        if recordings.get("failing") and last:
            lines.append(f"recordings: FAILING since {last['path']} ({last['owner']}): {last['error']}; "
                         f"{recordings['failures']} failed so far")
        else:
            lines.append(f"recordings: ok ({counts.get('recordingsActive', 0)} active, "
                         f"{recordings['failures']} failed so far)")
    refused = ", ".join(f"{k} {v}" for k, v in overload["refusals"].items() if v) or "none"
    if overload.get("overloaded") is None:
        state = "no overload monitor"
    else:
        state = f"OVERLOADED ({overload['reason']})" if overload["overloaded"] else "ok"
    lag = doc.get("loopLag", {}).get("recentMaxMs", 0)
    lines.append(f"overload: {state}; cpu {doc.get('cpuPercent', 0):.0f} %, loop lag {lag:.0f} ms; "
                 f"refused: {refused}; errors logged: {counts['errors']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softswitch",
        description="A SIP call-centre softswitch: registrar, trunks, flows, queues, recording, AI voice legs.")
    parser.add_argument("--version", action="version", version=f"softswitch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", metavar="FILE", help="YAML config file (default: the built-in config)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one setting, e.g. --set sip.udp_port=5070 (repeatable)")

    run = sub.add_parser("run", help="start the server (SIGINT/SIGTERM stop it gracefully; SIGHUP reloads flows)")
    common(run)
    run.add_argument("--record", action="store_true",
                     help="record every call to directories.recordings (built-in welcome handler)")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="show a running softswitch's calls, registrations, queues and load "
                                           "(read from metrics.http_listen)")
    common(status)
    status.add_argument("--url", metavar="URL", help="where softswitch serves HTTP, e.g. http://127.0.0.1:9100 "
                                                     "(default: metrics.http_listen of the config)")
    status.add_argument("--json", action="store_true", help="print the /status JSON as it is")
    status.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="how long to wait (default 5)")
    status.set_defaults(func=cmd_status)

    check = sub.add_parser("check", help="validate the config and flows without starting SIP")
    common(check)
    check.set_defaults(func=cmd_check)

    n8n = sub.add_parser("import-n8n", help="convert an exported n8n workflow (SIP PBX nodes) into a flow file")
    n8n.add_argument("workflow", metavar="WORKFLOW.json", help="the n8n workflow export")
    n8n.add_argument("--output", "-o", metavar="OUT.yaml", help="write the flow here (default: standard output)")
    n8n.set_defaults(func=cmd_import_n8n)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
