"""The console's configuration: the back-office listener file plus `console:` and `retention:` sections."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.backoffice.listener import BackofficeConfig, DeviceEntry
from edge.core.errors import ConfigError

# A crop larger than this is refused at ingest (the device sends ~10 kB JPEGs).
# A face crop past this is refused at storage. The listener refuses any alert over 4 MiB before it
# is parsed (edge.core.alert_message), so larger crops never get this far; this bound keeps the
# console's own promise whatever that limit becomes. Real crops are 15-60 kB.
MAX_CROP_BYTES = 2 * 1024 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsoleSettings(_Section):
    host: str = "127.0.0.1"  # behind a TLS reverse proxy (docs/CONSOLE.md); never exposed directly
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    data_dir: Path = Path("console-data")  # crops, reference images, the console's audit log
    # SQLAlchemy URL; default: SQLite in data_dir. PostgreSQL: postgresql+psycopg://user@host/db
    database_url: str | None = None
    # Back-office keys directory (backoffice init): signs the console's audit log and watchlists.
    keys_dir: Path | None = None
    # Session cookies carry the Secure flag; turn off only for a plain-http loopback test setup.
    secure_cookies: bool = True
    session_hours: Annotated[float, Field(gt=0, le=24 * 7)] = 12.0
    login_attempts: Annotated[int, Field(ge=1)] = 5  # failed logins per user and address ...
    login_window_s: Annotated[float, Field(gt=0)] = 300.0  # ... within this window
    offline_after_s: Annotated[float, Field(gt=0)] = 90.0  # a device silent this long turns red
    page_size: Annotated[int, Field(ge=5, le=500)] = 50
    # Optional X25519 public keys (device_x25519.pub.pem) of devices that may receive watchlists.
    device_x25519: dict[str, Path] = Field(default_factory=dict)


class RetentionSettings(_Section):
    false_alert_days: Annotated[float, Field(ge=0)] = 1.0
    confirmed_days: Annotated[float, Field(ge=0)] = 31.0
    sweep_interval_s: Annotated[float, Field(gt=0)] = 600.0


class ConsoleConfig(BackofficeConfig):
    console: ConsoleSettings = ConsoleSettings()
    retention: RetentionSettings = RetentionSettings()

    @property
    def data_dir(self) -> Path:
        return self.console.data_dir

    @property
    def database_url(self) -> str:
        return self.console.database_url or f"sqlite:///{self.console.data_dir / 'console.db'}"

    @property
    def signing_keys_dir(self) -> Path | None:
        if self.console.keys_dir is not None:
            return self.console.keys_dir
        return self.unseal_key if self.unseal_key is not None and self.unseal_key.is_dir() else None


def _resolve(p: Path | None, base: Path) -> Path | None:
    return None if p is None else p if p.is_absolute() else base / p


def load_console_config(path: str | Path) -> ConsoleConfig:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{p}: console config not found"]) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError([f"{p}: cannot read console config ({type(e).__name__})"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{p}: the top level must be a mapping"])
    try:
        cfg = ConsoleConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            if err["type"] == "extra_forbidden":
                lines.append(f"{p}: {loc}: unknown key (see config/backoffice.example.yaml)")
            else:
                lines.append(f"{p}: {loc}: {err['msg']} (got {str(err.get('input'))[:80]!r})")
        raise ConfigError(lines) from None
    base = p.resolve().parent
    tls = cfg.tls.model_copy(
        update={k: _resolve(getattr(cfg.tls, k), base) for k in ("ca_file", "cert_file", "key_file")}
    )
    console = cfg.console.model_copy(
        update={
            "data_dir": _resolve(cfg.console.data_dir, base),
            "keys_dir": _resolve(cfg.console.keys_dir, base),
            "device_x25519": {d: _resolve(k, base) for d, k in cfg.console.device_x25519.items()},
        }
    )
    return cfg.model_copy(
        update={
            "tls": tls,
            "console": console,
            "devices": {
                d: DeviceEntry(public_key=_resolve(e.public_key, base) or e.public_key) for d, e in cfg.devices.items()
            },
            "password_file": _resolve(cfg.password_file, base),
            "unseal_key": _resolve(cfg.unseal_key, base),
            "ack_key": _resolve(cfg.ack_key, base),
            "state_dir": _resolve(cfg.state_dir, base),
        }
    )
