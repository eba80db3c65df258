"""Log lines cannot be forged or repaint a terminal through a file name or a payload."""

import logging

from common.logs import SafeFormatter, escape_controls


def _line(message, *args, exc_info=None):
    record = logging.LogRecord("trapedge", logging.WARNING, __file__, 1, message, args, exc_info)
    return SafeFormatter("%(levelname)s %(name)s: %(message)s").format(record)


def test_a_file_name_cannot_forge_a_log_line():
    name = "x.jpg\n2026-11-26 12:00:00,000 ERROR trapedge: FORGED LOG LINE\r"
    line = _line("skipping %s", name)
    assert "\n" not in line and "\r" not in line
    assert line == "WARNING trapedge: skipping x.jpg\\n2026-11-26 12:00:00,000 ERROR trapedge: FORGED LOG LINE\\r"


def test_terminal_escapes_and_unicode_line_breaks_are_written_out():
    line = _line("device %s", "cam\x1b[2J\x1b[31mred\u2028\x85")
    assert line == "WARNING trapedge: device cam\\x1b[2J\\x1b[31mred\\u2028\\x85"
    assert escape_controls("tab\tok") == "tab\\tok"


def test_a_file_name_that_is_not_utf8_is_written_out_and_can_be_printed():
    """Its bytes are lone surrogates in Python, which no UTF-8 stream accepts: printing one was a traceback."""
    import os

    escaped = escape_controls(os.fsdecode(b"b\xff.jpg"))
    assert escaped == "b\\udcff.jpg" and escaped.encode("utf-8") == b"b\\udcff.jpg"


def test_a_traceback_keeps_its_lines_but_not_a_forged_one():
    try:
        raise ValueError("bad\x1b[31m name")
    except ValueError as exc:
        line = _line("failed", exc_info=(type(exc), exc, exc.__traceback__))
    assert line.startswith("WARNING trapedge: failed\nTraceback")
    assert "\x1b" not in line and "\\x1b[31m" in line
