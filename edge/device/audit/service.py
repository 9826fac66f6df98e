"""The audit log as the service uses it: opened from the config, fed by the other components.

`audit_config_start` is called once at service start (before the first frame) so that the log says
what the appliance ran with: config hash, model ids and sha256, thresholds, and a below-floor
override with its reason. The small adapters here let the watchlist store, the alert publisher and
the spool write their records without knowing the log's format.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from edge import __version__
from edge.core.audit import log as al
from edge.core.audit.log import AuditLog, Publish
from edge.core.config import Config, config_hash
from edge.core.errors import InputError
from edge.core.keys import DeviceKeys, load_device_keys, seal, unseal
from edge.core.timefmt import format_utc

logger = logging.getLogger("lfr_edge.audit")


def audit_dir(cfg: Config) -> Path:
    return cfg.device.data_dir / "audit"


def open_audit(
    cfg: Config,
    publish: Publish | None = None,
    keys: DeviceKeys | Any = None,
    segment_bytes: int | None = None,
) -> AuditLog:
    """The service's log; signs with the device Ed25519 key (loaded from keys_dir when not given)."""
    signer = keys
    if signer is None:
        try:
            signer = load_device_keys(cfg.device.keys_dir)
        except InputError as e:
            # Still keep the chain: an unsigned log is weaker, not worthless. Verify will say so.
            logger.warning("audit checkpoints will not be signed: %s", e)
    a = cfg.audit
    return AuditLog(
        audit_dir(cfg),
        signer,
        checkpoint_every=a.checkpoint_every,
        retention_days=a.retention_days,
        max_mb=a.max_mb,
        segment_bytes=segment_bytes,
        publish=publish if a.publish else None,
    )


def model_info(cfg: Config) -> dict[str, dict[str, str]]:
    """Model ids and the sha256 the loader enforces (from the manifest it checks against)."""
    from edge.core.inference import default_models_dir, load_manifest

    out: dict[str, dict[str, str]] = {}
    try:
        manifest = load_manifest(cfg.models.dir or default_models_dir())
    except InputError:
        manifest = {}
    for role, mid in (("detector", cfg.models.detector), ("embedder", cfg.models.embedder)):
        entry = manifest.get(mid)
        out[role] = {"id": mid, "sha256": entry.sha256 if entry else "unknown"}
    return out


def thresholds(cfg: Config, list_size: int | None = None) -> dict[str, Any]:
    """The matching policy in force (threshold, units, operating point, floor, the expected false
    alerts per 10,000 faces for `list_size` subjects or the calibration's reference list), plus cooldown."""
    from edge.core.watchlist.policy import policy_for

    policy = policy_for(cfg)
    size = list_size if list_size is not None else policy.scoring.reference_list_size
    return {**policy.describe(size), "cooldown_s": cfg.matching.cooldown_s}


def below_floor(cfg: Config) -> dict[str, float]:
    """Every threshold that is set below the floor (only possible with allow_below_floor)."""
    from edge.core.watchlist.policy import policy_for

    return dict(policy_for(cfg).below_floor)


def watchlist_fields(wl: Any) -> dict[str, Any]:
    """Version, size and signer of a list: never subject ids or templates."""
    if wl is None:
        return {"version": None, "subjects": 0, "templates": 0}
    return {
        "version": int(wl.version),
        "subjects": len(wl.subjects),
        "templates": int(wl.n_templates),
        "signer": str(wl.signer_key_id),
        "expires_at": format_utc(float(wl.expires_at)),
    }


def audit_config_start(audit: AuditLog, cfg: Config, watchlist: Any = None) -> None:
    """Start records: who, where, with what configuration, models and thresholds."""
    audit.append(
        al.SERVICE_START,
        {
            "device_id": cfg.device.id,
            "location": cfg.device.location,
            "camera": cfg.device.camera_name,
            "version": __version__,
            "pid": os.getpid(),
        },
    )
    audit.append(al.CONFIG, {"config_hash": config_hash(cfg)})
    audit.append(al.MODELS, model_info(cfg))
    audit.append(al.THRESHOLDS, thresholds(cfg, len(watchlist.subjects) if watchlist is not None else None))
    if cfg.matching.allow_below_floor:
        from edge.core.watchlist.policy import policy_for

        policy = policy_for(cfg)
        low = dict(policy.below_floor)
        audit.append(
            al.BELOW_FLOOR_OVERRIDE,
            {
                "floor": policy.floor,
                "below": low,
                "in_use": bool(low),
                "reason": cfg.matching.below_floor_reason[: al.MAX_STRING],
            },
        )
        if low:
            logger.warning(
                "threshold below the floor %.3f (%s): %s",
                policy.floor, ", ".join(low), cfg.matching.below_floor_reason,
            )
    audit.append(DATA_PROTECTION, data_protection(cfg))
    if cfg.alerts.allow_unsealed:
        logger.warning("alerts are not sealed (alerts.allow_unsealed): %s", cfg.alerts.allow_unsealed_reason)
    if cfg.watchlist.at_rest:
        logger.warning("watchlist.at_rest: true: the watchlist is kept on the card; a copied card reveals it")
    if watchlist is not None:
        audit.append("watchlist_loaded", watchlist_fields(watchlist))


