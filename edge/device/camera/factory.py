"""Pick a FrameSource from its URI (config camera.source or --source)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2

from edge.core.config import CameraConfig
from edge.core.errors import InputError
from edge.device.camera.base import FrameSource
from edge.device.camera.images import ImageDirSource
from edge.device.camera.opencv import OpenCVSource, VideoFileSource

SCHEMES = "picamera2, v4l2:/dev/videoN, rtsp://…, rtsps://…, gst:<pipeline>, file:PATH, dir:PATH"


def make_source(uri: str, cfg: CameraConfig | None = None) -> FrameSource:
    """The source for `uri`, not yet opened (the grabber opens, and reopens it after failures)."""
    cfg = cfg or CameraConfig()
    size_props = {
        cv2.CAP_PROP_FRAME_WIDTH: float(cfg.width),
        cv2.CAP_PROP_FRAME_HEIGHT: float(cfg.height),
        cv2.CAP_PROP_FPS: float(cfg.fps),
    }
    if uri == "picamera2":
        from edge.device.camera.picam import Picamera2Source

        return Picamera2Source(cfg.width, cfg.height, cfg.fps, cfg.format)
    if uri.startswith("v4l2:"):
        dev = uri[len("v4l2:") :]
        if not dev:
            raise InputError(f"{uri!r}: v4l2 source needs a device, e.g. v4l2:/dev/video0")
        target: str | int = int(dev) if dev.isdigit() else dev
        return OpenCVSource(target, cv2.CAP_V4L2, uri, size_props)
    if uri.startswith(("rtsp://", "rtsps://")):
        # Without timeouts a dead stream blocks read() for FFmpeg's default 30 s; this way a stall
        # surfaces as a failure after camera.stall_timeout_s and the grabber reconnects.
        ms = int(cfg.stall_timeout_s * 1000)
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms,
            cv2.CAP_PROP_N_THREADS, cfg.decode_threads,
        ]  # fmt: skip
        return OpenCVSource(uri, cv2.CAP_FFMPEG, _redact(uri), open_params=params)
    if uri.startswith("gst:"):
        pipeline = uri[len("gst:") :].strip()
        if not pipeline:
            raise InputError(f"{uri!r}: gst source needs a pipeline ending in appsink")
        if not re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()):
            raise InputError(f"{uri[:40]!r}: this OpenCV has no GStreamer (on Jetson use the system OpenCV)")
        return OpenCVSource(pipeline, cv2.CAP_GSTREAMER, "gst")
    if uri.startswith("file:"):
        path = Path(uri[len("file:") :]).expanduser()
        if not path.is_file():
            raise InputError(f"{uri}: video file not found")
        return VideoFileSource(path, realtime=cfg.realtime, loop=cfg.loop, decode_threads=cfg.decode_threads)
    if uri.startswith("dir:"):
        path = Path(uri[len("dir:") :]).expanduser()
        if not path.is_dir():
            raise InputError(f"{uri}: image directory not found")
        return ImageDirSource(path, fps=cfg.fps, realtime=cfg.realtime, loop=cfg.loop)
    raise InputError(f"{uri!r}: unknown camera source (expected {SCHEMES})")


def open_source(uri: str, camera_cfg: CameraConfig | None = None) -> FrameSource:
    """make_source() then open(): a bad file or URI fails here with one clear line."""
    src = make_source(uri, camera_cfg)
    src.open()
    return src


def _redact(uri: str) -> str:
    """rtsp://user:pass@host/… → rtsp://***@host/… so credentials never reach the logs."""
    scheme, _, rest = uri.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}://***@{host}" if at and creds else uri
