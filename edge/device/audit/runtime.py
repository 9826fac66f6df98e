"""One object for the service to hold: the audit log, its hooks, and the deployment record at stop.

    audit = ServiceAudit(cfg, counters=lambda: pipeline.counters)
    publisher = AlertPublisher.from_config(cfg, ..., on_drop=audit.spool_drop_hook())
    audit.attach_spool(publisher.enqueue)             # every record also to <prefix>/audit
    store = WatchlistStore(..., on_event=audit.watchlist_hook())
    audit.start(watchlist)                            # start, config hash, models, thresholds, override
    counters = run_loop(...)
    audit.stop(counters, holder.current())            # deployment record, service_stop, signed checkpoint

When the watchlist in force expires (the store's `expired` event), the deployment record is written
at once with the counters so far, as the issue asks; the record at stop supersedes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from edge.core.audit import log as al
from edge.core.audit.log import AuditLog
from edge.core.config import Config
from edge.core.keys import load_x25519_public
from edge.core.types import Counters, MatchEvent
from edge.device.audit.deployment import record_deployment
from edge.device.audit.service import (
    SpoolDropRecorder,
    audit_alert,
    audit_config_start,
    audit_stop,
    open_audit,
    spool_drop_hook,
    spool_publisher,
    watchlist_hook,
)

logger = logging.getLogger("lfr_edge.audit")


class ServiceAudit:
    def __init__(
        self,
        cfg: Config,
        keys: Any = None,
        counters: Callable[[], Counters] | None = None,
        watchlist: Callable[[], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.log: AuditLog = open_audit(cfg, keys=keys)
        self._counters = counters
        self._watchlist = watchlist
        self._stopped = False
        self._drops: SpoolDropRecorder | None = None
        # Audit records go out in the clear: seal who an alert was about, as the alert itself does.
        self.seal_to = load_x25519_public(cfg.alerts.seal_to) if cfg.alerts.seal_to else None

    def attach_spool(self, enqueue: Callable[[str, bytes, str], int]) -> None:
        self.log.publish = spool_publisher(enqueue, self.cfg)

    def spool_drop_hook(self) -> Callable[[str, str, int], None]:
        self._drops = spool_drop_hook(self.log)
        return self._drops

    def watchlist_hook(self) -> Callable[[str, dict[str, Any]], None]:
        record = watchlist_hook(self.log)

        def on_event(kind: str, fields: dict[str, Any]) -> None:
            record(kind, fields)
            if kind == "expired" and self._counters is not None:
                wl = self._watchlist() if self._watchlist is not None else None
                self.deployment(self._counters(), wl, trigger="watchlist_expired")

        return on_event

    def start(self, watchlist: Any = None) -> None:
        audit_config_start(self.log, self.cfg, watchlist)

    def alert(self, alert_id: str, subject_id: str, **kw: Any) -> None:
        """score=, track_id=, watchlist_version=, category=; sealed to alerts.seal_to when set."""
        audit_alert(self.log, alert_id, subject_id, seal_to=self.seal_to, **kw)

    def alert_event(self, alert_id: str, event: MatchEvent) -> None:
        """The record for one alert as the publisher built it (ids and score; never the crop)."""
        m = event.match
        self.alert(
            alert_id, m.subject.subject_id, score=m.score, track_id=event.track_id,
            watchlist_version=event.watchlist_version, category=m.subject.category,
        )  # fmt: skip

    def deployment(self, counters: Counters, watchlist: Any = None, trigger: str = "stop") -> dict[str, Any]:
        return record_deployment(self.log, counters, self.cfg, watchlist, trigger)

    def stop(self, counters: Counters | None, watchlist: Any = None, reason: str = "stop") -> dict[str, Any] | None:
        """Deployment record (when counters are known), then service_stop and the signed checkpoint."""
        if self._stopped:
            return None
        self._stopped = True
        dep = None
        if counters is not None:
            try:
                dep = self.deployment(counters, watchlist)
            except (OSError, ValueError, TypeError):
                logger.exception("deployment record not written")
        if self._drops is not None:
            self._drops.flush()  # summarised drops go on record before the final checkpoint
        audit_stop(self.log, reason)
        return dep

    def append(self, kind: str, fields: dict[str, Any] | None = None) -> al.Record:
        return self.log.append(kind, fields)
