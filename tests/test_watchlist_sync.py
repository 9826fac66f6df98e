"""Automatic sync: inbox directory, retained MQTT bundle on a real Mosquitto, signed wipe commands."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.cli.main import main
from edge.core.errors import EXIT_VERIFY
from edge.core.mqtt import LinkSettings, MqttLink
from edge.core.watchlist.bundle import Reason
from edge.device.watchlist.sync import CommandError, CommandVerifier, WatchlistSync, make_command, open_ack
from tests.broker import (  # noqa: F401  (broker_factory is a fixture)
    BACKOFFICE_USER,
    DEVICE_USERS,
    BrokerFactory,
    MosquittoBroker,
    broker_factory,
)
from tests.watchlist_kit import Kit, make_kit

DEVICE = "dev-a"
PREFIX = f"lfr/{DEVICE}"


@pytest.fixture
def kit(tmp_path: Path) -> Kit:
    return make_kit(tmp_path)


def _sync(kit: Kit, **kw: object) -> WatchlistSync:
    store = kit.store()
    store.load()
    return WatchlistSync(
        store,
        DEVICE,
        PREFIX,
        kit.device,
        [kit.backoffice.ed25519_public],
        **kw,  # type: ignore[arg-type]
    )


def _wait(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


# --------------------------------------------------------------------------- inbox


def test_inbox_installs_good_bundles_and_sets_bad_ones_aside(kit: Kit, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    sync = _sync(kit, inbox_dir=inbox, inbox_settle_s=0.0)
    (inbox / "a.wl").write_bytes(kit.bundle(3)[0])
    (inbox / "copying.wl.part").write_bytes(b"half")
    out = sync.poll_inbox()
    assert [o.action for o in out] == ["installed"]
    assert sync.store.holder.current() is not None and sync.store.holder.current().version == 3  # type: ignore[union-attr]
    assert not (inbox / "a.wl").exists() and (inbox / "copying.wl.part").exists()

    (inbox / "old.wl").write_bytes(kit.bundle(2)[0])
    out = sync.poll_inbox()
    assert [(o.action, o.reason) for o in out] == [("refused", Reason.ROLLBACK)]
    assert (inbox / "rejected" / "old.wl").exists()
    assert "rollback" in (inbox / "rejected" / "old.wl.reason.txt").read_text()
    assert sync.store.holder.current().version == 3  # type: ignore[union-attr]


def test_inbox_waits_for_a_file_to_settle_and_refuses_oversize(kit: Kit, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    sync = _sync(kit, inbox_dir=inbox, inbox_settle_s=3600.0)
    (inbox / "new.wl").write_bytes(kit.bundle(1)[0])
    assert sync.poll_inbox() == []  # just written: maybe still being copied
    sync.inbox_settle_s = 0.0
    sync.store.max_bytes = 100
    out = sync.poll_inbox()
    assert [(o.action, o.reason) for o in out] == [("refused", Reason.OVERSIZE)]
    assert kit.events[-1][0] == "refused" and kit.events[-1][1]["reason"] == Reason.OVERSIZE


def test_sync_thread_polls_the_inbox(kit: Kit, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    sync = _sync(kit, inbox_dir=inbox, inbox_settle_s=0.0).start(poll_interval_s=0.1)
    try:
        (inbox / ".x.tmp").write_bytes(b"")
        p = inbox / ".incoming"
        p.write_bytes(kit.bundle(9)[0])
        p.rename(inbox / "v9.wl")  # the documented way to drop a file in: write aside, rename in
        assert _wait(lambda: sync.store.holder.current() is not None)
        assert sync.store.holder.current().version == 9  # type: ignore[union-attr]
    finally:
        sync.stop()


# --------------------------------------------------------------------------- commands


def test_signed_wipe_command_wipes_and_is_not_replayable(kit: Kit) -> None:
    sync = _sync(kit)
    sync.store.install(kit.bundle(1)[0])
    cmd = make_command(kit.backoffice.ed25519, DEVICE)
    assert sync.handle_command(cmd).action == "wiped"
    assert sync.store.holder.current() is None and not sync.store.path.exists()
    sync.store.install(kit.bundle(2)[0])
    replay = sync.handle_command(cmd)
    assert (replay.action, replay.reason) == ("refused", "replay")
    assert sync.store.holder.current() is not None  # the replay did nothing


@pytest.mark.parametrize("case", ["other_device", "forged", "tampered", "expired", "garbage", "future"])
def test_bad_commands_are_refused_and_list_stays(kit: Kit, case: str) -> None:
    sync = _sync(kit)
    sync.store.install(kit.bundle(1)[0])
    bo = kit.backoffice.ed25519
    if case == "other_device":
        cmd, reason = make_command(bo, "dev-b"), "not_addressed"
    elif case == "forged":
        cmd, reason = make_command(kit.device.ed25519, DEVICE), "unknown_signer"
    elif case == "tampered":
        c = bytearray(make_command(bo, DEVICE))
        i = c.index(b'"body":"') + 20
        c[i] = ord("A") if c[i] != ord("A") else ord("B")
        cmd, reason = bytes(c), "bad_signature"
    elif case == "expired":
        cmd, reason = make_command(bo, DEVICE, now=time.time() - 7200, validity_s=3600), "expired"
    elif case == "future":
        cmd, reason = make_command(bo, DEVICE, now=time.time() + 3600), "future"
    else:
        cmd, reason = os.urandom(300), "corrupt"
    out = sync.handle_command(cmd)
    assert (out.action, out.reason) == ("refused", reason)
    assert sync.store.holder.current() is not None


def test_command_replay_state_survives_restart(kit: Kit, tmp_path: Path) -> None:
    state = tmp_path / "cmd.state"
    cmd = make_command(kit.backoffice.ed25519, DEVICE)
    CommandVerifier([kit.backoffice.ed25519_public], DEVICE, state).verify(cmd)
    from edge.device.watchlist.sync import CommandError

    with pytest.raises(CommandError, match="replay"):
        CommandVerifier([kit.backoffice.ed25519_public], DEVICE, state).verify(cmd)


# --------------------------------------------------------------------------- real Mosquitto


def _device_link(broker: MosquittoBroker) -> MqttLink:
    tls = broker.uri.startswith("mqtts")
    return MqttLink(
        LinkSettings(
            brokers=(broker.uri,),
            client_id=f"{DEVICE}-{os.getpid()}-{time.monotonic_ns()}",
            username=DEVICE if tls else None,
            password=DEVICE_USERS[DEVICE] if tls else None,
            ca_file=broker.ca_file if tls else None,
            reconnect_max_s=1.0,
        )
    )


def _backoffice_args(broker: MosquittoBroker, tmp_path: Path) -> list[str]:
    args = ["--broker", broker.uri]
    if broker.uri.startswith("mqtts"):
        pw = tmp_path / "bo.pass"
        pw.write_text(DEVICE_USERS[BACKOFFICE_USER] + "\n")
        pw.chmod(0o600)
        args += ["--ca", str(broker.ca_file), "--username", BACKOFFICE_USER, "--password-file", str(pw)]
    return args


@pytest.fixture(params=["plain", "tls_acl"])
def broker(request: pytest.FixtureRequest, broker_factory: BrokerFactory) -> MosquittoBroker:  # noqa: F811
    """Plain and anonymous; or TLS with passwords and the ACL where a device may touch only lfr/<id>/#."""
    if request.param == "plain":
        return broker_factory(tls=False, users=None)
    return broker_factory(tls=True, users=DEVICE_USERS)


