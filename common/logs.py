"""One log line per record, whatever a file name or a payload puts into it.

A file dropped as ``x.jpg\\n2026-01-01 ERROR trapedge: FORGED`` or a device id holding ANSI escapes
would otherwise write a forged line, or repaint the operator's terminal, through any message that
names it. ``SafeFormatter`` escapes control characters (newlines, carriage returns, escapes, the C1
range and Unicode line separators) and the lone surrogates of a file name that is not UTF-8 in the
message; a traceback keeps its own line breaks, with everything else in it escaped.
"""

from __future__ import annotations

import logging
import re
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# control characters, Unicode line breaks, and lone surrogates: Python's stand-ins for the bytes of a file name that
# is not UTF-8 (b"\xff.jpg" is "\udcff.jpg"), which no UTF-8 stream can write (printing one raised UnicodeEncodeError)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_CONTROL_KEEP_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}" if ord(char) < 256
                                                        else f"\\u{ord(char):04x}")


def escape_controls(text: str, keep_newlines: bool = False) -> str:
    """``text`` with its control characters written as escapes (``\\n``, ``\\x1b``...)."""
    return (_CONTROL_KEEP_NEWLINE if keep_newlines else _CONTROL).sub(_escape, text)


class SafeFormatter(logging.Formatter):
    """A formatter whose message can never span lines or carry terminal escapes."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        safe = logging.makeLogRecord(record.__dict__)
        safe.message = escape_controls(record.getMessage())
        return super().formatMessage(safe)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return escape_controls(super().formatException(ei), keep_newlines=True)

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return escape_controls(super().formatStack(stack_info), keep_newlines=True)


def setup_logging(level: int | str = logging.INFO) -> None:
    """Log to stderr, one safe line per record (the services' set-up)."""
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])  # a no-op where logging is set up already (tests)


def quiet_after_disconnect(record: logging.LogRecord) -> bool:
    """A filter for paho's logger: its network thread runs once more between ``disconnect()`` and
    ``loop_stop()`` and logs "Client is not connected" as an error; at a clean stop that is
    expected, so it becomes a debug record."""
    if record.levelno >= logging.ERROR and "Client is not connected" in record.getMessage():
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
    return True
