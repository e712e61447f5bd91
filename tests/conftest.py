"""Shared fixtures: softswitch processes on free ports, and one in-process UserAgent."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.server import ServerProcess, write_test_config


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def server_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator:
    """Start `softswitch run` processes; every one is stopped when the test ends, and if the test
    failed, the tail of each server's log is attached to the report."""
    started: list[ServerProcess] = []

    def start(*, extra_args: list[str] | None = None, **sections: dict) -> ServerProcess:
        cfg = write_test_config(tmp_path, **sections)
        server = ServerProcess(cfg, extra_args or []).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for i, server in enumerate(started):
            report.sections.append((f"softswitch server {i} log (tail)", server.text()[-12000:]))


@pytest.fixture(scope="session")
def ua(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One in-process UserAgent for the session (pjsua is a process-wide singleton).

    Tests install their own call handler with `ua.handler = …` and must leave no calls up."""
    from softswitch.config import load_config
    from softswitch.sip.endpoint import UserAgent

    tmp = tmp_path_factory.mktemp("ua")
    config = load_config(write_test_config(tmp))
    agent = UserAgent(config)
    agent.start()
    yield agent
    agent.stop()