def test_mqtt_retained_bundle_then_signed_wipe_end_to_end(
    kit: Kit,
    tmp_path: Path,
    broker: MosquittoBroker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bo_args = _backoffice_args(broker, tmp_path)
    bundle = tmp_path / "v1.wl"
    bundle.write_bytes(kit.bundle(1)[0])
    # Back office publishes the bundle retained while the device is offline.
    assert main(["watchlist", "publish", str(bundle), "--device", DEVICE, *bo_args]) == 0

    link = _device_link(broker)
    sync = _sync(kit)
    sync.attach(link)
    sync.start(poll_interval_s=0.2)
    link.start()
    try:
        assert _wait(lambda: sync.store.holder.current() is not None), "retained bundle never installed"
        assert sync.store.holder.current().version == 1  # type: ignore[union-attr]

        # A newer bundle replaces it live.
        bundle2 = tmp_path / "v2.wl"
        bundle2.write_bytes(kit.bundle(2)[0])
        assert main(["watchlist", "publish", str(bundle2), "--device", DEVICE, *bo_args]) == 0
        assert _wait(lambda: getattr(sync.store.holder.current(), "version", None) == 2)

        # Signed wipe; the CLI waits for the device's signed confirmation.
        rc = main(
            [
                "watchlist",
                "wipe",
                "--device",
                DEVICE,
                "--sign",
                str(kit.root / "backoffice-keys"),
                *bo_args,
                "--device-pub",
                str(kit.root / "device-keys" / "device_ed25519.pub.pem"),
                "--wait",
                "20",
            ]
        )
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "confirmed: wiped version 2 (verified)" in out
        assert sync.store.holder.current() is None and not sync.store.path.exists()
        assert any(o.action == "wiped" for o in sync.outcomes)
    finally:
        sync.stop()
        link.stop(offline_status=False)

    # After the wipe the broker holds no retained bundle or command: a reconnecting device stays empty.
    link2 = _device_link(broker)
    seen: list[str] = []
    link2.subscribe(f"{PREFIX}/#", lambda m: seen.append(m.topic) if m.payload else None, 1)
    link2.start()
    try:
        assert link2.wait_connected(10)
        time.sleep(1.0)
        assert not [t for t in seen if t in (f"{PREFIX}/watchlist", f"{PREFIX}/cmd")]
    finally:
        link2.stop(offline_status=False)


def test_wipe_whose_confirmation_does_not_verify_exits_3(
    kit: Kit, tmp_path: Path, broker_factory: BrokerFactory, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    """The device confirms, but not with the key the back office holds for it: verification failed (3),
    not a timeout (1) and never a success."""
    broker = broker_factory(tls=False, users=None)
    link = _device_link(broker)
    sync = _sync(kit)
    sync.store.install(kit.bundle(1)[0])
    sync.attach(link)
    sync.start(poll_interval_s=0.2)
    link.start()
    try:
        assert link.wait_connected(10)
        rc = main(["watchlist", "wipe", "--device", DEVICE, "--sign", str(kit.root / "backoffice-keys"),
                   "--broker", broker.uri, "--wait", "5",
                   "--device-pub", str(kit.root / "other-device-keys" / "device_ed25519.pub.pem")])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == EXIT_VERIFY, err
        assert "does not verify with --device-pub" in err
        assert any(o.action == "wiped" for o in sync.outcomes)  # the device did wipe; the proof is what failed
    finally:
        sync.stop()
        link.stop(offline_status=False)


def test_ack_verifies_only_with_the_device_key(kit: Kit) -> None:
    from edge.device.watchlist.sync import ACK_FORMAT, CommandError, _signed_envelope

    ack = _signed_envelope(ACK_FORMAT, {"result": "wiped", "nonce": "n1"}, kit.device.ed25519)
    assert open_ack(ack, kit.device.ed25519_public)["result"] == "wiped"
    with pytest.raises(CommandError):
        open_ack(ack, kit.other_device.ed25519_public)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048) | st.text(max_size=300).map(str.encode))
def test_fuzz_command_parser_never_crashes(kit: Kit, data: bytes) -> None:
    verifier = CommandVerifier([kit.backoffice.ed25519_public], DEVICE, kit.root / "fuzz-cmd.state")
    with pytest.raises(CommandError):
        verifier.verify(data)
