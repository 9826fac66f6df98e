"""Image files in, RGB uint8 out: the one reader for stills (enrolment, eval, dir: replays, benches).

Decoding goes through the file's bytes (np.fromfile + imdecode) rather than cv2.imread, so a
path OpenCV cannot open (non-ASCII on some builds) still reads; colour images come back as
C-contiguous RGB, the pipeline's one channel order.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.core.errors import InputError
from edge.core.types import U8


def decode_rgb(path: str | Path) -> U8 | None:
    """The image at `path` as HxWx3 RGB uint8, or None when it is missing or cannot be decoded."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        return None
    rgb: U8 = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return rgb


def read_rgb(path: str | Path) -> U8:
    """Like decode_rgb, but an unreadable file is one clear error naming it."""
    rgb = decode_rgb(path)
    if rgb is None:
        raise InputError(f"{path}: cannot read or decode image")
    return rgb
