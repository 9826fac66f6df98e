"""What `check-config --backoffice` reports: every error `alerts listen` would stop on, then warnings."""

from __future__ import annotations

from pathlib import Path

from edge.backoffice.listener import BackofficeConfig, parse_backoffice_config
from edge.core.config_check import CheckReport, ConfigKind
from edge.core.errors import ConfigError
from edge.core.yamlsafe import load_yaml_file


def backoffice_warnings(cfg: BackofficeConfig) -> list[str]:
    out = []
    if cfg.tls.insecure_no_verify:
        out.append("tls.insecure_no_verify: true: the broker's certificate is not checked (lab brokers only)")
    plain = [b for b in cfg.brokers if b.startswith("mqtt://")]
    if plain and cfg.password_file is None:
        out.append(f"brokers: {plain[0]} is plain mqtt:// with no password: anyone on the path reads and sends")
    if plain and cfg.password_file is not None:
        out.append(f"brokers: {plain[0]} is plain mqtt://: the password travels in clear")
    if cfg.state_dir is None:
        out.append("state_dir: null: duplicates are dropped only while the listener runs (stale_after_s still applies)")
    if not cfg.devices:
        out.append("devices: none registered: every alert will be rejected")
    return out


def check_backoffice(path: Path) -> CheckReport:
    report = CheckReport(ConfigKind.BACKOFFICE)
    try:
        cfg = parse_backoffice_config(load_yaml_file(path, "back-office config"), path.resolve().parent, str(path))
    except ConfigError as e:
        report.errors = e.problems
        return report
    report.warnings = backoffice_warnings(cfg)
    return report


