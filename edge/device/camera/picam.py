"""picamera2 — the Raspberry Pi CSI camera. Imported lazily so other platforms never need it.

Not exercised by the test suite (no CSI camera here); kept deliberately tiny.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.core.errors import InputError
from edge.core.types import U8
from edge.device.camera.base import FrameSource, SourceFailure


class Picamera2Source(FrameSource):
    live = True
    name = "picamera2"

    def __init__(self, width: int, height: int, fps: float, fmt: str) -> None:
        super().__init__()
        self.size = (width, height)
        self.fps = fps
        self.format = fmt
        self._cam: Any = None

    def open(self) -> None:
        self.close()
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise InputError(
                "picamera2: module not installed (Raspberry Pi OS: apt install python3-picamera2 and a "
                "venv with --system-site-packages; setup.sh does this)"
            ) from None
        try:
            cam = Picamera2()
            # libcamera's "RGB888" is BGR in memory and "XRGB8888" is BGRA: both are reordered below.
            main = {"size": self.size, "format": self.format}
            controls = {"FrameRate": self.fps}
            cam.configure(cam.create_video_configuration(main=main, controls=controls, buffer_count=2))
            cam.start()
        except Exception as e:  # libcamera raises a variety of errors for a missing/busy camera
            raise SourceFailure(f"picamera2: cannot start camera ({e})") from None
        self._cam = cam

    def _grab(self) -> U8 | None:
        if self._cam is None:
            raise SourceFailure("picamera2: not open")
        try:
            arr = self._cam.capture_array("main")
        except Exception as e:
            raise SourceFailure(f"picamera2: capture failed ({e})") from None
        if self.format == "YUV420":
            import cv2

            rgb: U8 = cv2.cvtColor(arr, cv2.COLOR_YUV2RGB_I420)
            return rgb
        return np.ascontiguousarray(arr[:, :, 2::-1])

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            finally:
                self._cam = None
