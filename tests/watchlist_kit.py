"""Shared setup for the watchlist tests: keys, a device store, and bundles of synthetic templates.

Synthetic templates are random unit vectors: the crypto, storage and sync tests are about bytes,
not faces (the round trip with real faces is in test_watchlist_enrol.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.config import Config
from edge.core.keys import BackofficeKeys, DeviceKeys, generate_backoffice_keys, generate_device_keys
from edge.core.types import Subject
from edge.core.watchlist.bundle import build_bundle
from edge.device.watchlist.store import WatchlistStore, embedder_sha256_for, landmarks_sha256_for

EMBEDDER = "ab" * 32
DAY = 24 * 3600.0


def unit_templates(n: int, dim: int = 128, seed: int = 0) -> np.ndarray[Any, np.dtype[np.float32]]:
    t = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return t


@dataclass
class Kit:
    root: Path
    device: DeviceKeys
    backoffice: BackofficeKeys
    other_device: DeviceKeys
    events: list[tuple[str, dict[str, Any]]]

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def store(self, **kw: Any) -> WatchlistStore:
        """The store as the storage tests use it: kept on the card (at_rest) unless at_rest=False."""
        kw.setdefault("on_event", lambda kind, fields: self.events.append((kind, fields)))
        kw.setdefault("at_rest", True)
        return WatchlistStore(
            self.data_dir / "watchlist.enc", self.device, [self.backoffice.ed25519_public], EMBEDDER, **kw
        )

    def bundle(
        self,
        version: int,
        n_subjects: int = 4,
        per_subject: int = 2,
        *,
        expires_in: float = DAY,
        recipients: list[Any] | None = None,
        signer: Any = None,
        embedder: str = EMBEDDER,
        landmarks: str | None = None,
        seed: int | None = None,
        dtype: str = "float32",
    ) -> tuple[bytes, np.ndarray[Any, np.dtype[np.float32]]]:
        """A bundle and its (already unit-norm) templates, grouped by subject."""
        m = n_subjects * per_subject
        templates = unit_templates(m, seed=version if seed is None else seed)
        ts = np.repeat(np.arange(n_subjects), per_subject)
        subjects = [
            Subject(f"subject-{version}-{i}", "wanted" if i % 2 else "missing", i + 1)
            for i in range(n_subjects)
        ]
        now = time.time()
        data = build_bundle(
            subjects=subjects,
            templates=templates,
            template_subject=ts,
            signer=signer or self.backoffice.ed25519,
            recipients=recipients or [self.device.x25519_public],
            version=version,
            expires_at=now + expires_in,
            created_at=now - 60,
            embedder_sha256=embedder,
            landmarks_sha256=landmarks,
            dtype=dtype,
        )
        return data, templates


def make_kit(root: Path) -> Kit:
    return Kit(
        root=root,
        device=generate_device_keys(root / "device-keys"),
        backoffice=generate_backoffice_keys(root / "backoffice-keys"),
        other_device=generate_device_keys(root / "other-device-keys"),
        events=[],
    )


def device_models(cfg: Config) -> dict[str, Any]:
    """Kit.bundle's model arguments for a device running `cfg`: its embedder and the face mesh its
    chips are cut with, so the device accepts the bundle."""
    return {"embedder": embedder_sha256_for(cfg), "landmarks": landmarks_sha256_for(cfg)}
