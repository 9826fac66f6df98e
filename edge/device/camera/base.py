"""The one frame-source contract: open / read / close, RGB uint8 frames with seq and timestamps.

A source numbers the frames it produced itself, so downstream gaps in `seq` are frames the
grabber dropped (never frames the camera failed to deliver, which are a reconnect instead).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np

from edge.core.errors import RuntimeFailure
from edge.core.types import U8, Frame


class SourceFailure(RuntimeFailure):
    """A live source stopped delivering; the grabber reconnects with backoff."""


class FrameSource(ABC):
    """Chosen by URI (see edge.device.camera.factory). `live` sources reconnect; replays end at EOF."""

    live: bool = True
    name: str = "source"

    def __init__(self) -> None:
        self._seq = -1

    @abstractmethod
    def open(self) -> None:
        """(Re)open the device or file; raises InputError (bad URI/file) or SourceFailure (device down)."""

    @abstractmethod
    def _grab(self) -> U8 | None:
        """Next RGB uint8 HxWx3 image, None at the end of a replay; SourceFailure when a live source fails."""

    @abstractmethod
    def close(self) -> None:
        """Release the device; safe to call twice and before open()."""

    def read(self) -> Frame | None:
        image = self._grab()
        if image is None:
            return None
        if not image.flags.c_contiguous:
            image = np.ascontiguousarray(image)
        self._seq += 1
        return Frame(seq=self._seq, t_mono=time.monotonic(), t_wall=time.time(), image=image)

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pacer:
    """Sleeps so that replays run at `fps` (real-time pacing), never catching up in bursts."""

    def __init__(self, fps: float | None) -> None:
        self.period = 1.0 / fps if fps and fps > 0 else 0.0
        self._next = 0.0

    def wait(self) -> None:
        if self.period <= 0.0:
            return
        now = time.monotonic()
        if self._next == 0.0 or now - self._next > self.period:  # first frame, or we fell behind
            self._next = now
        elif self._next > now:
            time.sleep(self._next - now)
        self._next += self.period
