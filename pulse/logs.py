"""Structured logging: one line per event, `key=value` (logfmt) by default, JSON on request.

Callers pass the event as a short constant message and its context as keyword fields, so the
lines can be grepped and parsed without regular expressions:

    log = get_logger("collector")
    log.warning("scrape failed", sandbox_id=sid, reason="timeout")
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_FIELDS_ATTR = "pulse_fields"
ROOT_LOGGER = "pulse"


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\\\n\t') and text.isprintable():
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={_timestamp(record)}",
            f"level={record.levelname.lower()}",
            f"logger={record.name.removeprefix(ROOT_LOGGER + '.')}",
            f"msg={_logfmt_value(record.getMessage())}",
        ]
        fields: dict[str, Any] = getattr(record, _FIELDS_ATTR, {})
        parts.extend(f"{key}={_logfmt_value(value)}" for key, value in fields.items())
        if record.exc_info:
            parts.append(f"exc={_logfmt_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name.removeprefix(ROOT_LOGGER + "."),
            "msg": record.getMessage(),
        }
        fields: dict[str, Any] = getattr(record, _FIELDS_ATTR, {})
        line.update(
            {
                key: value if isinstance(value, int | float | bool) else str(value)
                for key, value in fields.items()
            }
        )
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class KvLogger:
    """A thin wrapper over a stdlib logger that takes context as keyword fields."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, msg: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, msg, exc_info=exc_info, extra={_FIELDS_ATTR: fields})

    def debug(self, msg: str, **fields: Any) -> None:
        self._log(logging.DEBUG, msg, False, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._log(logging.INFO, msg, False, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._log(logging.WARNING, msg, False, fields)

    def error(self, msg: str, *, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, msg, exc_info, fields)

    def is_enabled_for(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)


def get_logger(name: str) -> KvLogger:
    return KvLogger(logging.getLogger(f"{ROOT_LOGGER}.{name}"))


LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure(level: str, json_format: bool, stream: TextIO | None = None) -> None:
    """Install the one handler of the `pulse` logger tree; called once by the CLI."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else LogfmtFormatter())
    root = logging.getLogger(ROOT_LOGGER)
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    root.propagate = False
