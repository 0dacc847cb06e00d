"""Log output: one JSON event per line for machines, a readable line on a terminal, never a secret.

`configure()` installs one handler on the root logger; uvicorn's and arq's loggers propagate to it,
so every line of the process has the same shape and passes the same redaction. Both formatters
redact the final text (JSON: every value before it is encoded), which is what makes redaction hold
whatever a caller passes: message, arguments, `extra` fields or an exception.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from hub.observability import context
from hub.observability.redaction import Redactor

REDACTOR = Redactor()
UVICORN_ACCESS = "uvicorn.access"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", UVICORN_ACCESS, "uvicorn.asgi")
# Attributes every LogRecord has; anything else on a record came in through `extra`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colours
}
_CORE = ("time", "level", "logger", "message")


def _fields(record: logging.LogRecord, redactor: Redactor) -> dict[str, Any]:
    """The request/peer/job context, then the record's `extra` fields, all redacted."""
    fields: dict[str, Any] = dict(context.current())
    attributes = vars(record)
    if extra := attributes.keys() - _RECORD_ATTRIBUTES:  # most records have none
        fields.update((k, v) for k, v in attributes.items() if k in extra and not k.startswith("_"))
    if not fields:
        return {}
    redacted: dict[str, Any] = redactor.value({k: v for k, v in fields.items() if k not in _CORE})
    return redacted


class JsonFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor = REDACTOR) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redactor.text(record.getMessage()),
            **_fields(record, self.redactor),
        }
        if record.exc_info:
            event["exception"] = self.redactor.text(self.formatException(record.exc_info))
        if record.stack_info:
            event["stack"] = self.redactor.text(self.formatStack(record.stack_info))
        return json.dumps(event, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor = REDACTOR) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {record.getMessage()}"
        fields = _fields(record, self.redactor)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return self.redactor.text(line)


class _HubHandler(logging.StreamHandler[TextIO]):
    """Marks the handler `configure()` installed, so configuring again replaces only it."""


def configure(
    *,
    level: str = "INFO",
    fmt: Literal["auto", "json", "text"] = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route all logging through one redacting handler; `auto` is text on a terminal, else JSON."""
    stream = stream or sys.stderr
    REDACTOR.register(secrets)
    as_json = fmt == "json" or (fmt == "auto" and not _isatty(stream))
    handler = _HubHandler(stream)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _HubHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    route_uvicorn_loggers()
    logging.captureWarnings(True)
    return handler


def route_uvicorn_loggers() -> None:
    """uvicorn installs its own handlers whenever a `uvicorn.Config` is made; send its lines to ours.
    Its access logger is cut off instead: uvicorn builds an access record whenever that logger has a
    handler, even for a line nobody keeps. hub/edge.py writes the access line (`hub.access`)."""
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = name != UVICORN_ACCESS


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
