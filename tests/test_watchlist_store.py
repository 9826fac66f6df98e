"""Installing, storing, loading and wiping the device's watchlist (edge/device/watchlist/store.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from edge.core.errors import InputError
from edge.core.watchlist.bundle import BundleError, Reason
from edge.device.status import WatchlistState
from edge.device.watchlist.store import WatchlistHolder, describe
from tests.watchlist_kit import EMBEDDER, Kit, make_kit

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def kit(tmp_path: Path) -> Kit:
    return make_kit(tmp_path)


def _files(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.is_file()]


def test_install_then_reload_from_disk(kit: Kit) -> None:
    data, templates = kit.bundle(1)
    store = kit.store()
    wl = store.install(data)
    assert store.holder.current() is wl
    fresh = kit.store()
    loaded = fresh.load()
    assert loaded is not None and loaded.version == 1
    np.testing.assert_allclose(loaded.templates, templates, atol=1e-6)
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    assert os.stat(kit.data_dir / "watchlist.key").st_mode & 0o777 == 0o600
    assert os.stat(kit.data_dir).st_mode & 0o777 == 0o700
    assert [k for k, _ in kit.events] == ["installed"]
    assert kit.events[0][1]["version"] == 1 and "templates" in kit.events[0][1]


def test_no_file_under_the_data_dir_holds_plaintext_templates(kit: Kit) -> None:
    data, templates = kit.bundle(1, n_subjects=6, per_subject=2)
    store = kit.store()
    store.install(data)
    wl = store.holder.current()
    assert wl is not None
    needles = [row.tobytes() for row in wl.templates] + [
        row.astype(np.float16).tobytes() for row in templates
    ]
    needles += [row[:4].tobytes() for row in wl.templates]  # even 16-byte fragments
    needles += [s.subject_id.encode() for s in wl.subjects]
    files = _files(kit.data_dir)
    assert store.path in files
    for p in files:
        blob = p.read_bytes()
        for n in needles:
            assert n not in blob, f"{p.name} holds plaintext watchlist bytes"


@pytest.mark.parametrize("case", ["flip", "other_device", "rollback", "expired", "model", "unknown_signer"])
def test_refusal_keeps_the_previous_list_in_force(kit: Kit, case: str) -> None:
    store = kit.store()
    good, _ = kit.bundle(5)
    store.install(good)
    before = store.path.read_bytes()
    if case == "flip":
        b, _ = kit.bundle(6)
        bad = bytearray(b)
        bad[len(bad) // 2] ^= 1
        bad_bytes, reason = bytes(bad), Reason.BAD_SIGNATURE
    elif case == "other_device":
        bad_bytes, reason = (
            kit.bundle(6, recipients=[kit.other_device.x25519_public])[0],
            Reason.NOT_ADDRESSED,
        )
    elif case == "rollback":
        bad_bytes, reason = kit.bundle(4)[0], Reason.ROLLBACK
    elif case == "expired":
        bad_bytes, reason = kit.bundle(6, expires_in=-1.0)[0], Reason.EXPIRED
    elif case == "model":
        bad_bytes, reason = kit.bundle(6, embedder="cd" * 32)[0], Reason.MODEL_MISMATCH
    else:
        bad_bytes, reason = kit.bundle(6, signer=kit.other_device.ed25519)[0], Reason.UNKNOWN_SIGNER
    with pytest.raises(BundleError) as err:
        store.install(bad_bytes)
    assert err.value.reason == reason
    current = store.holder.current()
    assert current is not None and current.version == 5
    assert store.path.read_bytes() == before
    reloaded = kit.store().load()
    assert reloaded is not None and reloaded.version == 5
    assert kit.events[-1][0] == "refused" and kit.events[-1][1]["reason"] == reason


def test_rollback_protection_survives_a_wipe(kit: Kit) -> None:
    store = kit.store()
    store.install(kit.bundle(3)[0])
    assert store.wipe()
    with pytest.raises(BundleError) as err:
        store.install(kit.bundle(3)[0])
    assert err.value.reason == Reason.ROLLBACK
    assert store.install(kit.bundle(4)[0]).version == 4


def test_crash_before_rename_leaves_previous_list(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    store = kit.store()
    store.install(kit.bundle(1)[0])
    real_replace = os.replace

    def crash(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device (injected)")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.install(kit.bundle(2)[0])
    monkeypatch.setattr(os, "replace", real_replace)
    current = store.holder.current()
    assert current is not None and current.version == 1
    loaded = kit.store().load()
    assert loaded is not None and loaded.version == 1
    assert not [p for p in _files(kit.data_dir) if ".tmp-" in p.name]


def test_process_killed_between_write_and_rename(kit: Kit, tmp_path: Path) -> None:
    """A real SIGKILL of the installing process after the temp file is written and fsynced."""
    store = kit.store()
    store.install(kit.bundle(1)[0])
    v2 = tmp_path / "v2.bundle"
    v2.write_bytes(kit.bundle(2)[0])
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from edge.core.keys import load_device_keys, load_ed25519_public
        from edge.device.watchlist.store import WatchlistStore
        store = WatchlistStore({str(store.path)!r}, load_device_keys({str(kit.root / "device-keys")!r}),
                               [load_ed25519_public({str(kit.root / "backoffice-keys" / "backoffice_ed25519.pub.pem")!r})],
                               {EMBEDDER!r}, at_rest=True)
        store.load()
        def die(src, dst):
            if str(dst) == str(store.path):
                assert os.path.getsize(src) > 0
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        real, os.replace = os.replace, die
        store.install(open({str(v2)!r}, "rb").read())
        print("not killed")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    leftovers = [p for p in _files(kit.data_dir) if ".tmp-" in p.name]
    assert leftovers, "the killed installer should have left its temp file behind"
    fresh = kit.store()
    loaded = fresh.load()
    assert loaded is not None and loaded.version == 1
    assert not [p for p in _files(kit.data_dir) if ".tmp-" in p.name]  # cleaned on load
    assert fresh.install(v2.read_bytes()).version == 2


def test_wipe_deletes_list_and_storage_key(kit: Kit) -> None:
    store = kit.store()
    store.install(kit.bundle(1)[0])
    stolen = store.path.read_bytes()
    assert store.wipe()
    assert store.holder.current() is None
    assert not store.path.exists() and not (kit.data_dir / "watchlist.key").exists()
    assert kit.store().load() is None
    # A copy of the store file taken before the wipe is useless: its key is gone.
    store.path.write_bytes(stolen)
    with pytest.raises(InputError, match="storage key is gone"):
        kit.store().load()
    assert kit.events[-1][0] == "wiped" and kit.events[-1][1]["version"] == 1


def test_altered_store_file_is_refused_on_load(kit: Kit) -> None:
    store = kit.store()
    store.install(kit.bundle(1)[0])
    b = bytearray(store.path.read_bytes())
    b[100] ^= 1
    store.path.write_bytes(bytes(b))
    with pytest.raises(InputError, match="failed authentication"):
        kit.store().load()


def test_expired_list_loads_but_reports_expired_once(kit: Kit) -> None:
    now = [0.0]
    import time

    now[0] = time.time()
    store = kit.store(clock=lambda: now[0])
    wl = store.install(kit.bundle(1, expires_in=100.0)[0])
    assert not store.check_expiry() and store.status().state is WatchlistState.ACTIVE
    now[0] = wl.expires_at + 1
    assert store.check_expiry() and store.check_expiry()
    assert [k for k, _ in kit.events].count("expired") == 1
    assert store.status().state is WatchlistState.EXPIRED
    assert kit.store().load() is not None  # still loads so status can say "expired"


def test_status_never_shows_templates_or_subject_ids(kit: Kit) -> None:
    store = kit.store()
    wl = store.install(kit.bundle(2)[0])
    text = repr(describe(wl))
    assert "subject-2" not in text and "templates" in text
    assert set(describe(wl)) == {
        "state",
        "version",
        "subjects",
        "templates",
        "created_at",
        "expires_at",
        "signer",
        "embedder_sha256",
    }


def test_holder_swap_is_seen_by_matcher_and_listeners(kit: Kit) -> None:
    holder = WatchlistHolder()
    seen: list[int | None] = []
    holder.subscribe(lambda wl: seen.append(None if wl is None else wl.version))
    store = kit.store(holder=holder)
    assert holder.matcher(0.5) is None
    wl1 = store.install(kit.bundle(1)[0])
    m1 = holder.matcher(0.5)
    assert m1 is not None and m1 is holder.matcher(0.5) and m1.watchlist is wl1
    probe = wl1.templates[2]
    match = m1.match(probe)
    assert match is not None and match.subject.subject_id == "subject-1-1"
    store.install(kit.bundle(2)[0])
    m2 = holder.matcher(0.5)
    assert m2 is not None and m2.watchlist.version == 2
    store.wipe()
    assert holder.matcher(0.5) is None
    assert seen == [None, 1, 2, None]


def test_concurrent_readers_never_see_a_half_list(kit: Kit) -> None:
    store = kit.store()
    store.install(kit.bundle(1, n_subjects=20)[0])
    bundles = [kit.bundle(v, n_subjects=20)[0] for v in range(2, 8)]
    bad: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            m = store.holder.matcher(0.5)
            if m is None or m.watchlist.templates.shape != (40, 128) or len(m.watchlist.subjects) != 20:
                bad.append("inconsistent")

    t = threading.Thread(target=reader)
    t.start()
    for b in bundles:
        store.install(b)
    stop.set()
    t.join()
    assert not bad
    assert store.holder.current() is not None and store.holder.current().version == 7  # type: ignore[union-attr]


def test_expired_list_never_matches_even_a_perfect_probe(kit: Kit) -> None:
    import time

    store = kit.store()
    wl = store.install(kit.bundle(1, expires_in=60.0)[0])
    m = store.holder.matcher(0.5)
    assert m is not None
    assert m.match(wl.templates[0], now=time.time()) is not None
    assert m.match(wl.templates[0], now=wl.expires_at) is None
    assert m.match(wl.templates[0], now=wl.expires_at + 3600) is None
