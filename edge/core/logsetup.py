"""Log lines to stderr (stdout is for a command's data); level and format from config.

Under systemd (JOURNAL_STREAM names the stream stderr is connected to) each line starts with the
sd-daemon priority prefix (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), so journald files
each line at its level instead of everything at info.

Never a face image, an embedding or anything about a non-matching person in a log line: the
formatter only renders the message and whitelisted scalar extras, and refuses bytes/arrays.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, TextIO

from edge.core.timefmt import format_utc

_STD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def _safe(value: Any) -> Any:
    # Bytes and arrays could carry a face or a template; they are replaced, never printed.
    if isinstance(value, (bytes, bytearray, memoryview)) or hasattr(value, "__array__"):
        return f"<{type(value).__name__} withheld>"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _safe(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "t": format_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STD and not k.startswith("_"):
                out[k] = _safe(v)
        if record.exc_info and record.levelno >= logging.ERROR:
            out["exc"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={_safe(v)}" for k, v in vars(record).items() if k not in _STD and not k.startswith("_")
        )
        return f"{record.levelname:<7} {record.name}: {record.getMessage()}" + (f" {extras}" if extras else "")


# sd-daemon(3) priorities: journald reads a leading <N> on each line as that line's syslog level.
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (info for anything between info and warning)."""
    for floor, prio in _PRIORITY:
        if levelno >= floor:
            return prio
    return 7


def under_journald(stream: TextIO | None = None) -> bool:
    """True when `stream` (default stderr) is the journal stream systemd gave this process.

    systemd sets JOURNAL_STREAM to "<device>:<inode>" of that stream; comparing it with the stream's
    own identity keeps the prefix out of a file or pipe the output was redirected to.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    target = stream if stream is not None else sys.stderr
    try:
        st = os.fstat(target.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to stderr (looked up at each record, so a redirected sys.stderr is honoured), with the
    journald priority prefix on every line when stderr is the journal stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stderr)
        super().emit(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not under_journald(self.stream):
            return text
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


def say(message: str, level: int = logging.ERROR) -> None:
    """Lines for a person on stderr (`error: …`, `warning: …`, progress), prefixed with `level`'s
    journald priority when stderr is the journal."""
    prefix = f"<{priority(level)}>" if under_journald(sys.stderr) else ""
    for line in message.split("\n"):
        print(prefix + line, file=sys.stderr)
    sys.stderr.flush()


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    # paho and PIL are chatty at DEBUG and may dump payload bytes; keep them at INFO.
    for noisy in ("paho", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
