"""`serve()`: run the appliance (edge.device.appliance) once, as `lfr-edge run` and the tests do.

Kept as the one-call entry point; the appliance object itself owns the wiring, the typed status,
the control socket and the ordered stop.
"""

from __future__ import annotations

import threading

from edge.core.config import Config
from edge.device.appliance import Appliance, ServiceResult
from edge.device.camera.base import FrameSource
from edge.device.pipeline import EventSink
from edge.device.sdnotify import Notifier

__all__ = ["ServiceResult", "serve"]


def serve(
    cfg: Config,
    source: str | FrameSource | None = None,
    *,
    max_frames: int | None = None,
    stop: threading.Event | None = None,
    extra_sinks: tuple[EventSink, ...] = (),
    notifier: Notifier | None = None,
) -> ServiceResult:
    """Run the whole appliance until `stop` is set, the replay ends, or `max_frames` frames."""
    app = Appliance(cfg, source, stop=stop, notifier=notifier, extra_sinks=extra_sinks, max_frames=max_frames)
    return app.run()
