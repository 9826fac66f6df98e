"""Structured log lines to stdout (journald keeps them); level and format from config.

Never a face image, an embedding or anything about a non-matching person in a log line: the
formatter only renders the message and whitelisted scalar extras, and refuses bytes/arrays.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

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
            "t": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
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


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    # paho and PIL are chatty at DEBUG and may dump payload bytes; keep them at INFO.
    for noisy in ("paho", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