DATA_PROTECTION = "data_protection"


def data_protection(cfg: Config) -> dict[str, Any]:
    """How this run protects what it holds: are alerts and audit subjects sealed (to which key, or
    why not), and is the watchlist kept on the card. On record at every start, so that a deployment
    run unsealed or with its list at rest can always be found."""
    from edge.core.keys import key_id, load_x25519_public

    fields: dict[str, Any] = {"alerts_sealed": cfg.alerts.seal_to is not None, "watchlist_at_rest": cfg.watchlist.at_rest}
    if cfg.alerts.seal_to is not None:
        try:
            fields["seal_to_key_id"] = key_id(load_x25519_public(cfg.alerts.seal_to))
        except InputError:
            fields["seal_to_key_id"] = "unreadable"
    else:
        fields["unsealed_reason"] = cfg.alerts.allow_unsealed_reason[: al.MAX_STRING]
    return fields


def audit_stop(audit: AuditLog, reason: str = "stop") -> None:
    """Last record of a run, then the signed checkpoint that seals the run."""
    audit.append(al.SERVICE_STOP, {"reason": reason})
    audit.close()


def audit_threshold_change(audit: AuditLog, old: Config, new: Config, reason: str = "") -> None:
    if thresholds(old) == thresholds(new):
        return
    audit.append(
        al.THRESHOLD_CHANGE,
        {"old": thresholds(old), "new": thresholds(new), "below_floor": below_floor(new), "reason": reason},
    )


SUBJECT_SEAL_INFO = b"lfr-edge audit subject v1"
MAX_SUBJECT = 160  # sealed and base64-encoded it still fits a record's string limit


def audit_alert(
    audit: AuditLog, alert_id: str, subject_id: str, *, score: float | None = None,
    track_id: int | None = None, watchlist_version: int | None = None, category: str | None = None,
    seal_to: X25519PublicKey | None = None,
) -> None:
    """One record per alert: ids and score only (never the crop).

    Audit records travel to `<prefix>/audit` in the clear (they must stay byte-identical to the
    chained lines), while alerts seal the subject to the back office. So with `seal_to` (the
    alerts.seal_to key) the subject id is sealed here too, bound to the alert id: the broker sees
    that an alert happened, only the back office sees who it was about.
    """
    sid = subject_id if len(subject_id) <= MAX_SUBJECT else subject_id[: MAX_SUBJECT - 1] + "…"
    fields: dict[str, Any] = {"alert_id": alert_id}
    if seal_to is not None:
        # The same fields the alert itself seals (who, and what kind of list entry).
        secret = al.canonical({"subject_id": sid, "category": category})
        blob = seal(seal_to, secret, SUBJECT_SEAL_INFO, aad=alert_id.encode())
        fields["subject_sealed"] = base64.b64encode(blob).decode()
    else:
        fields["subject_id"] = sid
        if category is not None:
            fields["category"] = category
    if score is not None:
        fields["score"] = round(float(score), 4)
    if track_id is not None:
        fields["track_id"] = int(track_id)
    if watchlist_version is not None:
        fields["watchlist_version"] = int(watchlist_version)
    audit.append(al.ALERT, fields)


def unseal_subject(private: X25519PrivateKey, fields: dict[str, Any]) -> str:
    """Back office: the subject id of an audited alert (clear or sealed)."""
    return str(unseal_alert_fields(private, fields)["subject_id"])


def unseal_alert_fields(private: X25519PrivateKey, fields: dict[str, Any]) -> dict[str, Any]:
    """Back office: subject_id and category of an audited alert (clear or sealed)."""
    if "subject_sealed" not in fields:
        return {"subject_id": fields.get("subject_id"), "category": fields.get("category")}
    blob = base64.b64decode(str(fields["subject_sealed"]))
    clear = unseal(private, blob, SUBJECT_SEAL_INFO, aad=str(fields["alert_id"]).encode())
    out: dict[str, Any] = json.loads(clear)
    return out


