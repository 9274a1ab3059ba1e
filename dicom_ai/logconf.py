"""Logging: one line per event, to stderr, with time, process and logger name.

Two rules keep the log safe to share with a vendor or paste into a ticket:

* **One event, one line.** Values a peer sent (UIDs, AE titles, file names inside messages) can
  hold control characters; they are written escaped (``\\n``, ``\\x1b``), so a peer cannot
  forge a log line or drive a terminal. A traceback stays multi-line, after the escaped message.
* **No patient data from libraries.** Python warnings are routed through logging (logger
  ``py.warnings``), and every quoted value in their text, and in what the DICOM libraries log
  themselves, is withheld: pydicom and highdicom quote the offending value, which is often a
  Patient's Name or ID (e.g. highdicom's ``The string "..." is unlikely to represent the
  intended person name``). The category, the text around the value and where it was raised
  are kept, on one line.
"""

from __future__ import annotations

import logging
import os
import re
import sys

#: C0 and C1 control characters, DEL, and the Unicode line and paragraph separators
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: a quoted value in a warning's text: "...", '...' or “...”
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'|\u201c[^\u201d]*\u201d")
WITHHELD = '"(withheld)"'
#: loggers whose messages may quote values of a data set
LIBRARY_LOGGERS = ("py.warnings", "pydicom", "highdicom", "pynetdicom")
FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def escape_control(text: str) -> str:
    """``text`` with every control character written as a Python escape (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def redact_quoted(text: str) -> str:
    """``text`` with every quoted value replaced by ``"(withheld)"``."""
    return _QUOTED.sub(WITHHELD, text)


class OneLineFormatter(logging.Formatter):
    """A :class:`logging.Formatter` that escapes control characters in the message (its
    arguments included) and withholds quoted values in what :data:`LIBRARY_LOGGERS` log."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        message = record.getMessage()
        if record.name.split(".")[0] in LIBRARY_LOGGERS or record.name == "py.warnings":
            message = redact_quoted(message)
        record.message = escape_control(message)
        return super().formatMessage(record)


def _warning_line(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    """``warnings.formatwarning`` without the source line (it can quote a value too)."""
    return f"{os.path.basename(filename)}:{lineno}: {category.__name__}: {message}"


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once (level from ``DICOM_AI_LOG_LEVEL``, default INFO).

    Installs :class:`OneLineFormatter` on a stderr handler and routes Python warnings through
    logging (:func:`logging.captureWarnings`), so they obey the same rules.
    """
    level = level or os.environ.get("DICOM_AI_LOG_LEVEL", "INFO")
    root = logging.getLogger()
    if not any(getattr(h, "_dicom_ai", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(OneLineFormatter(FORMAT))
        handler._dicom_ai = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    import warnings

    warnings.formatwarning = _warning_line
    logging.captureWarnings(True)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # a tick still running when the next is due is skipped on purpose (max_instances=1)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # logs every module it copies at INFO
