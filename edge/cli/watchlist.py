"""`lfr-edge watchlist build|install|status|wipe|publish`.

build and publish/wipe (remote) run in the back office; install, status and wipe --local on the device,
where they act on the running service through its control socket (edge.device.control) and on the
store directly only when no service runs.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.cli.options import add_config_option, resolve_config
from edge.core.config import Config, ConfigRole
from edge.core.errors import EXIT_OK, EXIT_RUNTIME, EXIT_VERIFY, InputError, RuntimeFailure, VerificationFailed
from edge.core.logsetup import say

if TYPE_CHECKING:
    from edge.backoffice.enrolment.report import EnrolReport
    from edge.device.watchlist.store import WatchlistStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("watchlist", help="enrol, install, inspect and wipe the encrypted watchlist")
    ws = p.add_subparsers(dest="watchlist_cmd", metavar="ACTION", required=True)

    b = ws.add_parser("build", help="back office: enrol custody images into a signed, encrypted bundle")
    b.add_argument("--faces", required=True, help="folder with one sub-folder of images per subject")
    b.add_argument("--meta", help="CSV: subject_id,category,priority,threshold (all but the id optional)")
    b.add_argument("--sign", required=True, help="back-office Ed25519 private key (file or keys directory)")
    b.add_argument(
        "--to",
        action="append",
        required=True,
        metavar="DEVICE_PUB",
        help="recipient device X25519 public key (PEM); repeat for each device",
    )
    b.add_argument("--expires", required=True, help="expiry, ISO 8601 with zone (e.g. 2026-12-01T06:00:00Z)")
    b.add_argument("--version", type=int, required=True, help="bundle version; must grow with each bundle")
    b.add_argument("--out", required=True, help="bundle file to write")
    b.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="template precision")
    b.add_argument("--models-dir", help="models directory (default: the shipped models)")
    b.add_argument("--embedder", help="embedder model id, as on the devices (default: from --config)")
    b.add_argument("--detector", help="detector model id (default: from --config)")
    add_config_option(b, ConfigRole.DEVICE, "device config the vans run: quality gates and models", optional=True)
    b.add_argument("--json", action="store_true", help="per-image and per-subject report as JSON on stdout")
    b.add_argument(
        "--strict",
        action="store_true",
        help="build nothing (exit 2) unless every subject has a usable template; "
        "default: build from the usable subjects and report the rest",
    )
    b.add_argument(
        "--keep-inconsistent",
        action="append",
        metavar="SUBJECT/IMAGE",
        help="keep this image although it does not match its subject's other images "
        "(after a person has checked it); repeat for each image",
    )
    b.set_defaults(handler=_build)

    i = ws.add_parser(
        "install",
        help="verify a bundle and install it on this device (watchlist.at_rest: false: hand it to the "
        "running service through watchlist.inbox_dir; it is then held in memory only)",
    )
    i.add_argument("file", help="bundle file")
    add_config_option(i)
    i.add_argument(
        "--wait", type=float, default=15.0,
        help="memory-only devices: seconds to wait for the running service to take the bundle (default 15)",
    )  # fmt: skip
    i.add_argument("--json", action="store_true")
    i.set_defaults(handler=_install)

    s = ws.add_parser("status", help="installed watchlist: version, subjects, templates, expiry, signer")
    add_config_option(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=_status)

    w = ws.add_parser("wipe", help="back office: send a signed wipe command to a device (or --local)")
    w.add_argument("--local", action="store_true", help="wipe this device's list now (uses --config)")
    add_config_option(w, ConfigRole.DEVICE, "device config (with --local)")
    w.add_argument("--device", help="device id to wipe")
    w.add_argument("--sign", help="back-office Ed25519 private key (file or keys directory)")
    _broker_args(w)
    w.add_argument("--device-pub", help="device Ed25519 public key, to verify its confirmation")
    w.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the confirmation (0: none)")
    w.add_argument("--validity", type=float, default=24 * 3600.0, help="seconds the command stays valid")
    w.add_argument("--json", action="store_true", help="one JSON document with the outcome")
    w.set_defaults(handler=_wipe)

    pub = ws.add_parser("publish", help="back office: publish a bundle as the device's retained watchlist")
    pub.add_argument("file", help="bundle file")
    pub.add_argument("--device", required=True, action="append", help="device id; repeat for each device")
    _broker_args(pub)
    pub.add_argument("--force", action="store_true",
                     help="publish even when the topic already holds this version or a newer one")
    pub.add_argument("--wait", type=float, nargs="?", const=PUBLISH_WAIT_S, default=None, metavar="SECONDS",
                     help=f"wait (default {PUBLISH_WAIT_S:.0f} s) for each device to report the version it "
                          "installed or its refusal; exit 3 if any refused, 1 if any did not answer")
    pub.add_argument("--json", action="store_true", help="one JSON document with the outcome")
    pub.set_defaults(handler=_publish)


PUBLISH_WAIT_S = 60.0
RETAINED_WAIT_S = 3.0  # a retained message arrives right after the subscription; none means none


def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--ca", help="CA certificate for mqtts")
    p.add_argument("--username", help="MQTT user name")
    p.add_argument("--password-file", help="file holding the MQTT password")
    p.add_argument("--prefix", default="lfr/{device_id}", help="topic prefix (default lfr/{device_id})")


# --------------------------------------------------------------------------- device side


def _device_config(config: str | None) -> Config:
    from edge.core.config import load_config

    return load_config(config)


def _device_store(config: str | None, cfg: Config | None = None) -> WatchlistStore:
    from edge.device.watchlist.store import store_from_config

    return store_from_config(cfg if cfg is not None else _device_config(config))


MEMORY_ONLY_NOTE = (
    "held in memory only (watchlist.at_rest: false): after a restart the device has no list "
    "until the broker re-delivers the retained bundle"
)


def _hand_to_service(args: argparse.Namespace, cfg: Config, store: WatchlistStore, path: Path, data: bytes) -> int:
    """Memory-only device whose service does not answer on its control socket (this user may not
    open it): this command's memory is not the service's. Verify here (a refusal is exit 2 at once),
    then give the bundle to the running service through its inbox and wait until it is taken. A bundle nobody takes is removed again: on the card it could be opened with the
    device key that lies beside it."""
    from edge.device.watchlist.store import describe

    inbox = cfg.watchlist.inbox_dir
    if inbox is None:
        raise InputError(
            "watchlist.inbox_dir is not set: with watchlist.at_rest: false only the running service holds "
            "the list; set inbox_dir, or publish the bundle retained (watchlist publish)"
        )
    wl = store.verify(data, source=f"cli:{path.name}")
    inbox.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = f"cli-{os.getpid()}-{path.name}"
    part, final = inbox / f".{name}.part", inbox / name
    with open(part, "wb", opener=lambda p, f: os.open(p, f, 0o600)) as out:
        out.write(data)
    os.replace(part, final)  # the inbox only sees whole files
    rejected = inbox / "rejected" / f"{name}.reason.txt"
    deadline = time.monotonic() + max(0.0, args.wait)
    while final.exists() and not rejected.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if rejected.exists():
        raise InputError(f"the running service refused it: {rejected.read_text().strip()}")
    if final.exists():
        with contextlib.suppress(FileNotFoundError):
            final.unlink()
        raise RuntimeFailure(
            f"no running service took the bundle from {inbox} within {args.wait:g} s; removed it again "
            "(start the service, or publish the bundle retained)"
        )
    info = {**describe(wl), "at_rest": False, "handed_to": "running service"}
    if args.json:
        print(json.dumps(info))
    else:
        print(
            f"installed watchlist version {wl.version} in the running service: {info['subjects']} subjects, "
            f"{info['templates']} templates, expires {info['expires_at']}, signer {info['signer']}; {MEMORY_ONLY_NOTE}"
        )
    return EXIT_OK


def _read_bundle(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read bundle ({e.strerror})") from None


def _read_install_bundle(path: Path, limit: int) -> bytes:
    """A regular file's bytes, its size checked before reading and the read stopped past `limit`:
    an 8 GiB file or /dev/zero is refused without being read."""
    from edge.core.watchlist.bundle import BundleError, Reason

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise InputError(f"{path}: cannot read bundle ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: not a regular file; a bundle is installed from a file")
        too_big = f"{path}: more than the {limit}-byte limit (watchlist.max_bundle_mb)"
        if st.st_size > limit:
            raise BundleError(Reason.OVERSIZE, f"{path}: {st.st_size} bytes is more than the {limit}-byte limit (watchlist.max_bundle_mb)")
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise InputError(f"{path}: cannot read bundle ({e.strerror})") from None
    if len(data) > limit:
        raise BundleError(Reason.OVERSIZE, too_big)
    return data


def _install(args: argparse.Namespace) -> int:
    """To the running service when one answers (it matches against the new list from its next
    frame); when none runs, straight into the store (at rest) or through the inbox (memory-only)."""
    from edge.cli.service import ask_service
    from edge.core.watchlist.bundle import BundleError
    from edge.device.control import Command, ControlRequest
    from edge.device.watchlist.store import describe

    path = Path(args.file)
    cfg = _device_config(args.config)
    source = f"cli:{path.name}"
    try:
        data = _read_install_bundle(path, int(cfg.watchlist.max_bundle_mb * (1 << 20)))
    except BundleError as e:
        _device_store(args.config).report_refusal(e, source)
        raise
    fallback = "installing into the store directly" if cfg.watchlist.at_rest else "handing it over through the inbox"
    answer = ask_service(cfg, ControlRequest(Command.INSTALL, source, data), fallback)
    if answer is not None:
        info = answer.watchlist or {}
        if not cfg.watchlist.at_rest:
            info = {**info, "at_rest": False, "handed_to": "running service"}
    else:
        store = _device_store(args.config, cfg)
        if not store.at_rest:
            return _hand_to_service(args, cfg, store, path, data)
        try:
            store.load()
        except InputError as e:  # a damaged stored list must not block installing a good one
            say(f"warning: the stored watchlist is unusable ({e}); installing over it", logging.WARNING)
        info = describe(store.install(data, source=source))
    if args.json:
        print(json.dumps(info))
    else:
        print(
            f"installed watchlist version {info.get('version')}: {info.get('subjects')} subjects, "
            f"{info.get('templates')} templates, expires {info.get('expires_at')}, signer {info.get('signer')}"
            + ("" if cfg.watchlist.at_rest else f"; {MEMORY_ONLY_NOTE}")
        )
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    """The list the running service matches against; the stored one when no service runs."""
    from edge.cli.service import ask_service
    from edge.core.config import load_config
    from edge.device.control import Command, ControlRequest
    from edge.device.status import WatchlistStatus

    answer = ask_service(load_config(args.config), ControlRequest(Command.STATUS), "reading the store directly")
    if answer is not None:
        detail = (answer.status or {}).get("watchlist_detail")
        info: dict[str, Any] = detail if isinstance(detail, dict) else {"state": "none"}
    else:
        store = _device_store(args.config)
        if not store.at_rest:
            return _memory_only_status(args, store)
        try:
            store.load()
            info = store.status().to_json()
        except InputError as e:
            info = WatchlistStatus.unusable(e).to_json()
    # A stored list that no longer verifies (its signer is not trusted any more) exits 3 after the report.
    code = EXIT_VERIFY if info.get("verification_failed") is True else EXIT_OK
    if args.json:
        print(json.dumps(info))
        return code
    state = info["state"]
    if state == "none":
        print("no watchlist installed")
    elif state == "unusable":
        print(f"watchlist unusable: {info['error']}")
    else:
        label = "watchlist expired" if state == "expired" else "watchlist active"
        print(f"{label}: version {info['version']}")
        print(f"  subjects:  {info['subjects']}")
        print(f"  templates: {info['templates']}")
        print(f"  created:   {info['created_at']}")
        print(f"  expires:   {info['expires_at']}")
        print(f"  signer:    {info['signer']}")
    return code


def _memory_only_status(args: argparse.Namespace, store: WatchlistStore) -> int:
    """No service answers and the card holds no list by design: only the anti-rollback mark."""
    info: dict[str, Any] = {"state": "none", "at_rest": False, "highest_version_installed": store.high_water()}
    if args.json:
        print(json.dumps(info))
        return EXIT_OK
    print(
        "no watchlist on this card: watchlist.at_rest is false, so only a running service holds it, in memory "
        "(see its status on <prefix>/status)"
    )
    if info["highest_version_installed"] is not None:
        print(f"  highest version installed here: {info['highest_version_installed']}")
    return EXIT_OK


def _wipe_local(args: argparse.Namespace) -> int:
    """The running service drops the list from memory and disk before answering; with none
    running, the store is wiped directly."""
    from edge.cli.service import ask_service
    from edge.core.config import load_config
    from edge.device.control import Command, ControlRequest

    cfg = load_config(args.config)
    request = ControlRequest(Command.WIPE, "cli")
    answer = ask_service(cfg, request, "wiping the store directly")
    if answer is not None:
        with_list = bool(answer.wiped)
    else:
        with_list = _device_store(args.config).wipe(source="cli")
        # A service that started while this ran may have loaded the list before its file went: it
        # answers now, so it is told too (a wipe of nothing is harmless).
        late = ask_service(cfg, request, None)
        with_list = with_list or bool(late is not None and late.wiped)
    if args.json:
        print(json.dumps({"local": True, "wiped": with_list, "service": answer is not None}))
    else:
        print("watchlist wiped; storage key destroyed" if with_list else "nothing to wipe (no watchlist)")
    return EXIT_OK


# --------------------------------------------------------------------------- back office


@contextlib.contextmanager
def _link(args: argparse.Namespace, name: str) -> Iterator[Any]:
    """A connected back-office MQTT link for the duration of the block."""
    from edge.core.mqtt import LinkSettings, MqttLink, read_password

    if not args.broker:
        raise InputError("--broker is required (mqtt://host:port or mqtts://host:port)")
    settings = LinkSettings(
        brokers=(args.broker,),
        client_id=f"lfr-backoffice-{name}-{int(time.time() * 1000) % 10**9}",
        username=args.username,
        password=read_password(Path(args.password_file)) if args.password_file else None,
        ca_file=Path(args.ca) if args.ca else None,
        protocol="auto",
        reconnect_min_s=0.5,
        reconnect_max_s=2.0,
    )
    link = MqttLink(settings, name=name).start()
    try:
        if not link.wait_connected(15.0):
            raise RuntimeFailure(f"cannot connect to {args.broker} within 15 s")
        yield link
    finally:
        link.stop(timeout=2.0, offline_status=False)


def _prefix(args: argparse.Namespace) -> str:
    return str(args.prefix).format(device_id=args.device)


class _Retained:
    """The newest message on each subscribed topic (retained ones arrive first), shared with paho's thread."""

    def __init__(self) -> None:
        import threading

        self.messages: dict[str, bytes] = {}
        self.changed = threading.Condition()

    def on_message(self, msg: Any) -> None:
        with self.changed:
            self.messages[msg.topic] = bytes(msg.payload)
            self.changed.notify_all()

    def wait_for(self, topics: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not all(t in self.messages for t in topics) and time.monotonic() < deadline:
                self.changed.wait(max(0.0, deadline - time.monotonic()))


def _status_fields(payload: bytes | None) -> dict[str, Any]:
    """The device's retained status as JSON (the ACL lets only the device write its status topic)."""
    if not payload:
        return {}
    try:
        doc = json.loads(payload)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _outcome(status: dict[str, Any], version: int, baseline: Any) -> dict[str, Any] | None:
    """installed / refused from a device's status, or None while it has not decided."""
    last = status.get("watchlist_last_bundle")
    if status.get("watchlist_version") == version or (
        isinstance(last, dict) and last.get("result") == "installed" and last.get("version") == version
    ):
        return {"result": "installed", "version": version}
    if isinstance(last, dict) and last.get("result") == "refused" and last != baseline:
        return {"result": "refused", "reason": last.get("reason"), "message": last.get("message"),
                "installed_version": status.get("watchlist_version")}
    return None


def _publish(args: argparse.Namespace) -> int:
    from edge.core.watchlist.bundle import BundleError, peek_version

    path = Path(args.file)
    data = _read_bundle(path)
    try:
        version = peek_version(data)
    except BundleError as e:
        raise InputError(f"{path}: {e}") from None
    if args.wait is not None and args.wait <= 0:
        raise InputError(f"--wait: {args.wait} must be > 0 seconds")
    devices = list(dict.fromkeys(args.device))
    prefixes = {d: str(args.prefix).format(device_id=d) for d in devices}
    seen = _Retained()
    with _link(args, "publish") as link:
        topics = [f"{prefixes[d]}/watchlist" for d in devices] + [f"{prefixes[d]}/status" for d in devices]
        for t in topics:
            link.subscribe(t, seen.on_message)
        seen.wait_for(topics, RETAINED_WAIT_S)
        # Refuse before publishing anything: a stale bundle left retained is what a fresh van installs.
        held = {}
        for d in devices:
            retained = seen.messages.get(f"{prefixes[d]}/watchlist")
            try:
                held[d] = peek_version(retained) if retained else None
            except BundleError:
                held[d] = None  # a corrupt retained bundle: nothing a device would install
        stale = {d: v for d, v in held.items() if v is not None and v >= version}
        if stale and not args.force:
            d, v = next(iter(stale.items()))
            raise InputError(f"{path}: version {version} is not newer than version {v} retained for {d}"
                             f"{f' (and {len(stale) - 1} more devices)' if len(stale) > 1 else ''}; "
                             "use --force to publish it anyway")
        baseline = {d: _status_fields(seen.messages.get(f"{prefixes[d]}/status")).get("watchlist_last_bundle")
                    for d in devices}
        for d in devices:
            topic = f"{prefixes[d]}/watchlist"
            if not link.publish(topic, data, qos=1, retain=True).wait(30.0):
                raise RuntimeFailure(f"the broker did not acknowledge the bundle on {topic}")
            say(f"published version {version} ({len(data)} bytes), retained, on {topic}")
        results: dict[str, dict[str, Any]] = {}
        if args.wait is not None:
            deadline = time.monotonic() + args.wait
            with seen.changed:
                while len(results) < len(devices) and time.monotonic() < deadline:
                    for d in devices:
                        if d not in results:
                            status = _status_fields(seen.messages.get(f"{prefixes[d]}/status"))
                            got = _outcome(status, version, baseline[d])
                            if got is not None:
                                results[d] = got
                    if len(results) < len(devices):
                        seen.changed.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            for d in devices:
                results.setdefault(d, {"result": "timeout", "waited_s": args.wait})
    doc: dict[str, Any] = {
        "version": version,
        "bytes": len(data),
        "retained": True,
        "forced_over": {d: v for d, v in stale.items()} if stale else {},
        "devices": [{"device": d, "topic": f"{prefixes[d]}/watchlist", **results.get(d, {"result": "published"})}
                    for d in devices],
    }
    if args.json:
        print(json.dumps(doc))
    else:
        for row in doc["devices"]:
            extra = {"installed": f" version {version}", "refused": f" ({row.get('reason')}: {row.get('message')})",
                     "timeout": f" (no answer within {args.wait:g} s)" if args.wait else ""}.get(row["result"], "")
            print(f"{row['device']}: {row['result']}{extra}")
    if any(r["result"] == "refused" for r in results.values()):
        return EXIT_VERIFY
    if any(r["result"] == "timeout" for r in results.values()):
        return EXIT_RUNTIME
    return EXIT_OK


def _wipe(args: argparse.Namespace) -> int:
    if args.local:
        return _wipe_local(args)
    if not args.device or not args.sign:
        raise InputError("wipe needs --device and --sign (or --local on the device)")
    import threading

    from edge.core.keys import load_ed25519_public, load_signing_key
    from edge.device.watchlist.sync import CommandError, make_command, open_ack

    key = load_signing_key(args.sign)
    device_pub = load_ed25519_public(args.device_pub) if args.device_pub else None
    command = make_command(key, args.device, "wipe", validity_s=args.validity)
    nonce = json.loads(base64.b64decode(json.loads(command)["body"]))["nonce"]
    prefix = _prefix(args)
    got = threading.Event()
    result: dict[str, Any] = {}
    forged: list[str] = []  # confirmations naming this command whose signature does not verify

    def unverified_body(payload: bytes) -> Any:
        try:
            return json.loads(base64.b64decode(json.loads(payload)["body"]))
        except Exception:
            return None

    def on_ack(msg: Any) -> None:
        if device_pub is None:
            body = unverified_body(msg.payload)
            if body is None:
                return
        else:
            try:
                body = open_ack(msg.payload, device_pub)
            except CommandError as e:
                say(f"warning: ignored a confirmation that does not verify ({e})", logging.WARNING)
                claimed = unverified_body(msg.payload)
                if isinstance(claimed, dict) and claimed.get("nonce") == nonce:
                    forged.append(str(e))
                return
        if isinstance(body, dict) and body.get("nonce") == nonce:
            result.update(body)
            got.set()

    with _link(args, "wipe") as link:
        if args.wait > 0:
            link.subscribe(f"{prefix}/cmd/ack", on_ack, 1)
            time.sleep(0.3)  # let the SUBACK land before the device can answer
        # Retained, so a van that is offline now obeys when it reconnects (within --validity).
        if not link.publish(f"{prefix}/cmd", command, qos=1, retain=True).wait(15.0):
            raise RuntimeFailure(f"the broker did not acknowledge the command on {prefix}/cmd")
        # Clear the retained bundle too, so the device is not offered the list again.
        link.publish(f"{prefix}/watchlist", b"", qos=1, retain=True).wait(15.0)
        sent = {"device": args.device, "topic": f"{prefix}/cmd", "nonce": nonce}
        if not args.json:
            print(f"wipe command sent to {args.device} on {prefix}/cmd (nonce {nonce})")
        if args.wait <= 0:
            if args.json:
                print(json.dumps({**sent, "confirmed": False}))
            return EXIT_OK
        if not got.wait(args.wait):
            if forged:
                raise VerificationFailed(
                    f"the only confirmation of this wipe from {args.device} does not verify with --device-pub "
                    f"({forged[0]}); the command stays retained"
                )
            raise RuntimeFailure(
                f"no confirmation from {args.device} within {args.wait:g} s; the command stays retained"
            )
        link.publish(f"{prefix}/cmd", b"", qos=1, retain=True).wait(15.0)
        verified = "verified" if device_pub is not None else "UNVERIFIED (no --device-pub)"
        if result.get("result") != "wiped":
            raise RuntimeFailure(f"device refused the wipe: {result.get('reason')} ({verified})")
        if args.json:
            print(json.dumps({**sent, "confirmed": True, "verified": device_pub is not None,
                              "watchlist_version": result.get("watchlist_version")}))  # fmt: skip
        else:
            print(f"device {args.device} confirmed: wiped version {result.get('watchlist_version')} ({verified})")
    return EXIT_OK


class _ProgressBar:
    """A one-line progress bar on stderr, only when stderr is a terminal (never in --json)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()

    def step(self, label: str) -> None:
        self.done += 1
        width = 30
        filled = int(width * self.done / max(1, self.total))
        rate = self.done / max(1e-6, time.monotonic() - self.t0)
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {rate:4.1f} img/s {label[:30]:<30}"
        )
        sys.stderr.flush()
        if self.done == self.total:
            sys.stderr.write("\n")


def _print_build_report(report: EnrolReport, as_json: bool) -> None:
    if as_json:
        report.dump_json(sys.stdout)
    else:
        report.print_tables(sys.stdout)
    sys.stdout.flush()


def _build(args: argparse.Namespace) -> int:
    from edge.backoffice.enrolment.enrol import (
        BuildRefused,
        BuildRequest,
        ModelChoice,
        build_watchlist,
        scan_faces,
    )

    req = BuildRequest(
        faces=Path(args.faces),
        sign=Path(args.sign),
        recipients=tuple(Path(p) for p in args.to),
        expires=args.expires,
        version=args.version,
        out=Path(args.out),
        meta=Path(args.meta) if args.meta else None,
        dtype=args.dtype,
        models=ModelChoice(
            config=resolve_config(args, optional=True),
            models_dir=Path(args.models_dir) if args.models_dir else None,
            embedder=args.embedder,
            detector=args.detector,
        ),
        strict=args.strict,
        keep_inconsistent=tuple(args.keep_inconsistent or ()),
    )
    step = None
    if sys.stderr.isatty() and not args.json:
        step = _ProgressBar(sum(len(images) for _, images in scan_faces(req.faces))).step
    try:
        result = build_watchlist(req, step)
    except BuildRefused as e:
        for w in e.result.warnings:
            say(f"warning: {w}", logging.WARNING)
        _print_build_report(e.result.report, args.json)
        raise
    _print_build_report(result.report, args.json)
    b = result.bundle
    assert b is not None
    msg = (
        f"wrote {req.out}: version {req.version}, {b.subjects} subjects, {b.templates} templates, "
        f"{b.recipients} recipient(s), {b.size_bytes} bytes"
    )
    if args.json:  # the report (with its bundle block) is the one document on stdout
        say(msg, logging.INFO)
    else:
        print(msg, flush=True)
    for w in result.warnings:
        say(f"warning: {w}", logging.WARNING)
    return EXIT_OK
