"""CLI conventions a script relies on, through the real `lfr-edge` process.

Exit codes (0 ok, 1 runtime failure, 2 bad input, 3 verification failed, 130 interrupted); logs on
stderr with journald priority prefixes under systemd; stdout carries only data.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.core.audit import log as al
from edge.core.audit.log import AuditLog, list_segments
from edge.core.errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, EXIT_VERIFY
from edge.core.keys import public_pem
from edge.lab.localbroker import free_port
from tests.watchlist_kit import device_models, make_kit

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env={**os.environ, **(env or {})}, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def device_config(tmp: Path, broker: str = "mqtt://127.0.0.1:9") -> Path:
    """A device config; it trusts the back-office key of a kit made in `tmp` when there is one."""
    path = tmp / "lfr-edge.yaml"
    data = {
        "device": {"id": "van-9", "data_dir": str(tmp / "data"), "keys_dir": str(tmp / "device-keys")},
        "mqtt": {"brokers": [broker]},
        "alerts": {"allow_unsealed": True, "allow_unsealed_reason": "test rig: no back-office sealing key"},
    }
    signer = tmp / "backoffice-keys" / "backoffice_ed25519.pub.pem"
    if signer.exists():
        # `watchlist install` with no service running: the list is kept on the card (at-rest opt-in).
        data["watchlist"] = {"trusted_signers": [str(signer)], "at_rest": True}
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------------------- exit codes


def test_exit_0_ok_and_2_bad_input(tmp_path: Path) -> None:
    r = cli("keys", "init", "--dir", str(tmp_path / "keys"))
    assert r.returncode == EXIT_OK, r.stderr
    r = cli("check-config", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == EXIT_INPUT and r.stdout == ""
    assert r.stderr.strip() == f"error: {tmp_path / 'missing.yaml'}: config file not found"
    r = cli("watchlist", "build", "--faces", str(tmp_path))  # argparse: required options missing
    assert r.returncode == EXIT_INPUT


def test_exit_1_when_the_broker_never_takes_the_alert(tmp_path: Path) -> None:
    cfg = device_config(tmp_path, f"mqtt://127.0.0.1:{free_port()}")  # nothing listens there
    assert cli("keys", "init", "--config", str(cfg)).returncode == 0
    r = cli("alerts", "test", "--config", str(cfg), "--wait", "1")
    assert r.returncode == EXIT_RUNTIME
    assert "1 message(s) still in the spool" in r.stderr


def test_exit_3_for_a_tampered_audit_log_not_2(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "device_ed25519.pub.pem"
    pub.write_bytes(public_pem(key.public_key()))
    log = AuditLog(tmp_path / "audit", key, checkpoint_every=5, fsync=False)
    for i in range(8):
        log.append(al.ALERT, {"alert_id": f"a-{i}", "subject_id": f"S-{i:04d}"})
    log.close()
    r = cli("audit", "verify", "--dir", str(tmp_path / "audit"), "--pub", str(pub))
    assert r.returncode == EXIT_OK and "INTACT" in r.stdout
    (seg,) = list_segments(tmp_path / "audit")
    seg.write_bytes(seg.read_bytes().replace(b'"S-0003"', b'"S-0007"'))
    r = cli("audit", "verify", "--dir", str(tmp_path / "audit"), "--pub", str(pub), "--json")
    assert r.returncode == EXIT_VERIFY
    assert json.loads(r.stdout)["ok"] is False
    # A log that is not there is an input problem, not tampering.
    assert cli("audit", "verify", "--dir", str(tmp_path / "nowhere")).returncode == EXIT_INPUT


def test_exit_3_for_a_bundle_that_does_not_verify_2_for_one_that_does_not_fit(tmp_path: Path) -> None:
    from edge.core.config import load_config
    kit = make_kit(tmp_path)
    cfg = device_config(tmp_path)
    sha = device_models(load_config(cfg))
    forged = tmp_path / "forged.wl"
    forged.write_bytes(kit.bundle(3, signer=kit.other_device.ed25519, **sha)[0])
    r = cli("watchlist", "install", str(forged), "--config", str(cfg))
    assert r.returncode == EXIT_VERIFY and "(unknown_signer)" in r.stderr and r.stdout == ""
    altered = bytearray(kit.bundle(4, **sha)[0])
    altered[-100] ^= 1
    (tmp_path / "altered.wl").write_bytes(bytes(altered))
    r = cli("watchlist", "install", str(tmp_path / "altered.wl"), "--config", str(cfg))
    assert r.returncode == EXIT_VERIFY and "(bad_signature)" in r.stderr
    other_model = tmp_path / "other-model.wl"  # signed and genuine, but for another embedder
    other_model.write_bytes(kit.bundle(5, embedder="0" * 64)[0])
    r = cli("watchlist", "install", str(other_model), "--config", str(cfg))
    assert r.returncode == EXIT_INPUT and "(model_mismatch)" in r.stderr


def test_status_exits_3_when_the_stored_list_no_longer_verifies(tmp_path: Path) -> None:
    """The installed list's signer was removed from watchlist.trusted_signers: status says so, exit 3."""
    from edge.core.config import load_config

    kit = make_kit(tmp_path)
    cfg = device_config(tmp_path)
    good = tmp_path / "v1.wl"
    good.write_bytes(kit.bundle(1, **device_models(load_config(cfg)))[0])
    assert cli("watchlist", "install", str(good), "--config", str(cfg)).returncode == EXIT_OK
    data = yaml.safe_load(cfg.read_text())
    data["watchlist"]["trusted_signers"] = [str(tmp_path / "other-device-keys" / "device_ed25519.pub.pem")]
    cfg.write_text(yaml.safe_dump(data))
    r = cli("watchlist", "status", "--config", str(cfg), "--json")
    assert r.returncode == EXIT_VERIFY
    status = json.loads(r.stdout)
    assert status["state"] == "unusable" and "(unknown_signer)" in status["error"]


