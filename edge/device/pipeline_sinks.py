"""Event sinks for the camera loop that need no broker: JSON lines (tests, replays) and a list.

The MQTT publisher (edge.device.publisher) implements the same `on_match(event)` protocol.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from pathlib import Path
from typing import IO, Any

from edge.core.types import MatchEvent


def event_record(event: MatchEvent, include_crop: bool = False) -> dict[str, Any]:
    m = event.match
    rec: dict[str, Any] = {
        "subject_id": m.subject.subject_id,
        "category": m.subject.category,
        "priority": m.subject.priority,
        "score": round(m.score, 4),
        "margin": round(m.margin, 4),
        "threshold": m.threshold,
        "track_id": event.track_id,
        "frame_seq": event.frame_seq,
        "time": event.t_wall,
        "camera": event.camera,
        "bbox": [round(v, 1) for v in event.bbox],
        "frames_fused": event.frames_fused,
        "watchlist_version": event.watchlist_version,
        "crop_bytes": len(event.crop_jpeg) if event.crop_jpeg else 0,
    }
    if include_crop and event.crop_jpeg:
        rec["crop_jpeg_b64"] = base64.b64encode(event.crop_jpeg).decode("ascii")
    return rec


class JsonlSink:
    """One JSON object per match, flushed at once (a reader tailing the file sees it immediately)."""

    def __init__(self, path: Path | str | None = None, include_crop: bool = False) -> None:
        self.include_crop = include_crop
        self._own = path is not None and str(path) != "-"
        self._fh: IO[str] = (
            open(path, "a", encoding="utf-8") if path is not None and self._own else sys.stdout  # noqa: SIM115
        )
        self._lock = threading.Lock()
        self.count = 0

    def on_match(self, event: MatchEvent) -> None:
        line = json.dumps(event_record(event, self.include_crop), separators=(",", ":"))
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()
            self.count += 1

    def close(self) -> None:
        if self._own:
            self._fh.close()


class ListSink:
    """Keeps events in memory (tests and the benchmark)."""

    def __init__(self) -> None:
        self.events: list[MatchEvent] = []

    def on_match(self, event: MatchEvent) -> None:
        self.events.append(event)
