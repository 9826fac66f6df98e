"""dir:PATH — a folder of still images replayed in sorted file-name order."""

from __future__ import annotations

from pathlib import Path

from edge.core.errors import InputError
from edge.core.imageio import decode_rgb
from edge.core.types import U8
from edge.device.camera.base import FrameSource, Pacer

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class ImageDirSource(FrameSource):
    live = False

    def __init__(
        self, path: Path, fps: float | None = None, realtime: bool = False, loop: bool = False
    ) -> None:
        super().__init__()
        self.path = path
        self.name = f"dir:{path}"
        self.fps = fps
        self.realtime = realtime
        self.loop = loop
        self._files: list[Path] = []
        self._i = 0
        self._pacer = Pacer(None)

    def open(self) -> None:
        if not self.path.is_dir():
            raise InputError(f"{self.name}: not a directory")
        self._files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise InputError(f"{self.name}: no images ({', '.join(IMAGE_SUFFIXES)}) in this directory")
        self._i = 0
        self._pacer = Pacer(self.fps if self.realtime else None)

    def _grab(self) -> U8 | None:
        if self._i >= len(self._files):
            if not self.loop or not self._files:
                return None
            self._i = 0
        path = self._files[self._i]
        self._i += 1
        rgb = decode_rgb(path)
        if rgb is None:
            raise InputError(f"{self.name}: cannot decode image {path.name}")
        self._pacer.wait()
        return rgb

    def close(self) -> None:
        self._files = []
        self._i = 0
