"""What `check-config` reports for a device file: every error `run` would stop on, then warnings.

Errors come from the loader `run` uses (edge.core.config) plus the readiness checks `run` makes
before it starts (models known to the manifest, device keys present),
so a file that check-config passes does not fail at start. Warnings name insecure choices that are
allowed but should be deliberate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from edge.core import topics
from edge.core.config import Config, ModelsConfig, bounded, load_config_data, parse_config
from edge.core.errors import ConfigError, InputError
from edge.core.yamlsafe import short_repr


class ConfigKind(Enum):
    DEVICE = "device"
    BACKOFFICE = "backoffice"


@dataclass(slots=True)
class CheckReport:
    kind: ConfigKind
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


DEVICE_SECTIONS = frozenset(Config.model_fields)


def detect_kind(data: Any) -> ConfigKind:
    """Device files are made of sections (device:, mqtt:, …); back-office files have top-level
    connection keys (brokers:, devices:, topic_root:)."""
    if isinstance(data, dict):
        keys = {str(k) for k in data}
        if keys and not keys & DEVICE_SECTIONS:
            return ConfigKind.BACKOFFICE
    return ConfigKind.DEVICE


def readiness_problems(models_dir: Path | None, detector: str, embedder: str, keys_dir: Path) -> list[str]:
    """What `run` needs beyond a valid file: models it can load by id, and the device's keys."""
    from edge.core.inference import MANIFEST_NAME, default_models_dir, load_manifest
    from edge.core.keys import load_device_keys

    problems: list[str] = []
    mdir = models_dir or default_models_dir()
    if "\x00" in str(mdir) or "\x00" in str(keys_dir):
        return problems  # already refused by the file checks; no file system call takes such a path
    if not mdir.is_dir():
        problems.append(f"models.dir: {str(mdir)!r} is not a directory")
    else:
        try:
            manifest = load_manifest(mdir)
        except InputError as e:
            problems.append(f"models.dir: {e}")
        else:
            for key, model_id, role in (("models.detector", detector, "detector"), ("models.embedder", embedder, "embedder")):
                entry = manifest.get(model_id)
                if entry is None:
                    known = ", ".join(sorted(m for m, e in manifest.items() if e.role == role)) or "none"
                    problems.append(f"{key}: {short_repr(model_id)} is not in {mdir / MANIFEST_NAME} (known {role}s: {known})")
                elif not (mdir / entry.file).is_file():
                    problems.append(f"{key}: model file {entry.file!r} is missing from {mdir}")
    if not keys_dir.is_dir():
        problems.append(
            f"device.keys_dir: {str(keys_dir)!r} is not a directory; create the keys with lfr-edge keys init --dir {keys_dir}"
        )
    else:
        try:
            load_device_keys(keys_dir)
        except InputError as e:
            problems.append(f"device.keys_dir: {e}")
    return problems


def config_readiness(cfg: Config) -> list[str]:
    problems = readiness_problems(cfg.models.dir, cfg.models.detector, cfg.models.embedder, cfg.device.keys_dir)
    if not problems:
        # The threshold against the embedder's calibration (floor, operating point), as `run` does.
        from edge.core.watchlist.policy import policy_for

        try:
            policy_for(cfg)
        except InputError as e:
            problems.append(str(e))
    return problems


def _raw_readiness(data: Any, base: Path) -> list[str]:
    """Readiness from the raw document, so it is reported together with schema errors."""

    def get(section: str, key: str) -> Any:
        sec = data.get(section) if isinstance(data, dict) else None
        return sec.get(key) if isinstance(sec, dict) else None

    def path(value: Any, default: Path | None) -> Path | None:
        if not isinstance(value, str):
            return default
        p = Path(value)
        return p if p.is_absolute() else base / p

    defaults = ModelsConfig()
    detector, embedder = get("models", "detector"), get("models", "embedder")
    keys_dir = path(get("device", "keys_dir"), Config().device.keys_dir)
    assert keys_dir is not None
    return readiness_problems(
        path(get("models", "dir"), None),
        detector if isinstance(detector, str) else defaults.detector,
        embedder if isinstance(embedder, str) else defaults.embedder,
        keys_dir,
    )


def device_warnings(cfg: Config) -> list[str]:
    out = []
    if cfg.mqtt.tls.insecure_no_verify:
        out.append("mqtt.tls.insecure_no_verify: true: the broker's certificate is not checked (lab brokers only)")
    plain = [b for b in cfg.mqtt.brokers if b.startswith("mqtt://")]
    if plain and cfg.mqtt.password_file is None:
        out.append(f"mqtt.brokers: {plain[0]} is plain mqtt:// with no password: anyone on the path reads and sends")
    if cfg.alerts.seal_to is None:
        out.append("alerts.seal_to: null: subject ids and face crops travel readable by the broker and anyone it lets subscribe")
    if not cfg.watchlist.trusted_signers:
        # The back-office key signs bundles and the acknowledgements that let an alert leave the spool.
        out.append(
            "watchlist.trusted_signers: empty: no watchlist can be installed and no back-office "
            "acknowledgement verified, so alerts stay in the spool (re-sent) and are never confirmed delivered"
        )
    if not topics.prefix_fits_acl(cfg.mqtt.topic_prefix):
        out.append(
            f"mqtt.topic_prefix: {cfg.mqtt.topic_prefix!r} does not end in /{{device_id}}; the example ACL "
            "(config/mosquitto.acl) and the back office's <topic_root>/+/alerts expect <root>/{device_id}"
        )
    return out


def check_device(path: Path) -> CheckReport:
    report = CheckReport(ConfigKind.DEVICE)
    try:
        data = load_config_data(path)
    except ConfigError as e:
        report.errors = e.problems
        return report
    return check_device_data(data, path, report)


def check_device_data(data: Any, path: Path, report: CheckReport) -> CheckReport:
    base = path.resolve().parent
    try:
        cfg = parse_config(data, base, str(path), require_id=True)
    except ConfigError as e:
        report.errors = e.problems
        if isinstance(data, dict):
            report.errors = bounded([*report.errors, *_raw_readiness(data, base)])
        return report
    report.errors = config_readiness(cfg)
    report.warnings = device_warnings(cfg)
    if not report.errors:
        from edge.core.watchlist.policy import policy_for, warnings_for

        policy = policy_for(cfg)
        report.warnings += warnings_for(policy, policy.scoring.reference_list_size)
    return report
