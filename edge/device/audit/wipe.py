"""`wipe --all`: leave the device with nothing on it, and a signed last word that says so.

Order matters: the final `wipe_all` record and the checkpoint that signs it are written (and sent
to `<prefix>/audit` when a broker acknowledges them) while the device key still exists; only then
are the watchlist, its storage key, the spool, the audit log and the keys removed. Storage keys are
overwritten before they are unlinked (crypto-shredding whatever they encrypted). When the record
could not be published it is kept, alone, in `<data_dir>/final-record.jsonl` (no personal data) so
the back office can still collect and verify it against the device's public key.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge.core.audit import log as al
from edge.core.config import Config
from edge.core.errors import InputError
from edge.core.keys import DeviceKeys, destroy_storage_key, load_device_keys
from edge.device.audit.service import open_audit, watchlist_hook

logger = logging.getLogger("lfr_edge.audit")

FINAL_RECORD = "final-record.jsonl"
# Publishes the lines to <prefix>/audit and returns "" on PUBACK, else why not.
PublishLines = Callable[[list[bytes]], str]


@dataclass(slots=True)
class WipeResult:
    removed: list[str] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)  # the final record and its checkpoint
    signed: bool = False
    published: bool = False
    publish_error: str = ""
    kept_at: str = ""


def _guard(path: Path, what: str) -> Path:
    p = path.resolve()
    if p == Path(p.anchor) or p == Path.home().resolve() or len(p.parts) < 3:
        raise InputError(f"{what}: refusing to wipe {p} (too broad a directory; check the config)")
    return p


def _shred_keys(directory: Path, removed: list[str]) -> None:
    """Overwrite every storage key (`*.key`) before anything else is deleted."""
    if not directory.is_dir():
        return
    for p in sorted(directory.glob("*.key")):
        if p.is_file() and destroy_storage_key(directory, p.name):
            removed.append(str(p))


def _empty_dir(directory: Path, removed: list[str]) -> None:
    if not directory.is_dir():
        return
    for p in sorted(directory.iterdir()):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        removed.append(str(p))


def mqtt_publisher(cfg: Config, timeout_s: float) -> PublishLines:
    """Publish through a short-lived link of its own: the spool is about to be wiped."""

    def publish(lines: list[bytes]) -> str:
        from edge.core.mqtt import LinkSettings, MqttLink

        base = LinkSettings.from_config(cfg)
        settings = dataclasses.replace(base, client_id=f"{base.client_id}-wipe", will_topic=None)
        link = MqttLink(settings, name="wipe").start()
        try:
            if not link.wait_connected(timeout_s):
                return link.stats.last_error or f"no broker reachable within {timeout_s:.0f} s"
            topic = f"{cfg.topic_prefix}/audit"
            for line in lines:
                h = link.publish(topic, line, qos=1)
                if not h.wait(timeout_s):
                    return f"no acknowledgement from the broker within {timeout_s:.0f} s"
                if not h.ok:
                    return f"broker refused the record ({h.reason or h.reason_code})"
            return ""
        finally:
            link.stop(timeout=2.0, offline_status=False)

    return publish


def wipe_all(cfg: Config, publish: PublishLines | None, keys: DeviceKeys | None = None) -> WipeResult:
    data_dir = _guard(cfg.device.data_dir, "device.data_dir")
    keys_dir = _guard(cfg.device.keys_dir, "device.keys_dir")
    res = WipeResult()
    if keys is None:
        try:
            keys = load_device_keys(keys_dir)
        except InputError as e:
            logger.warning("final wipe record cannot be signed: %s", e)
    audit = open_audit(cfg, publish=None, keys=keys)
    final: list[bytes] = []
    audit.publish = final.append  # everything written from here on is the final word
    if keys is not None:
        # The watchlist store's own wipe (crypto-shred) first, so the log records it as such.
        from edge.device.watchlist.store import WatchlistStore

        wl_store = WatchlistStore(cfg.watchlist_store, keys, [], None, on_event=watchlist_hook(audit))
        if wl_store.wipe(source="wipe --all"):
            res.removed.append(str(cfg.watchlist_store))
    audit.append(
        al.WIPE_ALL,
        {
            "device_id": cfg.device.id,
            "what": ["watchlist", "spool", "keys", "audit"],
            "data_dir": str(data_dir),
            "keys_dir": str(keys_dir),
        },
    )
    cp = audit.checkpoint()
    audit.close()
    res.lines = final
    res.signed = cp is not None and final[-1] == cp.line()
    if publish is not None:
        try:
            res.publish_error = publish(res.lines)
        except Exception as e:  # an unreachable broker must not stop the wipe
            res.publish_error = f"{type(e).__name__}: {e}"
        res.published = not res.publish_error
    else:
        res.publish_error = "MQTT publishing disabled"
    _shred_keys(data_dir, res.removed)
    _shred_keys(keys_dir, res.removed)
    store = cfg.watchlist_store  # may live outside the data dir; its key sits beside it
    if destroy_storage_key(store.parent, "watchlist.key"):
        res.removed.append(str(store.parent / "watchlist.key"))
    if store.exists():
        store.unlink()
        res.removed.append(str(store))
    _empty_dir(data_dir, res.removed)
    _empty_dir(keys_dir, res.removed)
    if not res.published:
        data_dir.mkdir(parents=True, exist_ok=True)
        kept = data_dir / FINAL_RECORD
        fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"".join(line + b"\n" for line in res.lines))
            os.fsync(fd)
        finally:
            os.close(fd)
        res.kept_at = str(kept)
    return res
