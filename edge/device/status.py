"""The appliance's status as typed parts, each with one owner, and the one JSON document made from it.

    CameraStatus    the pipeline of one camera (counts only)        Pipeline.status(), CameraSet.statuses()
    WatchlistStatus the list in force (never templates or who)      WatchlistStore.status()
    MatchingStatus  the matching policy and what it costs           matching_status(policy, size)
    DeliveryStatus  alerts raised / delivered / spooled / dropped   AlertPublisher.delivery_status()
    LinkStatus      the MQTT link                                   AlertPublisher.link_status()
    Status          all of the above + device facts (uptime, models, runtime, temperature, clock)

Nothing is merged by key: `Status.to_json()` lays the parts out side by side in the document the
MQTT heartbeat, `lfr-edge status --json` and the back office read (its field names are the ones the
listener and console have always read: "alerts" is the delivery block, "watchlist" the one-word
state, "watchlist_detail" the list's description).
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.core.timefmt import format_utc
from edge.core.watchlist.model import Watchlist
from edge.core.watchlist.policy import MatchingPolicy
from edge.device.clock import ClockSync, clock_sync_cached

if TYPE_CHECKING:
    from edge.core.config import Config
    from edge.device.bundle_outcome import BundleOutcome
    from edge.device.publisher import AckStatus  # the publisher owns the acknowledgement figures


class ServiceState(Enum):
    STARTING = "starting"
    ONLINE = "online"
    STOPPING = "stopping"
    STOPPED = "stopped"  # the run summary's final status
    NOT_RUNNING = "not running"  # what `lfr-edge status` reports when no service answers


class WatchlistState(Enum):
    NONE = "none"
    ACTIVE = "active"
    EXPIRED = "expired"
    UNUSABLE = "unusable"  # a stored list exists but does not open (signer no longer trusted, key gone, ...)

    @property
    def word(self) -> str:
        """The heartbeat's one-word "watchlist" field, as the back office has always read it."""
        return {"none": "none installed", "expired": "watchlist expired"}.get(self.value, self.value)


class CameraState(Enum):
    STARTING = "starting"  # no frame processed yet
    RUNNING = "running"
    STALLED = "stalled"  # no frame processed for camera.stall_timeout_s
    ENDED = "ended"  # replay finished, or the device is stopping
    FAILED = "failed"  # the source gave up (the error is in the log)


@dataclass(frozen=True, slots=True)
class CameraStatus:
    """One camera's pipeline: counts only, never anything about a person."""

    camera: str
    fps: float
    frames: int
    frames_dropped: int
    source_reconnects: int
    faces_seen: int
    embeddings: int
    rejections: Mapping[str, int]
    matches: int
    alerts_suppressed_cooldown: int
    non_match_discarded: int
    live_tracks: int
    state: CameraState = CameraState.RUNNING  # the camera loop's (edge.device.cameras); a bare pipeline runs


@dataclass(frozen=True, slots=True)
class WatchlistStatus:
    state: WatchlistState
    version: int | None = None
    subjects: int | None = None
    templates: int | None = None
    created_at: float | None = None
    expires_at: float | None = None
    signer: str | None = None
    embedder_sha256: str | None = None
    error: str | None = None  # why an UNUSABLE list does not open
    verification_failed: bool = False  # UNUSABLE because a signature or signer does not verify (exit 3)

    @staticmethod
    def unusable(error: Exception) -> WatchlistStatus:
        from edge.core.errors import VerificationFailed

        return WatchlistStatus(
            WatchlistState.UNUSABLE, error=str(error), verification_failed=isinstance(error, VerificationFailed)
        )

    @staticmethod
    def of(wl: Watchlist | None, now: float | None = None) -> WatchlistStatus:
        if wl is None:
            return WatchlistStatus(WatchlistState.NONE)
        t = time.time() if now is None else now
        return WatchlistStatus(
            state=WatchlistState.EXPIRED if wl.expired(t) else WatchlistState.ACTIVE,
            version=wl.version,
            subjects=len(wl.subjects),
            templates=wl.n_templates,
            created_at=wl.created_at,
            expires_at=wl.expires_at,
            signer=wl.signer_key_id,
            embedder_sha256=wl.embedder_sha256,
        )

    def to_json(self) -> dict[str, Any]:
        """What `watchlist status --json` and the audit log have always shown (times as RFC 3339)."""
        out: dict[str, Any] = {"state": self.state.value}
        if self.state is WatchlistState.UNUSABLE:
            out["error"] = self.error
            out["verification_failed"] = self.verification_failed
        if self.version is None:
            return out
        out.update(
            version=self.version,
            subjects=self.subjects,
            templates=self.templates,
            created_at=format_utc(self.created_at) if self.created_at is not None else None,
            expires_at=format_utc(self.expires_at) if self.expires_at is not None else None,
            signer=self.signer,
            embedder_sha256=self.embedder_sha256,
        )
        return out