def audit_spool_drop(audit: AuditLog, count: int, reason: str, kind: str = "alert") -> None:
    audit.append(al.SPOOL_DROP, {"count": int(count), "reason": reason, "kind": kind})


_WATCHLIST_KEEP = ("version", "subjects", "templates", "signer", "expires_at", "source", "reason", "message", "at_rest")


def watchlist_hook(audit: AuditLog) -> Callable[[str, dict[str, Any]], None]:
    """`on_event` for edge.device.watchlist.store.WatchlistStore: installed/refused/expired/wiped records."""

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        keep = {k: fields[k] for k in _WATCHLIST_KEEP if k in fields}
        if isinstance(keep.get("message"), str):
            keep["message"] = keep["message"][: al.MAX_STRING]
        audit.append(f"watchlist_{kind}", keep)

    return on_event


# Drops of audit records are summarised at most this often: when the broker refuses the audit
# topic, each drop record is itself published, refused and dropped, a loop that would otherwise
# write (and fsync) a record per round trip.
AUDIT_DROP_SUMMARY_S = 60.0


class SpoolDropRecorder:
    """`on_drop` for edge.device.spool.Spool: every dropped alert or audit record is itself audited.

    Dropped alerts get one record each, at once. Dropped audit records get one record at once, then
    at most one summary per `min_interval_s` carrying the count since (`flush` writes what is
    pending, e.g. at stop), so a refused audit topic costs a record a minute, not a flood, and
    every drop is still counted on record.

    The audit record goes out through the same spool, whose enqueue may drop again when it is full;
    drops reported while one is being recorded are folded into the next record instead of recursing.
    """

    def __init__(
        self, audit: AuditLog, min_interval_s: float = AUDIT_DROP_SUMMARY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.audit = audit
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._busy = False
        self._carried = 0
        self._last_audit_record: float | None = None
        self._pending: dict[str, int] = {}  # reason -> audit records dropped and not yet on record
        self._pending_since = 0.0

    def __call__(self, kind: str, reason: str, count: int) -> None:
        # No lock: the spool may call this while holding its own, and the record goes back into the
        # spool; the re-entry guard is what keeps that from recursing (as before this summary).
        if self._busy:
            self._carried += count
            return
        if kind != "audit":
            self._write(kind, reason, count)
            return
        now = self.clock()
        if self._last_audit_record is not None and now - self._last_audit_record < self.min_interval_s:
            if not self._pending:
                self._pending_since = now
            self._pending[reason] = self._pending.get(reason, 0) + int(count)
            return
        self._last_audit_record = now
        pending, self._pending = self._pending, {}
        summarised = bool(pending)
        count += pending.pop(reason, 0)
        for other, n in pending.items():
            self._write("audit", other, n, summarised=True)
        self._write(kind, reason, count, summarised=summarised)

    def flush(self) -> None:
        """Record the audit drops still being summarised."""
        pending, self._pending = self._pending, {}
        for reason, n in pending.items():
            self._write("audit", reason, n, summarised=True)

    def _write(self, kind: str, reason: str, count: int, summarised: bool = False) -> None:
        self._busy = True
        try:
            carried, self._carried = self._carried, 0
            fields: dict[str, Any] = {"count": int(count), "reason": reason, "kind": kind}
            if carried:
                fields["also_dropped_while_recording"] = carried
            if summarised:
                fields["summarised_over_s"] = round(self.clock() - self._pending_since, 1)
            self.audit.append(al.SPOOL_DROP, fields)
        finally:
            self._busy = False


def spool_drop_hook(audit: AuditLog, min_interval_s: float = AUDIT_DROP_SUMMARY_S) -> SpoolDropRecorder:
    """`on_drop` for the spool (see SpoolDropRecorder)."""
    return SpoolDropRecorder(audit, min_interval_s)


def spool_publisher(enqueue: Callable[[str, bytes, str], int], cfg: Config) -> Publish | None:
    """The audit publish hook: each record goes to `<prefix>/audit` through the alert spool (QoS 1).

    None when `audit.publish` is off in the config (the log then stays on the device only).

    Wiring at service start (the spool needs the audit log for its drop records and the log needs
    the spool to publish, so the hook is attached after both exist):
        audit = open_audit(cfg)
        publisher = AlertPublisher.from_config(cfg, ..., on_drop=spool_drop_hook(audit))
        audit.publish = spool_publisher(publisher.enqueue, cfg)
        audit_config_start(audit, cfg, watchlist)
    """
    if not cfg.audit.publish:
        return None
    topic = f"{cfg.topic_prefix}/audit"

    def publish(line: bytes) -> None:
        enqueue(topic, line, "audit")

    return publish
