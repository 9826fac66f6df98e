"""Typed YAML configuration with errors that name the key path, the bad value and what is expected.

Unknown keys are errors (a typo must never silently fall back to a default), every problem is
reported at once, and secrets are never inline: password and key fields are paths to files whose
permissions are checked.
"""

from __future__ import annotations

import enum
import hashlib
import os
import stat
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge.core import topics
from edge.core.errors import ConfigError, InputError
from edge.core.yamlsafe import clip, load_yaml_file, short_repr

CONFIG_ENV = "LFR_EDGE_CONFIG"
DEFAULT_CONFIG = Path("/etc/lfr-edge/lfr-edge.yaml")
BACKOFFICE_CONFIG_ENV = "LFR_EDGE_BACKOFFICE_CONFIG"
DEFAULT_BACKOFFICE_CONFIG = Path("/etc/lfr-edge/backoffice.yaml")


class ConfigRole(Enum):
    """Whose configuration a command reads: each role has its own environment variable and default file."""

    DEVICE = "device"
    BACKOFFICE = "backoffice"

    @property
    def env(self) -> str:
        return CONFIG_ENV if self is ConfigRole.DEVICE else BACKOFFICE_CONFIG_ENV

    @property
    def default(self) -> Path:
        return DEFAULT_CONFIG if self is ConfigRole.DEVICE else DEFAULT_BACKOFFICE_CONFIG

