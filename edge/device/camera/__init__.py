"""Frame sources (picamera2, V4L2, RTSP, GStreamer, video files, image folders) and the grabber."""

from edge.device.camera.base import FrameSource, SourceFailure
from edge.device.camera.factory import make_source, open_source
from edge.device.camera.grabber import LatestFrameGrabber

__all__ = ["FrameSource", "LatestFrameGrabber", "SourceFailure", "make_source", "open_source"]
