"""The device's installed watchlist: held in memory, verified on every install, replaced atomically.

Two ways of keeping it (`watchlist.at_rest`, docs/WATCHLIST.md "At rest"):

* Memory only (the default). The verified list lives in this process and nowhere else: nothing that
  decrypts to it is written to the card. At start the device has no list until the broker
  re-delivers the retained bundle (encrypted to the device), so a copied card holds no list and a
  device whose broker credentials are revoked gets none. A list left on the card by an earlier
  at-rest configuration is crypto-shredded at the next load.
* At rest (opt-in, vans that must boot offline). The accepted bundle (still signed and still
  encrypted to the device) is wrapped once more with AES-256-GCM under the device's own
  `watchlist.key`, so deleting that one key (wipe) makes every copy unreadable, including blocks
  the flash controller keeps. A replacement is written to a temporary file, fsynced, renamed over
  the old one and the directory fsynced: a crash at any point leaves either the old list or the
  new one, never half of either. Whoever copies the card while a list is stored can open it.

Rollback protection survives a wipe and a restart in both modes: the highest version ever installed
(and the digest of the bundle in force, so that a memory-only device may take the very same bundle
again after a restart) is kept in a small state file that holds no subject or template.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.core.config import Config
from edge.core.errors import InputError
from edge.core.keys import (
    CryptoError,
    DeviceKeys,
    atomic_write,
    decrypt_at_rest,
    destroy_storage_key,
    encrypt_at_rest,
    ensure_private_dir,
    fsync_dir,
    load_device_keys,
    load_ed25519_public,
    storage_key,
    storage_key_path,
)
from edge.core.timefmt import format_utc
from edge.core.vision.scoring import CohortNorm
from edge.core.watchlist.bundle import BundleError, open_stored_bundle, verify_bundle
from edge.core.watchlist.match import Matcher
from edge.core.watchlist.model import Watchlist
from edge.device.status import WatchlistStatus

log = logging.getLogger("lfr_edge.watchlist")

STORE_MAGIC = b"LFRWLS01"
STORAGE_KEY_NAME = "watchlist.key"
EventHook = Callable[[str, dict[str, Any]], None]


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers: a failed replace already removed its temp file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WatchlistHolder:
    """The list in force, shared between the sync thread (writer) and the camera loop (reader).

    The loop calls `matcher(...)` between frames: it gets the matcher for the newest list, built once
    per swap, so a new list takes effect on the next frame without a restart and never mid-frame.
    """

    def __init__(self, watchlist: Watchlist | None = None) -> None:
        self._lock = threading.Lock()
        self._watchlist = watchlist
        # (list, parameters, matcher); keyed on the list object itself, so a swap between building
        # a matcher and caching it can never leave a matcher for the wrong list in the cache.
        self._matcher: tuple[Watchlist, tuple[Any, ...], Matcher] | None = None
        self._listeners: list[Callable[[Watchlist | None], None]] = []

    def subscribe(self, fn: Callable[[Watchlist | None], None]) -> None:
        """Call `fn` now with the list in force and after every swap, on the thread that swapped."""
        with self._lock:
            self._listeners.append(fn)
            wl = self._watchlist
        fn(wl)

    def current(self) -> Watchlist | None:
        with self._lock:
            return self._watchlist

    def swap(self, watchlist: Watchlist | None) -> Watchlist | None:
        """Put `watchlist` in force (None: no list); returns the one it replaced."""
        with self._lock:
            old, self._watchlist = self._watchlist, watchlist
            self._matcher = None  # let the old list's matrix go now, not at the next matcher() call
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(watchlist)
            except Exception:  # one broken listener must not keep the others on a stale list
                log.exception("watchlist listener failed")
        return old

    def matcher(
        self,
        threshold: float,
        category_thresholds: Mapping[str, float] | None = None,
        min_margin: float = 0.0,
        norm: CohortNorm | None = None,
        floor: float = float("-inf"),
    ) -> Matcher | None:
        """Matcher for the list in force (None when there is none), cached until the next swap."""
        params = (threshold, tuple(sorted((category_thresholds or {}).items())), min_margin, id(norm), floor)
        with self._lock:
            wl, cached = self._watchlist, self._matcher
        if wl is None:
            return None
        if cached is not None and cached[0] is wl and cached[1] == params:
            return cached[2]
        m = Matcher(wl, threshold, category_thresholds, min_margin, norm, floor)
        with self._lock:
            if self._watchlist is wl:
                self._matcher = (wl, params, m)
        return m


def describe(wl: Watchlist | None, now: float | None = None) -> dict[str, Any]:
    """What `watchlist status` and the audit log show: never templates or subject ids."""
    return WatchlistStatus.of(wl, now).to_json()


class WatchlistStore:
    """Install, load and wipe the device's watchlist file; keeps `holder` in step with it."""

    def __init__(
        self,
        path: str | Path,
        device_keys: DeviceKeys,
        trusted_signers: Iterable[Ed25519PublicKey],
        embedder_sha256: str | None,
        *,
        key_dir: str | Path | None = None,
        max_bytes: int = 256 << 20,
        holder: WatchlistHolder | None = None,
        on_event: EventHook | None = None,
        clock: Callable[[], float] = time.time,
        at_rest: bool = False,
        landmarks_sha256: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.at_rest = at_rest
        self.key_dir = Path(key_dir) if key_dir is not None else self.path.parent
        self.device_keys = device_keys
        self.trusted_signers = list(trusted_signers)
        self.embedder_sha256 = embedder_sha256
        self.landmarks_sha256 = landmarks_sha256  # the face mesh this device cuts chips with
        self.max_bytes = max_bytes
        self.holder = holder if holder is not None else WatchlistHolder()
        self.on_event = on_event
        self.clock = clock
        self.state_path = self.path.with_name(self.path.name + ".state")
        self._install_lock = threading.Lock()
        self._expired_reported: int | None = None

    # ------------------------------------------------------------------ events

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        log.info("watchlist %s", kind, extra={"event": kind, **{f"wl_{k}": v for k, v in fields.items()}})
        if self.on_event is None:
            return
        try:
            self.on_event(kind, fields)
        except Exception:  # the audit hook must never undo or block an install or a wipe
            log.exception("watchlist %s event hook failed", kind)

    # ------------------------------------------------------------------ state

    def _state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def high_water(self) -> int | None:
        """Highest bundle version ever installed on this device (None: never)."""
        v = self._state().get("max_version")
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    def installed_digest(self) -> str | None:
        """sha256 of the bundle in force, so a re-delivered retained copy is recognised cheaply."""
        if self.holder.current() is None:
            return None
        d = self._state().get("sha256")
        return d if isinstance(d, str) else None

    def _write_atomic(self, target: Path, data: bytes) -> None:
        ensure_private_dir(target.parent)
        atomic_write(target, data)

    def _clean_temps(self) -> None:
        """Temp files left by an installer that died (ciphertext only, but clutter). A temp file
        whose writer is still alive (another process installing right now) is left alone."""
        if not self.path.parent.is_dir():
            return
        mine = [*self.path.parent.glob(f".{self.path.name}.tmp-*")]
        mine += self.path.parent.glob(f".{self.state_path.name}.tmp-*")
        for p in mine:
            pid = p.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
            if pid.isdigit() and _alive(int(pid)):
                continue
            with contextlib.suppress(OSError):
                p.unlink()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One installer or wiper at a time, across threads and processes (the service's sync
        and an operator's `watchlist install` may run together)."""
        with self._install_lock:
            ensure_private_dir(self.path.parent)
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    # ------------------------------------------------------------------ operations

    def _read_stored(self) -> bytes | None:
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if not blob.startswith(STORE_MAGIC):
            raise CryptoError(f"{self.path}: not a watchlist store file")
        if not storage_key_path(self.key_dir, STORAGE_KEY_NAME).exists():
            raise CryptoError(f"{self.path}: its storage key is gone (wiped); the stored list cannot be read")
        key = storage_key(self.key_dir, STORAGE_KEY_NAME)
        return decrypt_at_rest(key, memoryview(blob)[len(STORE_MAGIC) :], STORE_MAGIC, str(self.path))

    def _purge_at_rest(self) -> bool:
        """Delete a stored list and crypto-shred its key (memory-only mode); True when one was there.
        Call with the install lock held."""
        removed = False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            removed = True
        self._clean_temps()
        removed = destroy_storage_key(self.key_dir, STORAGE_KEY_NAME) or removed
        if removed and self.path.parent.is_dir():
            fsync_dir(self.path.parent)
        return removed

    def load(self) -> Watchlist | None:
        """At rest: decrypt the stored list into memory and put it in force; None when none is installed.
        Memory only: nothing is read from the card (the list in force, if any, stays); a list an
        earlier at-rest configuration left on the card is deleted and its key destroyed.

        Raises InputError (BundleError/CryptoError) when a stored list exists but cannot be used
        (altered file, storage key gone, signer no longer trusted, embedder changed).
        """
        if not self.at_rest:
            purged = False
            # Only touch the card when there is something to shred (no lock file on a clean device).
            if self.path.exists() or storage_key_path(self.key_dir, STORAGE_KEY_NAME).exists():
                with self._exclusive():
                    purged = self._purge_at_rest()
            if purged:
                self._emit("at_rest_removed", {"source": "load"})
            return self.holder.current()
        with self._install_lock:  # not under a same-process installer's feet
            self._clean_temps()
        bundle = self._read_stored()
        if bundle is None:
            self.holder.swap(None)
            return None
        wl = open_stored_bundle(
            bundle, self.device_keys, self.trusted_signers, self.embedder_sha256, landmarks_sha256=self.landmarks_sha256
        )
        self.holder.swap(wl)
        return wl

    def install(self, bundle: bytes, source: str = "file") -> Watchlist:
        """Verify, store encrypted and put in force. On any refusal the list in force is unchanged
        and BundleError (or an OSError from storage) is raised."""
        with self._exclusive():
            current = self.holder.current()
            digest = hashlib.sha256(bundle).hexdigest()
            known = [v for v in (self.high_water(), current.version if current else None) if v is not None]
            floor = max(known) if known else None
            state = self._state()
            if floor is not None and current is None and state.get("sha256") == digest and state.get("max_version") == floor:
                # The very bundle accepted last (a memory-only device after a restart, the broker
                # re-delivering it): byte for byte what was verified before, so not a rollback. A
                # wipe forgets the digest, so a wiped list is not taken back this way.
                floor -= 1
            try:
                wl = verify_bundle(
                    bundle,
                    self.device_keys,
                    self.trusted_signers,
                    floor,
                    self.embedder_sha256,
                    self.clock(),
                    self.max_bytes,
                    self.landmarks_sha256,
                )
            except BundleError as e:
                self.report_refusal(e, source)
                raise
            purged = False
            if self.at_rest:
                key = storage_key(self.key_dir, STORAGE_KEY_NAME)
                self._write_atomic(self.path, STORE_MAGIC + encrypt_at_rest(key, bundle, STORE_MAGIC))
            else:
                purged = self._purge_at_rest()
            new_state = {"max_version": wl.version, "sha256": digest}
            self._write_atomic(self.state_path, json.dumps(new_state).encode())
            self._clean_temps()
            self.holder.swap(wl)
            self._expired_reported = None
            if purged:
                self._emit("at_rest_removed", {"source": source})
            self._emit("installed", {**describe(wl, self.clock()), "source": source, "at_rest": self.at_rest})
            return wl

    def verify(self, bundle: bytes, source: str = "file") -> Watchlist:
        """Every check `install` makes (rollback against the highest version installed here), but
        nothing is stored or put in force: for handing a bundle to the running service."""
        current = self.holder.current()
        known = [v for v in (self.high_water(), current.version if current else None) if v is not None]
        try:
            return verify_bundle(
                bundle, self.device_keys, self.trusted_signers, max(known) if known else None,
                self.embedder_sha256, self.clock(), self.max_bytes, self.landmarks_sha256,
            )  # fmt: skip
        except BundleError as e:
            self.report_refusal(e, source)
            raise

    def report_refusal(self, err: BundleError, source: str) -> None:
        """Record a refusal decided before the verifier ran (e.g. an oversize inbox file)."""
        self._emit("refused", {"reason": err.reason, "message": str(err), "source": source})

    def wipe(self, source: str = "cli") -> bool:
        """Delete the list and crypto-shred its storage key; True when something was removed."""
        with self._exclusive():
            old = self.holder.swap(None)
            removed = self._purge_at_rest()
            hw = self.high_water()
            if self._state().get("sha256") is not None:
                # Forget which bundle was in force: the same bundle re-delivered is a rollback now.
                self._write_atomic(self.state_path, json.dumps({"max_version": hw}).encode())
            if self.path.parent.is_dir():
                fsync_dir(self.path.parent)
            self._emit("wiped", {"version": old.version if old else None, "source": source})
            return removed or old is not None

    def check_expiry(self) -> bool:
        """True when the list in force has expired; emits `expired` once per version."""
        wl = self.holder.current()
        if wl is None or not wl.expired(self.clock()):
            return False
        if self._expired_reported != wl.version:
            self._expired_reported = wl.version
            self._emit("expired", {"version": wl.version, "expires_at": format_utc(wl.expires_at)})
        return True

    def status(self) -> WatchlistStatus:
        return WatchlistStatus.of(self.holder.current(), self.clock())


def embedder_sha256_for(cfg: Config) -> str:
    """sha256 of the embedder model this device runs (bundles must have been built with it)."""
    from edge.core.inference import default_models_dir, load_manifest

    models_dir = cfg.models.dir or default_models_dir()
    entry = load_manifest(models_dir).get(cfg.models.embedder)
    if entry is None:
        raise InputError(f"models.embedder: {cfg.models.embedder!r} is not in {models_dir}/MANIFEST.json")
    return entry.sha256


def landmarks_sha256_for(cfg: Config) -> str | None:
    """sha256 of the face mesh this device cuts its chips with (bundles must have been cut with
    it too); None when the embedder's recipe uses the detector's keypoints alone."""
    from edge.core.vision.scoring import chip_landmarks_sha256

    return chip_landmarks_sha256(cfg.models.embedder, cfg.models.dir)


def trusted_signers_for(cfg: Config) -> list[Ed25519PublicKey]:
    return [load_ed25519_public(p) for p in cfg.watchlist.trusted_signers]


def store_from_config(
    cfg: Config,
    device_keys: DeviceKeys | None = None,
    *,
    holder: WatchlistHolder | None = None,
    on_event: EventHook | None = None,
) -> WatchlistStore:
    """The device's store as configured: path, signers, size limit, embedder, device keys."""
    return WatchlistStore(
        cfg.watchlist_store,
        device_keys if device_keys is not None else load_device_keys(cfg.device.keys_dir),
        trusted_signers_for(cfg),
        embedder_sha256_for(cfg),
        landmarks_sha256=landmarks_sha256_for(cfg),
        max_bytes=int(cfg.watchlist.max_bundle_mb * (1 << 20)),
        holder=holder,
        on_event=on_event,
        at_rest=cfg.watchlist.at_rest,
    )
