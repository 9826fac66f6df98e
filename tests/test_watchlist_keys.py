"""Device/back-office keys, storage keys and sealing (edge/core/keys.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edge.cli.main import main
from edge.core.errors import InputError
from edge.core.keys import (
    DEVICE_X25519,
    CryptoError,
    destroy_storage_key,
    ensure_device_keys,
    generate_backoffice_keys,
    generate_device_keys,
    key_id,
    load_backoffice_keys,
    load_device_keys,
    load_ed25519_public,
    load_public_key,
    load_x25519_public,
    seal,
    storage_key,
    unseal,
)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_device_keys_are_created_once_private_and_reload(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    keys = generate_device_keys(d)
    assert _mode(d) == 0o700
    for p in d.iterdir():
        assert _mode(p) == (0o644 if ".pub." in p.name else 0o600), p.name
    again = load_device_keys(d)
    assert again.x25519_id == keys.x25519_id and again.ed25519_id == keys.ed25519_id
    with pytest.raises(InputError, match="refusing to overwrite"):
        generate_device_keys(d)
    same, created = ensure_device_keys(d)
    assert not created and same.x25519_id == keys.x25519_id
    assert (
        load_x25519_public(d / "device_x25519.pub.pem").public_bytes_raw()
        == keys.x25519_public.public_bytes_raw()
    )
    assert key_id(load_ed25519_public(d / "device_ed25519.pub.pem")) == keys.ed25519_id


def test_group_readable_private_key_is_refused_with_one_line(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    generate_device_keys(d)
    (d / DEVICE_X25519).chmod(0o640)
    with pytest.raises(InputError) as err:
        load_device_keys(d)
    assert "0o640" in str(err.value) and "chmod 600" in str(err.value) and "\n" not in str(err.value)


def test_wrong_key_type_is_named(tmp_path: Path) -> None:
    bo = generate_backoffice_keys(tmp_path / "bo")
    assert load_backoffice_keys(tmp_path / "bo").ed25519_id == bo.ed25519_id
    with pytest.raises(InputError, match="expected an X25519"):
        load_x25519_public(tmp_path / "bo" / "backoffice_ed25519.pub.pem")
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(InputError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pem")


def test_storage_key_is_stable_private_and_shreddable(tmp_path: Path) -> None:
    k1 = storage_key(tmp_path / "data", "watchlist.key")
    assert len(k1) == 32 and storage_key(tmp_path / "data", "watchlist.key") == k1
    assert _mode(tmp_path / "data" / "watchlist.key") == 0o600
    assert storage_key(tmp_path / "data", "storage.key") != k1
    assert destroy_storage_key(tmp_path / "data", "watchlist.key")
    assert not (tmp_path / "data" / "watchlist.key").exists()
    assert storage_key(tmp_path / "data", "watchlist.key") != k1  # a new key: old data is lost


def test_seal_only_opens_for_its_recipient_and_purpose(tmp_path: Path) -> None:
    a, b = generate_device_keys(tmp_path / "a"), generate_device_keys(tmp_path / "b")
    blob = seal(a.x25519_public, b"secret", b"purpose-1", aad=b"route")
    assert unseal(a.x25519, blob, b"purpose-1", aad=b"route") == b"secret"
    for args in [
        (b.x25519, blob, b"purpose-1", b"route"),
        (a.x25519, blob, b"purpose-2", b"route"),
        (a.x25519, blob, b"purpose-1", b"other"),
        (a.x25519, blob[:-1], b"purpose-1", b"route"),
        (a.x25519, b"", b"purpose-1", b"route"),
    ]:
        with pytest.raises(CryptoError):
            unseal(*args)
    assert seal(a.x25519_public, b"secret", b"p") != seal(a.x25519_public, b"secret", b"p")


def test_cli_keys_init_show_and_backoffice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "dev"
    assert main(["keys", "init", "--dir", str(d)]) == 0
    assert "created" in capsys.readouterr().out
    assert main(["keys", "init", "--dir", str(d)]) == 0
    assert "already present" in capsys.readouterr().out
    assert main(["keys", "show", "--dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert load_device_keys(d).x25519_id in out and "BEGIN PUBLIC KEY" in out and "PRIVATE" not in out
    assert main(["backoffice", "init", "--dir", str(tmp_path / "bo")]) == 0
    os.chmod(tmp_path / "bo" / "backoffice_ed25519.pem", 0o644)
    assert main(["backoffice", "show", "--dir", str(tmp_path / "bo")]) == 2
    assert "must be 0600" in capsys.readouterr().err