def test_exit_130_when_a_watchlist_build_is_interrupted(tmp_path: Path) -> None:
    """Ctrl-C in the middle of a build: exit 130 and no bundle, never a 0 that looks like success."""
    kit = make_kit(tmp_path)
    faces = tmp_path / "faces" / "S-0001"
    faces.mkdir(parents=True)
    meta = tmp_path / "meta.csv"
    os.mkfifo(meta)  # the build blocks reading it: the test knows the build is under way
    out = tmp_path / "list.wl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "watchlist", "build", "--faces", str(tmp_path / "faces"),
         "--meta", str(meta), "--sign", str(tmp_path / "backoffice-keys"),
         "--to", str(kit.root / "device-keys" / "device_x25519.pub.pem"),
         "--expires", "2099-01-01T00:00:00Z", "--version", "1", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        writer = None
        while writer is None and proc.poll() is None:  # a reader on the FIFO: the build is reading --meta
            try:
                writer = os.open(meta, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                assert e.errno == errno.ENXIO, e  # no reader yet
                time.sleep(0.05)
        assert writer is not None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
        os.close(writer)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == EXIT_INTERRUPTED, proc.stderr.read() if proc.stderr else ""
    assert proc.stderr is not None and proc.stderr.read().strip() == "interrupted"
    assert not out.exists()


# ------------------------------------------------------------------------------- stderr / stdout


def _journal_env(stream: Path) -> dict[str, str]:
    st = os.stat(stream)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_log_lines_carry_journald_priorities_when_stderr_is_the_journal(tmp_path: Path) -> None:
    """Under systemd the error line is <3>, a warning <4>, so `journalctl -p warning` finds them."""
    cfg = device_config(tmp_path, f"mqtt://127.0.0.1:{free_port()}")
    assert cli("keys", "init", "--config", str(cfg)).returncode == 0
    err = tmp_path / "stderr"
    err.touch()
    with err.open("w") as f:
        r = subprocess.run(
            [sys.executable, "-m", "edge", "alerts", "test", "--config", str(cfg), "--wait", "1"],
            stdout=subprocess.PIPE, stderr=f, text=True, cwd=ROOT, timeout=120,
            env={**os.environ, **_journal_env(err)},
        )  # fmt: skip
    lines = err.read_text().splitlines()
    assert r.returncode == EXIT_RUNTIME and r.stdout == ""
    assert lines and all(ln[:3] in ("<3>", "<4>", "<6>", "<7>") for ln in lines), lines
    assert any(ln.startswith("<3>error: 1 message(s) still in the spool") for ln in lines), lines
    assert any(ln.startswith("<3>") and "refused the TCP connection" in ln for ln in lines), lines
    # The same command with stderr elsewhere (a pipe, a file) gets no prefixes, even with the variable set.
    r = cli("alerts", "test", "--config", str(cfg), "--wait", "1", env=_journal_env(err))
    assert "<3>" not in r.stderr and "message(s) still in the spool" in r.stderr


def test_run_logs_to_stderr_with_priorities_and_the_summary_to_stdout(tmp_path: Path) -> None:
    from edge.core.keys import generate_device_keys

    cfg = device_config(tmp_path)
    generate_device_keys(tmp_path / "device-keys")
    import cv2
    import numpy as np

    frames = tmp_path / "frames"
    frames.mkdir()  # a folder of two blank frames: the loop starts and ends at once
    for i in range(2):
        cv2.imwrite(str(frames / f"{i}.png"), np.zeros((240, 320, 3), np.uint8))
    err = tmp_path / "stderr"
    err.touch()
    with err.open("w") as f:
        r = subprocess.run(
            [sys.executable, "-m", "edge", "run", "--config", str(cfg), "--source", f"dir:{frames}"],
            stdout=subprocess.PIPE, stderr=f, text=True, cwd=ROOT, timeout=120,
            env={**os.environ, **_journal_env(err)},
        )  # fmt: skip
    # The TFLite runtime's own C++ line ("INFO: Created TensorFlow Lite XNNPACK delegate") is written
    # straight to fd 2, outside Python logging; journald files an unprefixed line at info, as it is.
    logs = [ln for ln in err.read_text().splitlines() if not ln.startswith("INFO: Created TensorFlow Lite")]
    assert r.returncode == EXIT_OK, logs
    summary = json.loads(r.stdout)  # stdout is the run summary and nothing else
    assert summary["stopped"] is True
    assert any(ln.startswith("<6>") and "camera loop stopped" in ln for ln in logs), logs
    assert all(ln[:3] in ("<3>", "<4>", "<6>", "<7>") for ln in logs), logs


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "show", "--json"],
        ["watchlist", "status", "--json"],
        ["alerts", "spool", "--json"],
    ],
)
def test_stdout_is_only_the_json_document(tmp_path: Path, argv: list[str]) -> None:
    cfg = device_config(tmp_path)
    assert cli("keys", "init", "--config", str(cfg)).returncode == 0
    r = cli(*argv, "--config", str(cfg))
    assert r.returncode == EXIT_OK, r.stderr
    json.loads(r.stdout)


