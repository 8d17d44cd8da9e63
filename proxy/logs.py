"""Logging setup: one line per record on stderr, as text or JSON.

Conventions for code in this package:

* Get loggers with ``logging.getLogger("idemproxy.<component>")`` (for example
  ``idemproxy.server``), or ``proxy.logs.get_logger(__name__)``, which maps
  ``proxy.server.app`` to ``idemproxy.server.app``. Loggers under ``proxy.`` are
  configured too, so ``logging.getLogger(__name__)`` also works.
* Keep the message a short constant phrase and put the variable parts in ``extra``::

      log.warning("upstream lost", extra={"peer": "10.0.0.5:9092", "reason": "eof"})

  Text format renders them as ``key=value`` after the message::

      2026-11-26T15:00:00.123Z WARNING idemproxy.server: upstream lost peer=10.0.0.5:9092 reason=eof

  JSON format writes one object per line with ``ts``, ``level``, ``logger``, ``msg``
  and the ``extra`` fields (plus ``exc`` when there is a traceback). Extra keys must
  not clash with :class:`logging.LogRecord` attributes (``name``, ``msg``, ``args``,
  ``message``... which logging itself rejects or silently misuses); an extra key
  equal to ``ts``, ``level`` or ``logger`` is written as ``extra_<key>``.

:func:`configure` also routes warnings and errors of other libraries (asyncio,
aiokafka) through the same handler, so every line on stderr has one format.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Literal

__all__ = ["LEVELS", "LOGGER_NAME", "configure", "get_logger"]

LOGGER_NAME = "idemproxy"
_PACKAGE_LOGGER_NAME = "proxy"

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_CORE_JSON_KEYS = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})
_BARE_VALUE_RE = re.compile(r'[^\s"=\\]+')


def get_logger(module_name: str) -> logging.Logger:
    """The ``idemproxy.*`` logger for a module (``proxy.x.y`` -> ``idemproxy.x.y``)."""
    if module_name == _PACKAGE_LOGGER_NAME or module_name.startswith(_PACKAGE_LOGGER_NAME + "."):
        module_name = LOGGER_NAME + module_name[len(_PACKAGE_LOGGER_NAME) :]
    return logging.getLogger(module_name)


def _timestamp(record: logging.LogRecord) -> str:
    when = datetime.fromtimestamp(record.created, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"


def _extra_fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED}


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if _BARE_VALUE_RE.fullmatch(text):
        return text
    return json.dumps(text)


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger>: <message> key=value ...`` (traceback on following lines)."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, f"{record.name}:", record.getMessage()]
        parts.extend(f"{k}={_text_value(v)}" for k, v in _extra_fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the extra fields, exc, stack."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extra_fields(record).items():
            data[f"extra_{key}" if key in _CORE_JSON_KEYS else key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure(level: str, fmt: Literal["text", "json"]) -> None:
    """Send ``idemproxy.*`` records at ``level`` and up to stderr in format ``fmt``.

    Other libraries' records reach stderr from WARNING up (or from ``level`` if that
    is higher). Calling it again replaces the previous setup.
    """
    try:
        threshold = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; expected one of {list(LEVELS)}") from None
    formatter: logging.Formatter
    if fmt == "text":
        formatter = TextFormatter()
    elif fmt == "json":
        formatter = JsonFormatter()
    else:
        raise ValueError(f"unknown log format {fmt!r}; expected 'text' or 'json'")

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(max(threshold, logging.WARNING))
    for name in (LOGGER_NAME, _PACKAGE_LOGGER_NAME):
        logger = logging.getLogger(name)
        logger.setLevel(threshold)
        logger.propagate = True
