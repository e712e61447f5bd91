"""Logging set-up: text for people, JSON lines for log watchers, and a count of errors by
logger for the metrics endpoint (an operator alerts on errors without reading the log)."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

# Loggers are named by code, so there are few; the cap only guards against a name built from data.
MAX_ERROR_LABELS = 100
OTHER_LOGGER = "other"


class JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "event", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class ErrorCounter(logging.Handler):
    """Counts records at ERROR or above by logger name; any thread may log, any thread may read."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held
        name = record.name if record.name in self._counts or len(self._counts) < MAX_ERROR_LABELS else OTHER_LOGGER
        self._counts[name] = self._counts.get(name, 0) + 1

    def counts(self) -> dict[str, int]:
        with self.lock:  # type: ignore[union-attr]  # createLock() always sets it
            return dict(self._counts)


def setup_logging(level: str = "info", fmt: str = "text", file: Path | None = None) -> ErrorCounter:
    """Route every log record to stderr or `file`, and count errors; returns the counter."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    # Log lines carry what peers sent (pjsip logs a refused packet whole), bytes that are not UTF-8
    # included: escape them, as stderr does, rather than lose the line to a "Logging error".
    handler: logging.Handler = (logging.FileHandler(file, encoding="utf-8", errors="backslashreplace") if file
                                else logging.StreamHandler(sys.stderr))
    if fmt == "json":
        handler.setFormatter(JsonLinesFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s",
                                      "%Y-%m-%d %H:%M:%S")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root.addHandler(handler)
    errors = ErrorCounter()
    root.addHandler(errors)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    return errors
