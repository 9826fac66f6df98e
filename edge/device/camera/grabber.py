"""Capture in its own thread, keeping only the freshest frame.

A live camera produces frames at its own pace whatever inference does; queueing them would make
every alert later and later. The grabber holds one slot: a new frame replaces an unconsumed one
(counted as dropped). Replays run lossless by default (each frame handed over in turn, so results
do not depend on CPU speed) unless paced in real time, when they behave like a camera.
"""

from __future__ import annotations

import logging
import threading
import time

from edge.core.errors import EdgeError
from edge.core.types import Frame
from edge.device.camera.base import FrameSource, SourceFailure

log = logging.getLogger("lfr_edge.camera")


class LatestFrameGrabber:
    def __init__(
        self,
        source: FrameSource,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        drop: bool | None = None,
    ) -> None:
        self.source = source
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        realtime = bool(getattr(source, "realtime", False))
        self.drop = source.live or realtime if drop is None else drop
        self.dropped = 0
        self.reconnects = 0
        self.captured = 0
        self.error: EdgeError | None = None  # fatal (non-reconnectable) error, re-raised by get()
        self.last_frame_mono = time.monotonic()
        self._slot: Frame | None = None
        self._ended = False
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lfr-capture", daemon=True)

    # -- consumer side -------------------------------------------------------------------------
    def start(self) -> LatestFrameGrabber:
        self._thread.start()
        return self

    def get(self, timeout: float = 0.2) -> Frame | None:
        """The freshest frame, or None after `timeout` (check `ended` to tell EOF from a stall)."""
        with self._cond:
            if self._slot is None and not self._ended:
                self._cond.wait(timeout)
            frame, self._slot = self._slot, None
            self._cond.notify_all()
            if frame is None and self.error is not None:
                raise self.error
            return frame

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._ended and self._slot is None

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> LatestFrameGrabber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- capture thread ------------------------------------------------------------------------
    def _put(self, frame: Frame) -> None:
        with self._cond:
            if not self.drop:
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait(0.1)
                if self._stop.is_set():
                    return  # stopping: the consumer will never take it, so it is not a drop
            if self._slot is not None:
                self.dropped += 1
            self._slot = frame
            self.captured += 1
            self.last_frame_mono = frame.t_mono
            self._cond.notify_all()

    def _finish(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def _reconnect(self, reason: str) -> bool:
        """Close and reopen with capped exponential backoff; False if stopped meanwhile."""
        delay = self.reconnect_initial_s
        while not self._stop.is_set():
            log.warning("%s: %s; reconnecting in %.1f s", self.source.name, reason, delay)
            self.source.close()
            if self._stop.wait(delay):
                return False
            try:
                self.source.open()
            except SourceFailure as e:
                reason = str(e)
                delay = min(delay * 2.0, self.reconnect_max_s)
                continue
            self.reconnects += 1
            log.info("%s: reconnected (%d so far)", self.source.name, self.reconnects)
            return True
        return False

    def _run(self) -> None:
        try:
            opened = False
            while not self._stop.is_set():
                if not opened:
                    try:
                        self.source.open()
                        opened = True
                    except SourceFailure as e:
                        if not self._reconnect(str(e)):
                            return
                        opened = True
                try:
                    frame = self.source.read()
                except SourceFailure as e:
                    if not self.source.live or not self._reconnect(str(e)):
                        if not self.source.live:
                            self.error = e
                        return
                    continue
                if frame is None:
                    return  # end of a replay
                self._put(frame)
        except EdgeError as e:
            self.error = e
        except Exception as e:  # keep the consumer from waiting forever on a dead thread
            log.exception("capture thread failed")
            self.error = SourceFailure(f"{self.source.name}: capture failed ({type(e).__name__}: {e})")
        finally:
            self.source.close()
            self._finish()