def test_every_reporting_command_prints_one_json_document_with_json(tmp_path: Path) -> None:
    """--json on each command that reports: stdout parses as one JSON document (logs stay on stderr)."""
    from edge.core.config import load_config

    kit = make_kit(tmp_path)
    cfg = device_config(tmp_path)
    bundle = tmp_path / "v1.wl"
    bundle.write_bytes(kit.bundle(1, **device_models(load_config(cfg)))[0])
    key = Ed25519PrivateKey.generate()
    log = AuditLog(tmp_path / "audit", key, checkpoint_every=5, fsync=False)
    log.append(al.SERVICE_START, {"device_id": "van-9", "location": "Test Street"})
    log.close()
    c = str(cfg)
    commands = [
        ["check-config", "--config", c],
        ["keys", "init", "--config", c],
        ["keys", "show", "--config", c],
        ["backoffice", "init", "--dir", str(tmp_path / "bo2")],
        ["backoffice", "show", "--dir", str(tmp_path / "bo2")],
        ["watchlist", "install", str(bundle), "--config", c],
        ["watchlist", "status", "--config", c],
        ["status", "--config", c],
        ["alerts", "spool", "--config", c],
        ["audit", "verify", "--dir", str(tmp_path / "audit")],
        ["deployment", "report", "--dir", str(tmp_path / "audit")],
        ["models", "verify"],
        ["watchlist", "wipe", "--local", "--config", c],
        ["wipe", "--all", "--no-publish", "--config", c],
    ]
    for argv in commands:
        r = cli(*argv, "--json")
        assert r.returncode == EXIT_OK, (argv, r.stderr)
        try:
            json.loads(r.stdout)
        except ValueError as e:
            raise AssertionError(f"{' '.join(argv)} --json: stdout is not one JSON document ({e}): {r.stdout!r}") from e


