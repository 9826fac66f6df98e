"""A local rig for the demo and the end-to-end bench: the CLI run as a child, and the device and
back-office configs that put one van and its back office on one test broker.

Both drive the appliance exactly as an operator would (each step an `lfr-edge` process), so what
they show is the shipped path; keeping the wiring here keeps them the same path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from edge.core.errors import RuntimeFailure


def run_cli(*args: str, check: bool = True, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    """`lfr-edge ARGS` in a child process; a failure names the command, its exit code and last lines."""
    r = subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
        raise RuntimeFailure(f"lfr-edge {' '.join(args[:2])} failed (exit {r.returncode}): {tail}")
    return r


def secret_file(path: Path, text: str) -> Path:
    """A secret as the appliance wants it: a 0600 file, never inline in a config."""
    path.write_text(text)
    path.chmod(0o600)
    return path


def device_config(
    device_id: str, dev: Path, bo: Path, broker_uri: str, ca_file: Path, password: str, source: str, location: str
) -> dict[str, Any]:
    """A van's config: keys in dev/keys, lists signed by bo/keys, alerts sealed to the back office."""
    return {
        "device": {"id": device_id, "location": location, "data_dir": str(dev / "data"),
                   "keys_dir": str(dev / "keys")},
        "camera": {"source": source},
        # The rig installs the bundle (`watchlist install`) before `run` starts, so it keeps it on the
        # card (the at-rest opt-in); a van's default holds it in memory only, fetched at start.
        "watchlist": {"trusted_signers": [str(bo / "keys" / "backoffice_ed25519.pub.pem")], "at_rest": True},
        "mqtt": {"brokers": [broker_uri], "username": device_id,
                 "password_file": str(secret_file(dev / "mqtt.password", password)),
                 "tls": {"ca_file": str(ca_file)}},
        "alerts": {"seal_to": str(bo / "keys" / "backoffice_x25519.pub.pem")},
        "logging": {"level": "WARNING", "format": "text"},
    }  # fmt: skip


def backoffice_config(
    device_id: str, dev: Path, bo: Path, broker_uri: str, ca_file: Path, password: str
) -> dict[str, Any]:
    """The back office's listener config: that van registered, alerts unsealed with bo/keys."""
    return {
        "brokers": [broker_uri], "username": "backoffice",
        "password_file": str(secret_file(bo / "mqtt.password", password)),
        "tls": {"ca_file": str(ca_file)}, "unseal_key": str(bo / "keys"),
        "devices": {device_id: {"public_key": str(dev / "keys" / "device_ed25519.pub.pem")}},
    }  # fmt: skip
