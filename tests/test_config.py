"""Configuration: the example is valid, mistakes are named by key path, secrets are guarded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from edge.core.config import Config, load_config, parse_config
from edge.core.errors import ConfigError
from edge.core.keys import BACKOFFICE_X25519_PUB, generate_backoffice_keys, generate_device_keys

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "lfr-edge.example.yaml"
UNSEALED = {"allow_unsealed": True, "allow_unsealed_reason": "test: no back-office sealing key"}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_example_config_is_ok(tmp_path: Path) -> None:
    # On a device: keys made by setup.sh; check-config also checks they are there, as `run` does.
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["device"].update(data_dir=str(tmp_path / "data"), keys_dir=str(tmp_path / "keys"))
    generate_device_keys(tmp_path / "keys")
    # The example names the back office's sealing key where an installed van has it; here it is made.
    generate_backoffice_keys(tmp_path / "bo")
    doc["alerts"]["seal_to"] = str(tmp_path / "bo" / BACKOFFICE_X25519_PUB)
    cfg = tmp_path / "lfr-edge.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    r = cli("check-config", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK")
    assert "seal_to" not in r.stderr and "at_rest" not in r.stderr  # the example's choices are the safe ones


def test_every_example_key_is_present_and_commented() -> None:
    # Operators configure from this file alone: every key of the schema is in it, with an explanation.
    lines = EXAMPLE.read_text().splitlines()
    prev = ""
    for n, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.startswith("- "):
            _key, _, value = stripped.partition(":")
            documented = "#" in line or prev.startswith("#") or value.strip() == ""
            assert documented, f"line {n} ({stripped}) has no comment"
        if stripped:
            prev = stripped
    data = yaml.safe_load(EXAMPLE.read_text())

    def walk(model: type[BaseModel], node: dict[str, object], path: str) -> None:
        for name, field in model.model_fields.items():
            assert name in node, f"{path}{name} is missing from the example config"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                sub = node[name]
                assert isinstance(sub, dict)
                walk(ann, sub, f"{path}{name}.")

    walk(Config, data, "")


def test_three_mistakes_three_lines_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    generate_device_keys(tmp_path / "keys")
    bad.write_text("device:\n  id: van-01\n  keys_dir: keys\n  colour: blue\ncamera:\n  fps: fast\nmqtt:\n  keepalive_s: 2\n"
                   "alerts:\n  allow_unsealed: true\n  allow_unsealed_reason: bench rig\n")
    r = cli("check-config", "--config", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3, r.stderr
    assert "device.colour" in lines[0] and "unknown key" in lines[0]
    assert "camera.fps" in lines[1] and "'fast'" in lines[1]
    assert "mqtt.keepalive_s" in lines[2] and "2" in lines[2] and ">= 5" in lines[2]


def test_bad_port_in_broker_uri_is_named() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"mqtt": {"brokers": ["mqtts://broker:70000"]}}, ROOT)
    assert e.value.problems == ["mqtt.brokers: 'mqtts://broker:70000' has an invalid port (1-65535)"]


def test_unknown_camera_scheme_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"camera": {"source": "ftp://x"}}, ROOT)
    assert e.value.problems[0].startswith("camera.source: unknown camera source")
    broken = tmp_path / "broken.yaml"
    broken.write_text("device:\n  id: [unclosed\n")
    with pytest.raises(ConfigError) as e2:
        load_config(broken)
    assert "not valid YAML at line" in e2.value.problems[0]


def test_secret_file_with_open_permissions_is_refused(tmp_path: Path) -> None:
    pw = tmp_path / "mqtt.password"
    pw.write_text("s3cret\n")
    pw.chmod(0o644)
    cfg = {"mqtt": {"brokers": ["mqtts://b:8883"], "password_file": "mqtt.password"}}
    with pytest.raises(ConfigError) as e:
        parse_config(cfg, tmp_path)
    assert e.value.problems == [
        "mqtt.password_file: 'mqtt.password' has permissions 0o644; secrets must be 0600 (chmod 600)"
    ]
    pw.chmod(0o600)
    loaded = parse_config(cfg, tmp_path)
    assert loaded.mqtt.password_file == tmp_path / "mqtt.password"  # relative to the config file


def test_missing_referenced_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"alerts": {"seal_to": "nowhere.pem"}}, tmp_path)
    assert e.value.problems == ["alerts.seal_to: 'nowhere.pem' does not exist or is not a file"]


def test_accepting_a_threshold_below_the_floor_needs_a_reason() -> None:
    # The floor itself is the embedder's (tests/test_scoring.py); the config only insists on a reason.
    with pytest.raises(ConfigError) as e:
        parse_config({"matching": {"threshold": 0.4, "allow_below_floor": True}}, ROOT)
    assert "below_floor_reason" in e.value.problems[0]
    ok = parse_config(
        {"matching": {"threshold": 0.4, "allow_below_floor": True, "below_floor_reason": "missing child"}}, ROOT
    )
    assert ok.matching.threshold == 0.4
    with pytest.raises(ConfigError) as e:
        parse_config({"matching": {"operating_point": "lenient"}}, ROOT)
    assert e.value.problems[0].startswith("matching.operating_point:")


def test_config_path_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    generate_device_keys(tmp_path / "keys")
    cfg.write_text(yaml.safe_dump({"device": {"id": "from-env", "keys_dir": "keys"}, "alerts": UNSEALED}))
    env = dict(os.environ, LFR_EDGE_CONFIG=str(cfg))
    r = cli("check-config", env=env)
    assert r.returncode == 0 and str(cfg) in r.stdout
