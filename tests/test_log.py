"""Logs as JSON lines carry what a log watcher needs, and errors are counted by logger for metrics."""

from __future__ import annotations

import json
import logging
import time

import pytest

from softswitch.log import MAX_ERROR_LABELS, OTHER_LOGGER, ErrorCounter, setup_logging


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_lines_carry_time_level_logger_message_and_exception(tmp_path, restore_root_logging):
    path = tmp_path / "softswitch.log"
    setup_logging("info", "json", path)
    before = time.time()
    logging.getLogger("softswitch.flow").warning("node %s failed", "answer", extra={"event": {"legId": "leg_1"}})
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("softswitch.ua").exception("error in callback")
    logging.getLogger("softswitch.ua").debug("below the level: not written")
    for h in logging.getLogger().handlers:
        h.flush()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert before - 1 <= first["ts"] <= time.time() + 1
    assert (first["level"], first["logger"], first["msg"], first["legId"]) == (
        "warning", "softswitch.flow", "node answer failed", "leg_1")
    assert "exc" not in first
    assert (second["level"], second["logger"], second["msg"]) == ("error", "softswitch.ua", "error in callback")
    assert "Traceback" in second["exc"] and "ValueError: bad value" in second["exc"]


def test_setup_logging_counts_errors_by_logger_whatever_the_format(tmp_path, restore_root_logging):
    errors = setup_logging("warning", "text", tmp_path / "text.log")
    logging.getLogger("softswitch.flow").error("one")
    logging.getLogger("softswitch.flow").critical("two")
    logging.getLogger("softswitch.ua").error("three")
    logging.getLogger("softswitch.ua").warning("not an error")
    assert errors.counts() == {"softswitch.flow": 2, "softswitch.ua": 1}


def test_error_labels_are_capped():
    counter = ErrorCounter()
    log = logging.getLogger("test_log.capped")
    log.propagate = False
    log.addHandler(counter)
    try:
        for i in range(MAX_ERROR_LABELS + 5):
            logging.getLogger(f"test_log.capped.n{i}").error("x")
    finally:
        log.removeHandler(counter)
    counts = counter.counts()
    assert len(counts) == MAX_ERROR_LABELS + 1 and counts[OTHER_LOGGER] == 5
