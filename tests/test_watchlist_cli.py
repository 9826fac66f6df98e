"""`lfr-edge watchlist install|status|wipe --local` on a device config (no models needed to run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.cli.main import main
from edge.core.config import load_config
from tests.watchlist_kit import Kit, device_models, make_kit


@pytest.fixture
def device(tmp_path: Path) -> tuple[Kit, Path, dict[str, Any]]:
    kit = make_kit(tmp_path)
    cfg = {
        "device": {
            "id": "van7",
            "data_dir": str(tmp_path / "data"),
            "keys_dir": str(tmp_path / "device-keys"),
        },
        # No service runs here: `watchlist install` keeps the list on the card (the at-rest opt-in);
        # the memory-only default is tests/test_at_rest.py's.
        "watchlist": {
            "trusted_signers": [str(tmp_path / "backoffice-keys" / "backoffice_ed25519.pub.pem")],
            "at_rest": True,
        },
    }
    path = tmp_path / "lfr-edge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return kit, path, device_models(load_config(path))


def test_install_status_and_local_wipe(
    device: tuple[Kit, Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    kit, cfg, sha = device
    assert main(["watchlist", "status", "--config", str(cfg)]) == 0
    assert "no watchlist installed" in capsys.readouterr().out

    bundle = kit.root / "v3.wl"
    bundle.write_bytes(kit.bundle(3, n_subjects=5, per_subject=2, **sha)[0])
    assert main(["watchlist", "install", str(bundle), "--config", str(cfg)]) == 0
    assert "installed watchlist version 3: 5 subjects, 10 templates" in capsys.readouterr().out

    assert main(["watchlist", "status", "--config", str(cfg), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "active" and status["version"] == 3 and status["templates"] == 10
    assert status["signer"] == kit.backoffice.ed25519_id

    assert main(["watchlist", "status", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "watchlist active: version 3" in out and "subject-3" not in out

    # Refusals: one line on stderr, exit 2, the installed list unchanged.
    old = kit.root / "v2.wl"
    old.write_bytes(kit.bundle(2, **sha)[0])
    assert main(["watchlist", "install", str(old), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.splitlines()
    # The error is one line; the other says the command acted on the store (no service runs here).
    assert len(err) == 2 and "no lfr-edge service is running" in err[0] and "(rollback)" in err[1]
    wrong_model = kit.root / "v4.wl"
    wrong_model.write_bytes(kit.bundle(4, embedder="0" * 64)[0])
    assert main(["watchlist", "install", str(wrong_model), "--config", str(cfg)]) == 2
    assert "(model_mismatch)" in capsys.readouterr().err
    assert main(["watchlist", "status", "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 3

    assert main(["watchlist", "wipe", "--local", "--config", str(cfg)]) == 0
    assert "wiped" in capsys.readouterr().out
    assert main(["watchlist", "status", "--config", str(cfg)]) == 0
    assert "no watchlist installed" in capsys.readouterr().out
    assert not (kit.root / "data" / "watchlist.key").exists()


def test_install_of_missing_file_is_one_line(
    device: tuple[Kit, Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, cfg, _ = device
    assert main(["watchlist", "install", "/nonexistent.wl", "--config", str(cfg)]) == 2
    assert "cannot read bundle" in capsys.readouterr().err