@dataclass(frozen=True, slots=True)
class MatchingStatus:
    embedder: str
    units: str
    operating_point: str
    threshold: float
    floor: float
    category_thresholds: Mapping[str, float]
    min_margin: float
    expected_false_alerts_per_10k_faces: float
    expected_for_list_size: int
    below_floor: Mapping[str, float] | None = None
    below_floor_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in _fields(self).items() if v is not None}


def matching_status(policy: MatchingPolicy, list_size: int) -> MatchingStatus:
    """The policy in force and its expected false-alert rate for a list of `list_size` subjects."""
    return MatchingStatus(
        embedder=policy.scoring.embedder_id,
        units=policy.scoring.units.value,
        operating_point=policy.operating_point or "explicit",
        threshold=round(policy.threshold, 4),
        floor=round(policy.floor, 4),
        category_thresholds=dict(policy.category_thresholds),
        min_margin=policy.min_margin,
        expected_false_alerts_per_10k_faces=round(policy.expected_false_alerts(list_size), 3),
        expected_for_list_size=list_size,
        below_floor=dict(policy.below_floor) if policy.below_floor else None,
        below_floor_reason=policy.below_floor_reason if policy.below_floor else None,
    )


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """Alerts through the spool: raised here, still spooled, dropped (why), and the back office's
    acknowledgements (the publisher's AckStatus: delivered, awaiting, overdue, ...)."""

    raised: int
    pending: int
    dropped: Mapping[str, int]
    ack: AckStatus

    def to_json(self) -> dict[str, Any]:
        return {"raised": self.raised, "pending": self.pending, "dropped": dict(self.dropped), **self.ack.as_dict()}


@dataclass(frozen=True, slots=True)
class LinkStatus:
    broker: str | None
    protocol: str | None
    reconnects: int


@dataclass(frozen=True, slots=True)
class ModelsStatus:
    detector: str
    embedder: str


@dataclass(frozen=True, slots=True)
class RuntimeStatus:
    tflite: str
    python: str
    lfr_edge: str


