"""Options shared by the commands, so each means the same everywhere.

`--config` follows one rule (edge.core.config.config_path): the flag, else the role's environment
variable, else the role's file —
device commands: $LFR_EDGE_CONFIG, else /etc/lfr-edge/lfr-edge.yaml;
back-office commands: $LFR_EDGE_BACKOFFICE_CONFIG, else /etc/lfr-edge/backoffice.yaml.
Commands that only borrow a device config's models and thresholds (eval, bench pipeline, watchlist
build) follow the same rule and use the built-in defaults when it leads to no file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.core.config import ConfigRole, config_path


def config_help(role: ConfigRole, what: str = "", *, optional: bool = False) -> str:
    head = what or f"{role.value} config"
    tail = "; none there: built-in defaults" if optional else ""
    return f"{head} (default: ${role.env}, else {role.default}{tail})"


def add_config_option(
    p: argparse.ArgumentParser, role: ConfigRole = ConfigRole.DEVICE, what: str = "", *, optional: bool = False
) -> None:
    p.add_argument("--config", metavar="FILE", help=config_help(role, what, optional=optional))


def resolve_config(args: argparse.Namespace, role: ConfigRole = ConfigRole.DEVICE, *, optional: bool = False) -> Path | None:
    """The config file a command reads. With `optional`, None when the rule leads to the role's default
    file and it does not exist (the command then uses built-in defaults); an explicit --config or
    environment variable that names a missing file is still an error, reported by the loader."""
    path = config_path(getattr(args, "config", None), role)
    if optional and path == role.default and not path.exists():
        return None
    return path


def device_config(args: argparse.Namespace) -> Path:
    path = resolve_config(args, ConfigRole.DEVICE)
    assert path is not None
    return path


def backoffice_config(args: argparse.Namespace) -> Path:
    path = resolve_config(args, ConfigRole.BACKOFFICE)
    assert path is not None
    return path
