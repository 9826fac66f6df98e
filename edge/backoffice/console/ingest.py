"""One subscriber for the fleet: verified alerts, retained status and deployment records into the store.

Verification and unsealing are edge.backoffice.listener's (the same code as `alerts listen`): an alert
whose signature does not verify is rejected there and never reaches the database. Once its row is
committed (or was already), `_alert` answers STORED (or DUPLICATE) and the listener sends the device
its signed acknowledgement; a storage error raises, so nothing is acknowledged and the device re-sends. Deployment
records arrive as audit records on <topic_root>/<device>/audit; only `deployment_record` ones are kept.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from edge.backoffice.console.config import ConsoleConfig
from edge.backoffice.console.store import ConsoleStore, Outcome
from edge.backoffice.listener import AlertListener, Handled
from edge.core.alert_message import VerifiedAlert
from edge.core.audit.log import DEPLOYMENT_RECORD
from edge.core.keys import key_id, load_signing_key
from edge.core.mqtt import Message

log = logging.getLogger("lfr_edge.console")


def _device_of(topic: str) -> str:
    """<topic_root>/<device>/<kind> → device (the listener's private rule, restated for the audit topic)."""
    parts = topic.split("/")
    return parts[-2] if len(parts) >= 2 else ""


@dataclass(frozen=True, slots=True)
class Rejection:
    topic: str
    reason: str


class Ingest:
    def __init__(self, cfg: ConsoleConfig, store: ConsoleStore) -> None:
        self.cfg = cfg
        self.store = store
        # Acknowledgements are signed with the key the console signs watchlists with (the devices trust it).
        keys_dir = cfg.signing_keys_dir
        ack_key = load_signing_key(keys_dir) if cfg.ack_key is None and keys_dir is not None else None
        self.listener = AlertListener(cfg, self._alert, self._reject, self._status, ack_key=ack_key)
        self.key_ids = {dev: key_id(k) for dev, k in self.listener.device_keys.items()}
        self.rejections: deque[Rejection] = deque(maxlen=200)
        self.stored = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)

    def start(self) -> Ingest:
        self.listener.link.subscribe(f"{self.cfg.topic_root}/+/audit", self._audit, qos=1)
        self.listener.start()
        return self

    def stop(self) -> None:
        self.listener.stop()

    def wait_stored(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.stored >= n, timeout)

    def _alert(self, alert: VerifiedAlert) -> Handled:
        try:
            result = self.store.store_alert(alert, self.key_ids.get(alert.device_id, ""))
        except Exception:
            log.exception("console: alert %s could not be stored", alert.alert_id[:64])
            self._reject(f"{self.cfg.topic_root}/{alert.device_id}/alerts", "not stored (storage error)")
            raise  # not acknowledged: the device keeps it and sends it again
        if result.outcome is Outcome.REFUSED:
            # Verified but unstorable content: never acknowledged, so the device keeps it and reports it overdue.
            self._reject(f"{self.cfg.topic_root}/{alert.device_id}/alerts", result.reason)
            return Handled.SHOWN
        with self._cond:
            if result.outcome is Outcome.STORED:
                self.stored += 1
            self._cond.notify_all()
        return Handled.STORED if result.outcome is Outcome.STORED else Handled.DUPLICATE

    def _reject(self, topic: str, reason: str) -> None:
        with self._cond:
            self.refused += 1
            self.rejections.append(Rejection(topic[:200], reason[:300]))
        log.warning("console: REJECTED %s: %s", topic[:200], reason[:300])

    def _status(self, device_id: str, status: dict[str, Any]) -> None:
        if device_id not in self.key_ids:
            return  # status of a device the back office does not know: not shown
        try:
            self.store.update_status(device_id, status)
        except Exception:
            log.exception("console: status of %s not stored", device_id[:64])

    def _audit(self, msg: Message) -> None:
        device_id = _device_of(msg.topic)
        if device_id not in self.key_ids or len(msg.payload) > 1_000_000:
            return
        try:
            rec = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(rec, dict) and rec.get("kind") == DEPLOYMENT_RECORD:
            try:
                self.store.add_deployment(device_id, rec)
            except Exception:
                log.exception("console: deployment record of %s not stored", device_id[:64])