# ------------------------------------------------------------------------------- command modules


def test_every_command_group_is_registered_and_named_after_its_module() -> None:
    from edge.cli.main import COMMAND_MODULES, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {
        "check-config", "provision", "models", "eval", "run", "status", "keys", "backoffice", "watchlist", "alerts",
        "audit", "deployment", "wipe", "bench", "demo",
    }  # fmt: skip
    named = {m.rsplit(".", 1)[1].replace("config", "check-config") for m in COMMAND_MODULES}
    assert named == set(sub.choices)  # one module per command group, named after it
    backoffice = next(a for a in sub.choices["backoffice"]._actions if isinstance(a, argparse._SubParsersAction))
    assert set(backoffice.choices) == {"init", "show", "serve", "user"}  # one group, one module
    bench = next(a for a in sub.choices["bench"]._actions if isinstance(a, argparse._SubParsersAction))
    assert set(bench.choices) == {"pipeline", "models", "match", "alerts", "recognition", "console"}


@pytest.mark.parametrize("module", ["edge.cli.eval", "edge.cli.deployment", "edge.core.logsetup"])
def test_a_command_module_that_does_not_import_fails_loudly_never_drops_its_commands(module: str) -> None:
    """An ImportError of project code is a bug: the CLI says so and exits 1, even for an unrelated command."""
    code = f"import sys; sys.modules[{module!r}] = None; from edge.cli.main import main; sys.exit(main(['keys', '--help']))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode != EXIT_OK and module in r.stderr, (r.returncode, r.stdout, r.stderr)


# ------------------------------------------------------------------------------- --config


def _config_options(parser: argparse.ArgumentParser, path: str = "lfr-edge") -> Iterator[tuple[str, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _config_options(child, f"{path} {name}")
        elif "--config" in action.option_strings:
            yield path, action.help or ""


def test_every_config_option_states_the_one_rule() -> None:
    from edge.cli.main import build_parser

    options = dict(_config_options(build_parser()))
    assert len(options) >= 20
    for command, text in options.items():
        if command == "lfr-edge bench recognition":
            assert "merged into the bench's device config" in text  # an overlay, not a config file
            continue
        assert "$LFR_EDGE_CONFIG" in text or "$LFR_EDGE_BACKOFFICE_CONFIG" in text, (command, text)
    backoffice = [c for c, t in options.items() if "$LFR_EDGE_BACKOFFICE_CONFIG" in t]
    assert set(backoffice) >= {"lfr-edge alerts listen", "lfr-edge backoffice serve", "lfr-edge backoffice user add"}


def test_config_comes_from_the_flag_then_the_environment_then_etc(tmp_path: Path) -> None:
    cfg = device_config(tmp_path)
    assert cli("keys", "init", "--config", str(cfg)).returncode == 0
    r = cli("keys", "show", "--json", env={"LFR_EDGE_CONFIG": str(cfg)})
    assert r.returncode == EXIT_OK and "ed25519" in json.loads(r.stdout)
    missing = tmp_path / "nowhere.yaml"
    r = cli("keys", "show", "--json", "--config", str(cfg), env={"LFR_EDGE_CONFIG": str(missing)})
    assert r.returncode == EXIT_OK  # the flag wins
    r = cli("keys", "show", env={"LFR_EDGE_CONFIG": str(missing)})
    assert r.returncode == EXIT_INPUT and str(missing) in r.stderr
    r = cli("check-config", "--backoffice", env={"LFR_EDGE_BACKOFFICE_CONFIG": str(missing)})
    assert r.returncode == EXIT_INPUT and str(missing) in r.stderr
    r = cli("check-config", env={"LFR_EDGE_CONFIG": "", "LFR_EDGE_BACKOFFICE_CONFIG": ""})
    assert r.returncode == EXIT_INPUT and "/etc/lfr-edge/lfr-edge.yaml" in r.stderr