Port = Annotated[int, Field(ge=1, le=65535)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Similarity = Annotated[float, Field(ge=-1.0, le=1.0)]
PosInt = Annotated[int, Field(ge=1)]
PosFloat = Annotated[float, Field(gt=0.0)]
NonNegFloat = Annotated[float, Field(ge=0.0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceConfig(Section):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "lfr-edge"
    location: str = ""  # deployment label published in deployment records
    camera_name: str = "cam0"
    data_dir: Path = Path("/var/lib/lfr-edge")
    keys_dir: Path = Path("/etc/lfr-edge/keys")


class CameraConfig(Section):
    # picamera2 | v4l2:/dev/videoN | rtsp://… | gst:<pipeline> | file:PATH | dir:PATH
    source: str = "picamera2"
    width: Annotated[int, Field(ge=64, le=8192)] = 1280
    height: Annotated[int, Field(ge=64, le=8192)] = 720
    fps: Annotated[float, Field(gt=0, le=240)] = 30.0
    format: Literal["RGB888", "XRGB8888", "YUV420"] = "RGB888"
    realtime: bool = False  # pace file: sources at their native fps (replays run flat out otherwise)
    loop: bool = False  # replay file:/dir: sources forever (demo, soak tests)
    reconnect_initial_s: PosFloat = 0.5
    reconnect_max_s: PosFloat = 30.0
    stall_timeout_s: PosFloat = 5.0  # no frame for this long counts as a stalled camera
    # FFmpeg decoder threads for file: and rtsp:// sources. One decodes 720p H.264 at ~750 fps
    # on this x86 for 1.3 ms CPU a frame; two spent 2.0 ms (thread hand-offs) on a 2-core box
    # where the loop needs the other core, and frame threading delays each frame by one.
    decode_threads: Annotated[int, Field(ge=1, le=16)] = 1

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        schemes = ("picamera2", "v4l2:", "rtsp://", "rtsps://", "gst:", "file:", "dir:")
        if not v.startswith(schemes):
            raise ValueError(f"unknown camera source; expected one of {', '.join(schemes)}")
        return v


class ModelsConfig(Section):
    dir: Path | None = None  # None: the models shipped with the package (see edge.core.inference)
    detector: str = "blazeface_full_range_int8"
    embedder: str = "dlib_resnet_v1_int8"
    num_threads: Annotated[int, Field(ge=1, le=16)] = 2


class TilesConfig(Section):
    # 3x2 at 0.25 on the default 1280x720 camera: 512 px tiles, ~83 % of 40 px and ~94 % of 48 px
    # faces found (2x1: 6 % and 29 %); for 1920x1080 use 5x3 (docs/BENCHMARKS.md, camera loop).
    cols: Annotated[int, Field(ge=1, le=8)] = 3
    rows: Annotated[int, Field(ge=1, le=8)] = 2
    overlap: Annotated[float, Field(ge=0.0, le=0.5)] = 0.25


class DetectionConfig(Section):
    min_score: Fraction = 0.5
    nms_iou: Fraction = 0.3
    whole_frame: bool = True
    tiles: TilesConfig = TilesConfig()
    min_face_px: Annotated[int, Field(ge=8, le=2000)] = 40
    # Run the tiles on every Nth frame only (the whole-frame pass runs on every frame); the tracker
    # carries small faces across the frames in between. 1 = tiles on every frame. 2 (default)
    # averages 4 invokes a frame with 3x2 tiles, keeping 720p above 25 fps on a loaded 2-core box.
    tiles_every_n: Annotated[int, Field(ge=1, le=10)] = 2

    @model_validator(mode="after")
    def _tiles_every_n(self) -> DetectionConfig:
        if self.tiles_every_n > 1 and not self.whole_frame:
            raise ValueError("tiles_every_n > 1 needs whole_frame: true (frames between tile passes use it)")
        return self


class QualityConfig(Section):
    min_interocular_px: NonNegFloat = 12.0
    # Variance of the Laplacian on the 150x150 chip: LFW's soft JPEGs have p5 17 and median 42; heavily
    # blurred copies median 1.7, p99 3.2 (docs/BENCHMARKS.md). 10 refuses real blur, not soft images.
    min_sharpness: NonNegFloat = 10.0
    max_yaw_deg: Annotated[float, Field(gt=0, le=90)] = 35.0
    max_roll_deg: Annotated[float, Field(gt=0, le=90)] = 30.0
    min_det_score: Fraction = 0.6


class TrackingConfig(Section):
    iou_threshold: Fraction = 0.3
    max_centre_dist: PosFloat = 1.0  # in face widths
    max_missed_frames: Annotated[int, Field(ge=0, le=300)] = 10
    embed_every_n: Annotated[int, Field(ge=1, le=300)] = 5
    best_k: Annotated[int, Field(ge=1, le=32)] = 3
    max_tracks: Annotated[int, Field(ge=1, le=1000)] = 64


class OperatingPoint(str, enum.Enum):
    """Named thresholds, calibrated per embedder (models/MANIFEST.json, `lfr-edge eval --calibrate`)."""

    STRICT = "strict"  # per-face FPIR ≤ 1e-4 with the reference list: the default
    BALANCED = "balanced"  # per-face FPIR ≤ 1e-3 with the same list: more found, more false alerts


# A score in the embedder's units (S-norm for the shipped embedders, cosine for one without a cohort).
Score = Annotated[float, Field(ge=-100.0, le=100.0)]


class MatchingConfig(Section):
    # The threshold comes from the embedder's calibration unless `threshold` is set; the floor is
    # the embedder's too (edge/core/watchlist/policy.py). Measured figures: docs/BENCHMARKS.md.
    operating_point: OperatingPoint = OperatingPoint.STRICT
    threshold: Score | None = None
    allow_below_floor: bool = False
    below_floor_reason: str = ""
    category_thresholds: dict[str, Score] = Field(default_factory=dict)
    min_margin: NonNegFloat = 0.0
    cooldown_s: NonNegFloat = 60.0

    @model_validator(mode="after")
    def _reason(self) -> MatchingConfig:
        if self.allow_below_floor and not self.below_floor_reason.strip():
            raise ValueError("allow_below_floor: true needs a below_floor_reason (it is audited)")
        return self


class WatchlistConfig(Section):
    store: Path | None = None  # default: <data_dir>/watchlist.enc
    inbox_dir: Path | None = None  # bundles dropped here are verified and installed
    trusted_signers: list[Path] = Field(default_factory=list)  # back-office Ed25519 public keys (PEM)
    max_bundle_mb: Annotated[float, Field(gt=0, le=4096)] = 256.0
    mqtt_sync: bool = True  # retained <prefix>/<device_id>/watchlist


class TLSConfig(Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None  # secret: 0600
    insecure_no_verify: bool = False  # only for lab brokers; refused together with a CA


@dataclass(frozen=True, slots=True)
class BrokerURI:
    """One mqtt:// or mqtts:// broker address: the one parse that config checks, the MQTT link
    dials and the egress allow-list resolves, so all three agree on every URI."""

    host: str
    port: int
    tls: bool

    @staticmethod
    def parse(uri: str, error: type[Exception] = InputError) -> BrokerURI:
        scheme, _, rest = uri.partition("://")
        if scheme not in ("mqtt", "mqtts") or not rest:
            raise error(f"{uri!r} is not a broker URI (mqtt://host:port or mqtts://host:port)")
        tls = scheme == "mqtts"
        host, sep, port = rest.rpartition(":")
        bracketed = rest.endswith("]")  # "[::1]": an IPv6 address without a port
        if port and host and not bracketed and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise error(f"{uri!r} has an invalid port (1-65535)")
        if not sep or not port.isdigit() or bracketed:
            host, port = rest, str(8883 if tls else 1883)
        return BrokerURI(host=host.strip("[]"), port=int(port), tls=tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def _check_brokers(uris: list[str]) -> list[str]:
    for uri in uris:
        BrokerURI.parse(uri, ValueError)
    return uris


# A list of broker URIs checked by the one parse (device and back-office configs alike).
BrokerList = Annotated[list[str], AfterValidator(_check_brokers)]


class MQTTConfig(Section):
    # mqtt://host:port or mqtts://host:port; several for failover, tried in order.
    brokers: BrokerList = Field(default_factory=lambda: ["mqtts://localhost:8883"], min_length=1)
    client_id: str | None = None  # default: lfr-edge-<device_id>
    topic_prefix: str = "lfr/{device_id}"
    username: str | None = None
    password_file: Path | None = None  # secret: 0600
    tls: TLSConfig = TLSConfig()
    protocol: Literal["v5", "v311", "auto"] = "auto"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    reconnect_min_s: PosFloat = 1.0
    reconnect_max_s: PosFloat = 60.0
    status_interval_s: PosFloat = 30.0

    @field_validator("topic_prefix")
    @classmethod
    def _topic_template(cls, v: str) -> str:
        problem = topics.template_problem(v)
        if problem:
            raise ValueError(f"{short_repr(v)} {problem}")
        return v


class SpoolConfig(Section):
    max_rows: Annotated[int, Field(ge=10, le=10_000_000)] = 10_000
    ttl_s: PosFloat = 7 * 24 * 3600.0


class AlertsConfig(Section):
    include_crop: bool = True
    crop_jpeg_quality: Annotated[int, Field(ge=30, le=100)] = 85
    seal_to: Path | None = None  # back-office X25519 public key (PEM): seals subject and face
    spool: SpoolConfig = SpoolConfig()
    # End-to-end delivery (docs/ALERTS.md): an alert stays spooled until the back office acknowledges
    # it, re-sent after ack_retry_s, doubling up to ack_retry_max_s (jittered); unacknowledged after
    # ack_overdue_s it is audited once and counted as overdue in the status, and still kept.
    ack_retry_s: Annotated[float, Field(ge=0.1, le=3600)] = 30.0
    ack_retry_max_s: Annotated[float, Field(ge=0.1, le=24 * 3600)] = 900.0
    ack_overdue_s: Annotated[float, Field(ge=1, le=30 * 24 * 3600)] = 600.0


class AuditConfig(Section):
    checkpoint_every: Annotated[int, Field(ge=1, le=100_000)] = 50
    retention_days: Annotated[int, Field(ge=1, le=3650)] = 365
    max_mb: Annotated[float, Field(gt=0, le=100_000)] = 100.0
    publish: bool = True  # also to <prefix>/audit through the alert spool


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Config(Section):
    device: DeviceConfig = DeviceConfig()
    camera: CameraConfig = CameraConfig()
    models: ModelsConfig = ModelsConfig()
    detection: DetectionConfig = DetectionConfig()
    quality: QualityConfig = QualityConfig()
    tracking: TrackingConfig = TrackingConfig()
    matching: MatchingConfig = MatchingConfig()
    watchlist: WatchlistConfig = WatchlistConfig()
    mqtt: MQTTConfig = MQTTConfig()
    alerts: AlertsConfig = AlertsConfig()
    audit: AuditConfig = AuditConfig()
    logging: LoggingConfig = LoggingConfig()

    @property
    def topic_prefix(self) -> str:
        return topics.device_prefix(self.mqtt.topic_prefix, self.device.id)

    @property
    def watchlist_store(self) -> Path:
        return self.watchlist.store or self.device.data_dir / "watchlist.enc"


# Fields holding secrets: must be files readable by the owner only.
SECRET_FIELDS = ("mqtt.password_file", "mqtt.tls.key_file")
# Fields that must name an existing file when set.
FILE_FIELDS = ("mqtt.tls.ca_file", "mqtt.tls.cert_file", "alerts.seal_to", *SECRET_FIELDS)
# Fields that name directories (created by the service when absent) and files that may not exist yet.
DIR_FIELDS = ("device.data_dir", "device.keys_dir", "models.dir", "watchlist.inbox_dir")
LATER_FILE_FIELDS = ("watchlist.store",)


class PemKind(Enum):
    CERTIFICATE = "a PEM certificate"
    PRIVATE_KEY = "an unencrypted PEM private key"
    X25519_PUBLIC = "an X25519 public key PEM"
    ED25519_PUBLIC = "an Ed25519 public key PEM"


class PathKind(Enum):
    ABSENT = "absent"
    DIR = "directory"
    FILE = "file"
    OTHER = "special file"


# What each key file must hold, checked when the file exists (a wrong kind fails late in `run`).
PEM_KINDS = {
    "alerts.seal_to": PemKind.X25519_PUBLIC,
    "mqtt.tls.ca_file": PemKind.CERTIFICATE,
    "mqtt.tls.cert_file": PemKind.CERTIFICATE,
    "mqtt.tls.key_file": PemKind.PRIVATE_KEY,
}
MAX_PROBLEMS = 50  # one pass reports every real mistake; a hostile file must not print thousands


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _explain(err: dict[str, Any]) -> str:
    """One line: key path, bad value, what is expected."""
    path = _loc(tuple(p for p in err["loc"] if p not in ("function-after",)))
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    path = clip(path, 120)
    shown = short_repr(value)
    if kind == "extra_forbidden":
        return f"{path}: unknown key (check the spelling against config/lfr-edge.example.yaml)"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        if path.endswith("port"):
            return f"{path}: {shown} is not a valid port (1-65535)"
        bound = {
            "greater_than_equal": f">= {ctx.get('ge')}",
            "less_than_equal": f"<= {ctx.get('le')}",
            "greater_than": f"> {ctx.get('gt')}",
            "less_than": f"< {ctx.get('lt')}",
        }[kind]
        return f"{path}: {shown} is out of range (expected {bound})"
    if kind == "literal_error":
        return f"{path}: {shown} is not one of {ctx.get('expected')}"
    if kind == "value_error":
        msg = str(ctx.get("error", err["msg"]))
        return f"{path}: {msg}" if path else msg
    if kind == "model_type" or kind == "dict_type":
        return f"{path}: expected a mapping of keys, got {type(value).__name__} {shown}"
    return f"{path}: {shown} is invalid ({err['msg'][0].lower()}{err['msg'][1:]})"


def _raw(data: Any, dotted: str) -> Any:
    """The value at `dotted` in the loaded document, or None where the path is absent or not a mapping."""
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _kind_of(path: Path) -> PathKind:
    try:
        st = path.stat()
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return PathKind.ABSENT
    if stat.S_ISDIR(st.st_mode):
        return PathKind.DIR
    return PathKind.FILE if stat.S_ISREG(st.st_mode) else PathKind.OTHER


def _pem_problem(path: Path, kind: PemKind) -> str | None:
    """Why the file does not hold a PEM of `kind`, or None."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    try:
        if path.stat().st_size > 1 << 20:
            return f"is larger than 1 MB; not {kind.value}"
        data = path.read_bytes()
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    try:
        if kind is PemKind.CERTIFICATE:
            x509.load_pem_x509_certificates(data)
            return None
        if kind is PemKind.PRIVATE_KEY:
            serialization.load_pem_private_key(data, password=None)
            return None
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        return f"is not {kind.value} ({clip(str(e), 80)})"
    want = X25519PublicKey if kind is PemKind.X25519_PUBLIC else Ed25519PublicKey
    if not isinstance(key, want):
        return f"holds an {type(key).__name__}, expected {kind.value}"
    return None


def _file_problems(data: Any, base: Path) -> list[str]:
    """Referenced files and directories, checked on the raw document so that these problems are
    reported in the same pass as schema errors (a value of the wrong type is the schema's to name)."""
    problems = []
    signers = _raw(data, "watchlist.trusted_signers")
    named = [(k, _raw(data, k)) for k in (*FILE_FIELDS, *DIR_FIELDS, *LATER_FILE_FIELDS)]
    named += [(f"watchlist.trusted_signers[{i}]", v) for i, v in enumerate(signers if isinstance(signers, list) else [])]
    unusable = {k for k, v in named if isinstance(v, str) and "\x00" in v}
    problems += [f"{k}: contains a NUL byte, which no path can hold" for k, v in named if k in unusable]
    for key in FILE_FIELDS:
        value = _raw(data, key)
        if not isinstance(value, str) or key in unusable:
            continue
        path = _under(base, Path(value))
        shown = short_repr(value)
        if _kind_of(path) is not PathKind.FILE:
            problems.append(f"{key}: {shown} does not exist or is not a file")
            continue
        if key in SECRET_FIELDS and stat.S_IMODE(path.stat().st_mode) & 0o077:
            mode = oct(stat.S_IMODE(path.stat().st_mode))
            problems.append(f"{key}: {shown} has permissions {mode}; secrets must be 0600 (chmod 600)")
            continue
        pem = PEM_KINDS.get(key)
        problem = _pem_problem(path, pem) if pem else None
        if problem:
            problems.append(f"{key}: {shown} {problem}")
    for i, signer in enumerate(signers if isinstance(signers, list) else []):
        if not isinstance(signer, str) or f"watchlist.trusted_signers[{i}]" in unusable:
            continue
        path = _under(base, Path(signer))
        if _kind_of(path) is not PathKind.FILE:
            problems.append(f"watchlist.trusted_signers[{i}]: {short_repr(signer)} does not exist or is not a file")
        elif problem := _pem_problem(path, PemKind.ED25519_PUBLIC):
            problems.append(f"watchlist.trusted_signers[{i}]: {short_repr(signer)} {problem}")
    for key in DIR_FIELDS:
        value = _raw(data, key)
        found = _kind_of(_under(base, Path(value))) if isinstance(value, str) else PathKind.ABSENT
        if found not in (PathKind.DIR, PathKind.ABSENT):
            problems.append(f"{key}: {short_repr(value)} is a {found.value}, expected a directory")
    for key in LATER_FILE_FIELDS:
        value = _raw(data, key)
        if isinstance(value, str) and _kind_of(_under(base, Path(value))) is PathKind.DIR:
            problems.append(f"{key}: {short_repr(value)} is a directory, expected a file path")
    return problems


def _consistency_problems(cfg: Config) -> list[str]:
    problems = []
    if cfg.mqtt.tls.insecure_no_verify and cfg.mqtt.tls.ca_file:
        problems.append("mqtt.tls.insecure_no_verify: true contradicts mqtt.tls.ca_file; remove one")
    if any(b.startswith("mqtt://") for b in cfg.mqtt.brokers) and cfg.mqtt.password_file:
        problems.append("mqtt.brokers: a password would travel in clear over mqtt://; use mqtts://")
    return problems


def bounded(problems: list[str]) -> list[str]:
    """Every problem, each one short line, and no more than MAX_PROBLEMS of them."""
    lines = [clip(p) for p in problems]
    if len(lines) > MAX_PROBLEMS:
        lines = [*lines[:MAX_PROBLEMS], f"… and {len(lines) - MAX_PROBLEMS} more problems"]
    return lines


def _under(base: Path, p: Path) -> Path:
    """Relative paths in the file are relative to the file, not to the service's working directory."""
    return p if p.is_absolute() else base / p


def _resolve(cfg: Config, base: Path) -> Config:
    def fix(section: Section, *names: str) -> Section:
        vals = {n: getattr(section, n) for n in names}
        return section.model_copy(update={n: _under(base, v) for n, v in vals.items() if v is not None})

    wl = cfg.watchlist
    return cfg.model_copy(
        update={
            "device": fix(cfg.device, "data_dir", "keys_dir"),
            "models": fix(cfg.models, "dir"),
            "mqtt": fix(cfg.mqtt, "password_file").model_copy(
                update={"tls": fix(cfg.mqtt.tls, "ca_file", "cert_file", "key_file")}
            ),
            "alerts": fix(cfg.alerts, "seal_to"),
            "watchlist": fix(wl, "store", "inbox_dir").model_copy(
                update={"trusted_signers": [_under(base, p) for p in wl.trusted_signers]}
            ),
        }
    )


def parse_config(data: Any, base: Path, source: str = "<config>", require_id: bool = False) -> Config:
    """Validate a loaded YAML document; raises ConfigError listing every problem, one line each.

    `require_id` is for files: an empty or id-less file must not give every van the same id."""
    if data is None:
        if require_id:
            raise ConfigError([f"{source}: the file is empty; at least device.id is required"])
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of sections, got {type(data).__name__}"])
    problems: list[str] = []
    if require_id and _raw(data, "device.id") is None:
        problems.append("device.id: required key is missing (each van needs its own id)")
    cfg: Config | None = None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        problems += [_explain(dict(err)) for err in e.errors()]
    problems += _file_problems(data, base)
    if cfg is not None:
        problems += _consistency_problems(cfg)
    if problems or cfg is None:
        raise ConfigError(bounded(problems))
    return _resolve(cfg, base)


def config_path(explicit: str | Path | None, role: ConfigRole = ConfigRole.DEVICE) -> Path:
    """The one rule every command follows: the explicit --config, else the role's environment variable
    ($LFR_EDGE_CONFIG / $LFR_EDGE_BACKOFFICE_CONFIG), else the role's file under /etc/lfr-edge/."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(role.env)
    return Path(env) if env else role.default


def load_config_data(path: Path) -> Any:
    """The document in a device config file, read through the bounded loader (edge.core.yamlsafe)."""
    return load_yaml_file(path, "config")


def load_config(path: str | Path | None = None) -> Config:
    p = config_path(path)
    return parse_config(load_config_data(p), p.resolve().parent, str(p), require_id=True)


def config_hash(cfg: Config) -> str:
    """Stable digest of the effective configuration, for the audit log."""
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()
