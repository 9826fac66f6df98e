"""Watchlists from the console: enrol a custody folder, sign, encrypt to chosen devices, publish, keep references.

Enrolment is the engine of `lfr-edge watchlist build` (edge.backoffice.enrolment.enrol: the device's own
detector, quality gate and embedder), with its per-image report shown on the page. The console keeps
one JPEG per accepted custody image (under <data_dir>/references) so that a reviewer sees the
subject's custody photo beside the live face; the bundle itself never holds an image.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from starlette.datastructures import FormData

from edge.backoffice.console import audit as ca
from edge.backoffice.console.config import ConsoleConfig
from edge.backoffice.console.models import ReferenceImageRow, WatchlistRow
from edge.backoffice.console.store import ConsoleStore, write_durably
from edge.backoffice.enrolment.enrol import EnrolModel
from edge.core.errors import InputError
from edge.core.imageio import decode_rgb
from edge.core.keys import load_x25519_public
from edge.core.types import Subject

BUNDLES_DIR = "watchlists"
Publish = Callable[[str, bytes], bool]  # (device_id, bundle) -> acknowledged by the broker


@dataclass(frozen=True, slots=True)
class EnrolReport:
    summary: str
    images: list[dict[str, str]]
    version: int | None  # None: nothing was built


class WatchlistPages:
    def __init__(
        self, cfg: ConsoleConfig, store: ConsoleStore, audit: ca.ConsoleAudit, signer: Ed25519PrivateKey
    ) -> None:
        self.cfg, self.store, self.audit, self.signer = cfg, store, audit, signer
        self.publish: Publish | None = None  # set by the server once its MQTT link runs
        self._analyse: Any = None
        self._lock = threading.Lock()  # one enrolment at a time: it loads and runs the models

    def context(self, report: EnrolReport | None = None) -> dict[str, Any]:
        with self.store.sessions() as s:
            lists = s.scalars(select(WatchlistRow).order_by(WatchlistRow.version.desc())).all()
        return {
            "lists": lists,
            "installed": [(d.device_id, d.watchlist_version, d.watchlist_expires) for d in self.store.devices()],
            "report": report,
            "enrol_enabled": bool(self.cfg.console.device_x25519),
            "recipients": sorted(self.cfg.console.device_x25519),
        }

    def enrol_from_form(self, form: FormData, by: str) -> EnrolReport:
        try:
            version = int(str(form.get("version", "")))
            hours = float(str(form.get("hours", "12")))
        except ValueError:
            raise InputError("version and hours must be numbers") from None
        devices = [str(d) for d in form.getlist("device")]
        return self.enrol(Path(str(form.get("folder", ""))), version, hours * 3600.0, devices, by)

    def _analyser(self) -> tuple[Any, EnrolModel]:
        if self._analyse is None:
            from edge.backoffice.enrolment.enrol import ModelChoice, face_analyser

            self._analyse = face_analyser(ModelChoice())
        return self._analyse  # type: ignore[no-any-return]

    def enrol(self, folder: Path, version: int, valid_s: float, devices: Sequence[str], by: str) -> EnrolReport:
        from edge.backoffice.enrolment.enrol import enrol_folder, scan_faces
        from edge.core.watchlist.bundle import build_bundle

        if version < 1:
            raise InputError(f"version: must be a positive integer, got {version}")
        if not 0 < valid_s <= 30 * 86400:
            raise InputError("hours: between 1 and 720")
        unknown = [d for d in devices if d not in self.cfg.console.device_x25519]
        if unknown or not devices:
            raise InputError(
                f"devices: choose at least one of {', '.join(sorted(self.cfg.console.device_x25519))}"
                + (f" (unknown: {', '.join(unknown)})" if unknown else "")
            )
        with self.store.sessions() as s:
            if s.scalar(select(WatchlistRow.id).where(WatchlistRow.version == version)) is not None:
                raise InputError(f"version: watchlist v{version} already exists; use a higher version")
        subjects_dirs = scan_faces(folder)
        with self._lock:
            analyse, model = self._analyser()
            done = enrol_folder(folder, subjects_dirs, analyse, model)
        outcomes = done.report.images
        images = [{k: str(v) for k, v in o.to_json().items() if k in ("subject_id", "image", "status", "detail")}
                  for o in outcomes]  # fmt: skip
        enrolled = set(done.subject_ids)
        accepted = [o for o in outcomes if o.in_bundle and o.subject_id in enrolled]
        if not done.subject_ids:
            return EnrolReport("Nothing built: no subject has a usable image. Fix the folders (report below).", images, None)
        left_out = [s.subject_id for s in done.report.left_out]
        subject_ids = done.subject_ids
        recipients = [load_x25519_public(self.cfg.console.device_x25519[d]) for d in devices]
        now = time.time()
        bundle = build_bundle(
            subjects=[Subject(subject_id=sid) for sid in subject_ids],
            templates=done.templates,
            template_subject=done.template_subject,
            signer=self.signer,
            recipients=recipients,
            version=version,
            expires_at=now + valid_s,
            embedder_sha256=model.sha256,
            landmarks_sha256=model.landmarks_sha256,
            metadata={"built_by": "lfr-edge console"},
        )
        bundles = self.store.data_dir / BUNDLES_DIR
        bundles.mkdir(parents=True, exist_ok=True, mode=0o700)
        bundle_file = f"watchlist-{version}.lfrw"
        write_durably(bundles / bundle_file, bundle)
        refs = self._keep_references(folder, accepted, version)
        with self.store.sessions() as s:
            s.add(
                WatchlistRow(
                    version=version, created_at=now, created_by=by, expires_at=now + valid_s,
                    subjects=len(subject_ids), templates=len(done.template_subject), bundle_file=bundle_file,
                    report_json=json.dumps(images), published_to="",
                )
            )  # fmt: skip
            s.add_all(refs)
            s.commit()
        self.audit.record(
            ca.WATCHLIST_ENROLLED,
            {"version": version, "subjects": len(subject_ids), "templates": len(done.template_subject), "by": by,
             "refused_images": len(outcomes) - len(accepted)},
        )  # fmt: skip
        published = self._publish(version, bundle, devices, by)
        summary = (
            f"Watchlist v{version}: {len(subject_ids)} subject(s), {len(accepted)} image(s) accepted, "
            f"{len(outcomes) - len(accepted)} refused"
            + (f", left out for want of a usable image: {', '.join(left_out)}" if left_out else "")
            + f"; signed and encrypted to {', '.join(devices)}; "
            + (f"published to {', '.join(published)}." if published else "not published (no broker link): "
               f"install {bundles / bundle_file} on the device.")
        )  # fmt: skip
        return EnrolReport(summary, images, version)

    def bundle_path(self, version: int) -> Path:
        return self.store.data_dir / BUNDLES_DIR / f"watchlist-{version}.lfrw"

    def _keep_references(self, folder: Path, accepted: Sequence[Any], version: int) -> list[ReferenceImageRow]:
        import cv2

        rows = []
        for o in accepted:
            rgb = decode_rgb(folder / o.image)
            if rgb is None:
                continue
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
            if not ok:
                continue
            name = secrets.token_hex(16) + ".jpg"
            write_durably(self.store.refs_dir / name, bytes(buf))
            rows.append(ReferenceImageRow(watchlist_version=version, subject_id=o.subject_id, file=name))
        return rows

    def _publish(self, version: int, bundle: bytes, devices: Sequence[str], by: str) -> list[str]:
        if self.publish is None:
            return []
        done = [d for d in devices if self.publish(d, bundle)]
        if done:
            with self.store.sessions() as s:
                row = s.scalar(select(WatchlistRow).where(WatchlistRow.version == version))
                if row is not None:
                    row.published_to = ",".join(done)
                    s.commit()
            self.audit.record(ca.WATCHLIST_PUBLISHED, {"version": version, "devices": done, "by": by})
        return done