@dataclass(frozen=True, slots=True)
class Status:
    state: ServiceState
    device_id: str
    time: float  # wall clock when the status was taken
    uptime_s: float
    models: ModelsStatus
    runtime: RuntimeStatus
    cpu_temp_c: float | None
    # Alert times, bundle expiry and command validity are only as good as the clock (a Pi has no RTC).
    clock: ClockSync = ClockSync.UNKNOWN
    cameras: tuple[CameraStatus, ...] = ()
    watchlist: WatchlistStatus | None = None  # None: this process has no list (e.g. `alerts test`)
    matching: MatchingStatus | None = None
    alerts: DeliveryStatus | None = None
    mqtt: LinkStatus | None = None
    last_bundle: BundleOutcome | None = None  # the last bundle installed or refused (watchlist publish --wait)

    @staticmethod
    def of_device(
        cfg: Config,
        state: ServiceState,
        uptime_s: float,
        *,
        cameras: tuple[CameraStatus, ...] = (),
        watchlist: WatchlistStatus | None = None,
        matching: MatchingStatus | None = None,
        alerts: DeliveryStatus | None = None,
        mqtt: LinkStatus | None = None,
        last_bundle: BundleOutcome | None = None,
    ) -> Status:
        """This device's status now: the device facts read here, the parts from their owners."""
        return Status(
            state=state,
            device_id=cfg.device.id,
            time=time.time(),
            uptime_s=uptime_s,
            models=ModelsStatus(cfg.models.detector, cfg.models.embedder),
            runtime=runtime_status(),
            cpu_temp_c=cpu_temperature_c(),
            clock=clock_sync_cached(),
            cameras=cameras,
            watchlist=watchlist,
            matching=matching,
            alerts=alerts,
            mqtt=mqtt,
            last_bundle=last_bundle,
        )

    def totals(self) -> dict[str, Any]:
        """The cameras' counts summed (one camera: its own), as the top-level heartbeat fields."""
        if not self.cameras:
            return {}
        rejections: dict[str, int] = {}
        for c in self.cameras:
            for k, v in c.rejections.items():
                rejections[k] = rejections.get(k, 0) + v
        summed = ("frames", "frames_dropped", "source_reconnects", "faces_seen", "embeddings",
                  "alerts_suppressed_cooldown", "non_match_discarded", "live_tracks")  # fmt: skip
        # The slowest camera's rate: the figure a dashboard should alarm on (each camera's is in "cameras").
        out: dict[str, Any] = {"fps": min(c.fps for c in self.cameras)}
        out.update({k: sum(getattr(c, k) for c in self.cameras) for k in summed})
        out["rejections"] = rejections
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state.value,
            "device_id": self.device_id,
            "time": format_utc(self.time),
            "uptime_s": round(self.uptime_s, 1),
            **self.totals(),
        }
        if self.cameras:
            out["cameras"] = [_plain(_fields(c)) for c in self.cameras]
        if self.alerts is not None:
            out["alerts"] = self.alerts.to_json()
        if self.mqtt is not None:
            out["mqtt"] = _plain(_fields(self.mqtt))
        out["models"] = _fields(self.models)
        out["cpu_temp_c"] = self.cpu_temp_c
        out["clock"] = self.clock.value
        out["runtime"] = _fields(self.runtime)
        wl = self.watchlist
        if wl is not None:
            out["watchlist"] = wl.state.word
            if wl.version is not None:
                out["watchlist_version"] = wl.version
                out["watchlist_expires_at"] = wl.expires_at
                out["watchlist_subjects"] = wl.subjects
            out["watchlist_detail"] = wl.to_json()
        if self.matching is not None:
            out["matching"] = self.matching.to_json()
        if self.last_bundle is not None:
            out["watchlist_last_bundle"] = self.last_bundle.to_json()
        return out


# --------------------------------------------------------------------------- device facts


def cpu_temperature_c(root: Path = Path("/sys/class/thermal")) -> float | None:
    """The CPU zone's temperature (Pi: cpu-thermal, Jetson: CPU-therm), else the first readable zone."""
    zones = sorted(root.glob("thermal_zone*"))
    readings: list[tuple[bool, float]] = []
    for z in zones:
        try:
            milli = int((z / "temp").read_text().strip())
            kind = (z / "type").read_text().strip().lower()
        except (OSError, ValueError):
            continue
        readings.append(("cpu" in kind or "soc" in kind, milli / 1000.0))
    if not readings:
        return None
    preferred = [t for is_cpu, t in readings if is_cpu]
    return round((preferred or [readings[0][1]])[0], 1)


@lru_cache(maxsize=1)
def runtime_status() -> RuntimeStatus:
    from edge import __version__
    from edge.core.errors import InputError
    from edge.core.inference import runtime_name

    try:
        tflite = runtime_name()
    except InputError:
        tflite = "unavailable"
    return RuntimeStatus(tflite=tflite, python=platform.python_version(), lfr_edge=__version__)


# --------------------------------------------------------------------------- helpers


def _fields(obj: Any) -> dict[str, Any]:
    """A dataclass's own fields, one level (not dataclasses.asdict: nested parts lay themselves out)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _plain(v: Any) -> Any:
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    return v
