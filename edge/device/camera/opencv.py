"""Thin OpenCV adapters: V4L2 devices, RTSP streams, GStreamer pipelines (Jetson), video files.

OpenCV hands out BGR; the conversion to RGB happens here, once, so no stage has to guess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2

from edge.core.errors import InputError
from edge.core.types import U8
from edge.device.camera.base import FrameSource, Pacer, SourceFailure


class OpenCVSource(FrameSource):
    """A live capture through cv2.VideoCapture (v4l2:, rtsp://, gst:)."""

    live = True

    def __init__(
        self,
        target: str | int,
        api: int,
        name: str,
        props: dict[int, float] | None = None,
        open_params: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.target = target
        self.api = api
        self.name = name
        self.props = props or {}
        self.open_params = open_params or []
        self._cap: Any = None

    def open(self) -> None:
        self.close()
        cap = (
            cv2.VideoCapture(self.target, self.api, self.open_params)
            if self.open_params
            else cv2.VideoCapture(self.target, self.api)
        )
        if not cap.isOpened():
            cap.release()
            raise SourceFailure(f"{self.name}: cannot open camera")
        for prop, value in self.props.items():
            cap.set(prop, value)
        # A 1-frame driver buffer keeps the grabber's frame fresh instead of seconds old.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._cap = cap

    def _grab(self) -> U8 | None:
        if self._cap is None:
            raise SourceFailure(f"{self.name}: not open")
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise SourceFailure(f"{self.name}: camera stopped delivering frames")
        return self._to_rgb(bgr)

    @staticmethod
    def _to_rgb(img: Any) -> U8:
        if img.ndim == 2:
            out: U8 = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        elif img.shape[2] == 4:
            out = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        else:
            out = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return out

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class VideoFileSource(OpenCVSource):
    """file:PATH — mp4/avi replay; ends at EOF unless looping; optionally paced at the file's fps."""

    live = False

    def __init__(self, path: Path, realtime: bool = False, loop: bool = False, decode_threads: int = 1) -> None:
        super().__init__(str(path), cv2.CAP_FFMPEG, f"file:{path}", open_params=[cv2.CAP_PROP_N_THREADS, decode_threads])
        self.path = path
        self.realtime = realtime
        self.loop = loop
        self._pacer = Pacer(None)

    def open(self) -> None:
        self.close()
        if not self.path.is_file():
            raise InputError(f"{self.name}: video file not found")
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG, self.open_params)
        if not cap.isOpened():
            cap.release()
            raise InputError(f"{self.name}: cannot decode this file as video (mp4/avi expected)")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        # Pace only at a plausible rate: some containers report 0 or a timebase such as 90000.
        self._pacer = Pacer(fps if self.realtime and 0.0 < fps < 1000.0 else None)
        self._cap = cap

    def _grab(self) -> U8 | None:
        if self._cap is None:
            raise InputError(f"{self.name}: not open")
        ok, bgr = self._cap.read()
        if (not ok or bgr is None) and self.loop and self._seq >= 0:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        self._pacer.wait()
        return self._to_rgb(bgr)
