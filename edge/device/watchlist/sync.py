"""Automatic watchlist sync and signed device commands.

Bundles arrive as a retained MQTT message on `<prefix>/watchlist` or as files dropped into an inbox
directory; both go through `WatchlistStore.install` (the one verifier). Signed commands arrive on
`<prefix>/cmd`; a valid `wipe` deletes the list and its storage key and is confirmed on
`<prefix>/cmd/ack` with a reply signed by the device.

The logic here takes bytes, never a paho client: any transport with `subscribe(topic, callback,
qos)` and `publish(topic, payload, qos, retain)` can host it (edge.core.mqtt.MqttLink does).
Messages are handed to a worker thread so a large bundle never stalls the MQTT network thread.

Command envelope (JSON): {"format": "lfr-edge-cmd/1", "signer": key id, "body": base64 of the body's
canonical JSON, "signature": base64}, signed through edge.core.signing under Context.COMMAND
(acknowledgements: "lfr-edge-ack/1", Context.COMMAND_ACK). Body (JSON): type, device_id, nonce,
issued_at, not_after (RFC 3339 UTC, edge.core.timefmt). Replay is stopped by requiring issued_at to be newer than the last accepted
command (persisted) and not_after to be in the future.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.core import signing
from edge.core.config import Config
from edge.core.errors import InputError
from edge.core.keys import DeviceKeys, atomic_write, key_id
from edge.core.signing import Context, canonical_json
from edge.core.timefmt import format_utc, parse_utc
from edge.core.watchlist.bundle import BundleError, Reason
from edge.device.watchlist.store import WatchlistStore

log = logging.getLogger("lfr_edge.watchlist.sync")

CMD_FORMAT = "lfr-edge-cmd/1"
ACK_FORMAT = "lfr-edge-ack/1"
MAX_CMD_BYTES = 16 << 10
MAX_CLOCK_SKEW_S = 300.0  # a command "issued" further in the future than this is refused
DEFAULT_CMD_VALIDITY_S = 24 * 3600.0  # an offline van still obeys a wipe when it reconnects today


class _Msg(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...


class Transport(Protocol):
    def subscribe(self, topic_filter: str, callback: Callable[[Any], None], qos: int = 1) -> None: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Any: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    action: str  # installed | unchanged | refused | ignored | wiped
    message: str
    reason: str = ""


# --------------------------------------------------------------------------- signed commands


class CommandError(InputError):
    def __init__(self, reason: str, message: str, nonce: str | None = None) -> None:
        self.reason = reason
        self.nonce = nonce
        super().__init__(f"command refused ({reason}): {message}")


# Each envelope format signs under its own context, so a device's ack can never pass as a command.
_CONTEXTS = {CMD_FORMAT: Context.COMMAND, ACK_FORMAT: Context.COMMAND_ACK}


def _signed_envelope(fmt: str, body: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    body_bytes = canonical_json(body)
    return json.dumps(
        {
            "format": fmt,
            "signer": key_id(key.public_key()),
            "body": base64.b64encode(body_bytes).decode(),
            "signature": base64.b64encode(signing.sign(_CONTEXTS[fmt], body_bytes, key)).decode(),
        },
        separators=(",", ":"),
    ).encode()


def _open_envelope(data: bytes, fmt: str, signers: Iterable[Ed25519PublicKey]) -> dict[str, Any]:
    """Verify a signed envelope and return its body; CommandError on anything else."""
    if len(data) > MAX_CMD_BYTES:
        raise CommandError("oversize", f"{len(data)} bytes is more than {MAX_CMD_BYTES}")
    try:
        env = json.loads(data.decode("utf-8"))
        if not isinstance(env, dict) or env.get("format") != fmt:
            raise ValueError
        signer, body_b64, sig_b64 = env["signer"], env["body"], env["signature"]
        body_bytes = base64.b64decode(body_b64, validate=True)
        signature = base64.b64decode(sig_b64, validate=True)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        raise CommandError("corrupt", f"not a {fmt} envelope") from None
    key = {key_id(k): k for k in signers}.get(signer) if isinstance(signer, str) else None
    if key is None:
        raise CommandError("unknown_signer", f"signed by {str(signer)[:16]!r}, not a trusted signer")
    if not signing.verify(_CONTEXTS[fmt], body_bytes, signature, key):
        raise CommandError("bad_signature", "signature does not verify (altered or forged)")
    try:
        body = json.loads(body_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CommandError("corrupt", "signed body is not JSON") from None
    if not isinstance(body, dict):
        raise CommandError("corrupt", "signed body is not a JSON object")
    if canonical_json(body) != body_bytes:  # one byte form per command, as for alerts
        raise CommandError("corrupt", "signed body is not in canonical JSON form")
    return body


def make_command(
    key: Ed25519PrivateKey,
    device_id: str,
    kind: str = "wipe",
    *,
    now: float | None = None,
    validity_s: float = DEFAULT_CMD_VALIDITY_S,
) -> bytes:
    """Back office: a signed command for one device."""
    t = time.time() if now is None else now
    body = {
        "type": kind,
        "device_id": device_id,
        "nonce": os.urandom(16).hex(),
        # Milliseconds, so two commands issued in the same second are still ordered.
        "issued_at": format_utc(t),
        "not_after": format_utc(t + validity_s),
    }
    return _signed_envelope(CMD_FORMAT, body, key)


def open_ack(data: bytes, device_public: Ed25519PublicKey) -> dict[str, Any]:
    """Back office: verify a device's signed confirmation and return its body."""
    return _open_envelope(data, ACK_FORMAT, [device_public])


class CommandVerifier:
    """Device side: authenticity, addressing, freshness and replay checks for commands."""

    def __init__(
        self,
        signers: Iterable[Ed25519PublicKey],
        device_id: str,
        state_path: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signers = list(signers)
        self.device_id = device_id
        self.state_path = state_path
        self.clock = clock

    def _last(self) -> float:
        try:
            v = json.loads(self.state_path.read_text()).get("last_issued_at")
        except (OSError, ValueError, AttributeError):
            return float("-inf")
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else float("-inf")

    def _remember(self, issued: float) -> None:
        atomic_write(self.state_path, json.dumps({"last_issued_at": issued}).encode())

    def verify(self, data: bytes) -> dict[str, Any]:
        """The command body when it may be executed now; CommandError otherwise. Accepting it
        records its issue time, so the same command (or any older one) is refused from now on."""
        body = _open_envelope(data, CMD_FORMAT, self.signers)
        nonce = body.get("nonce") if isinstance(body.get("nonce"), str) else None
        if body.get("device_id") != self.device_id:
            raise CommandError("not_addressed", f"addressed to {body.get('device_id')!r}", nonce)
        try:
            issued = parse_utc(str(body["issued_at"]), "issued_at")
            not_after = parse_utc(str(body["not_after"]), "not_after")
        except (KeyError, InputError):
            raise CommandError("corrupt", "issued_at/not_after missing or not ISO 8601", nonce) from None
        now = self.clock()
        if now > not_after:
            raise CommandError("expired", f"command expired at {format_utc(not_after)}", nonce)
        if issued > now + MAX_CLOCK_SKEW_S:
            raise CommandError("future", f"issued at {format_utc(issued)}, ahead of this device's clock", nonce)
        if issued <= self._last():
            raise CommandError("replay", "already executed, or older than the last executed command", nonce)
        self._remember(issued)
        return body


# --------------------------------------------------------------------------- sync service


def read_bounded(path: Path, limit: int) -> bytes | None:
    """The file's bytes, or None when it holds more than `limit`: never reads more than limit + 1."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    return None if len(data) > limit else data


class WatchlistSync:
    """Feeds MQTT messages and inbox files to the store; executes signed wipe commands."""

    def __init__(
        self,
        store: WatchlistStore,
        device_id: str,
        topic_prefix: str,
        device_keys: DeviceKeys,
        command_signers: Iterable[Ed25519PublicKey],
        *,
        inbox_dir: Path | None = None,
        transport: Transport | None = None,
        inbox_settle_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.device_id = device_id
        self.watchlist_topic = f"{topic_prefix}/watchlist"
        self.cmd_topic = f"{topic_prefix}/cmd"
        self.ack_topic = f"{topic_prefix}/cmd/ack"
        self.device_keys = device_keys
        self.commands = CommandVerifier(
            command_signers, device_id, store.path.with_name("commands.state"), clock=clock
        )
        self.inbox_dir = inbox_dir
        self.transport = transport
        self.inbox_settle_s = inbox_settle_s
        self.clock = clock
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=16)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.outcomes: list[Outcome] = []  # recent outcomes, newest last (bounded), for status/tests

    # ------------------------------------------------------------------ bytes in

    def _record(self, outcome: Outcome) -> Outcome:
        self.outcomes = [*self.outcomes[-49:], outcome]
        level = logging.WARNING if outcome.action == "refused" else logging.INFO
        log.log(level, "%s", outcome.message)
        return outcome

    def handle_bundle(self, data: bytes, source: str) -> Outcome:
        if not data:
            return Outcome("ignored", f"{source}: empty message (retained bundle cleared)")
        if self.store.installed_digest() == hashlib.sha256(data).hexdigest():
            # The broker re-sends the retained bundle on every reconnect; it is already in force.
            return Outcome("unchanged", f"{source}: bundle already installed")
        try:
            wl = self.store.install(data, source=source)
        except BundleError as e:
            return self._record(Outcome("refused", f"{source}: {e}", e.reason))
        except OSError as e:
            return self._record(Outcome("refused", f"{source}: cannot store the watchlist ({e})", "storage"))
        return self._record(
            Outcome(
                "installed",
                f"{source}: installed watchlist version {wl.version} ({len(wl.subjects)} subjects)",
            )
        )

    def handle_command(self, data: bytes) -> Outcome:
        if not data:
            return Outcome("ignored", "empty command message (retained command cleared)")
        try:
            body = self.commands.verify(data)
        except CommandError as e:
            self._ack({"type": None, "nonce": e.nonce, "result": "refused", "reason": e.reason})
            return self._record(Outcome("refused", str(e), e.reason))
        if body.get("type") != "wipe":
            self._ack(
                {
                    "type": body.get("type"),
                    "nonce": body.get("nonce"),
                    "result": "refused",
                    "reason": "unknown",
                }
            )
            return self._record(Outcome("refused", f"unknown command type {body.get('type')!r}", "unknown"))
        old = self.store.holder.current()
        self.store.wipe(source="mqtt-command")
        self._ack(
            {
                "type": "wipe",
                "nonce": body.get("nonce"),
                "result": "wiped",
                "watchlist_version": old.version if old else None,
            }
        )
        return self._record(Outcome("wiped", "watchlist wiped by signed command; storage key destroyed"))

    def _ack(self, fields: dict[str, Any]) -> None:
        if self.transport is None:
            return
        body = {**fields, "device_id": self.device_id, "time": format_utc(self.clock())}
        try:
            self.transport.publish(
                self.ack_topic, _signed_envelope(ACK_FORMAT, body, self.device_keys.ed25519), 1
            )
        except Exception:
            log.exception("cannot publish the command confirmation")

    def handle_message(self, msg: _Msg) -> None:
        """Transport callback (network thread): queue for the worker, newest bundle wins."""
        limit = self.store.max_bytes if msg.topic == self.watchlist_topic else MAX_CMD_BYTES
        size = len(msg.payload)
        if size > limit:
            # Refused before any copy or queueing; on MQTT v5 the broker does not even send it
            # (the link advertises the limit), so this guards v3.1.1 links.
            text = f"{size} bytes is more than the {limit}-byte limit"
            if msg.topic == self.watchlist_topic:
                self.store.report_refusal(BundleError(Reason.OVERSIZE, text), "mqtt")
            self._record(Outcome("refused", f"mqtt:{msg.topic}: {text}", Reason.OVERSIZE))
            return
        item = (msg.topic, bytes(msg.payload))
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            log.warning("watchlist sync queue full; dropping a message on %s", msg.topic)

    def dispatch(self, topic: str, payload: bytes) -> Outcome:
        if topic == self.watchlist_topic:
            return self.handle_bundle(payload, "mqtt")
        if topic == self.cmd_topic:
            return self.handle_command(payload)
        return Outcome("ignored", f"no handler for topic {topic}")

    # ------------------------------------------------------------------ inbox

    def poll_inbox(self) -> list[Outcome]:
        """Install each settled file in the inbox (oldest first); accepted files are deleted,
        refused ones moved to `rejected/` so an operator can see what was refused and why."""
        d = self.inbox_dir
        if d is None or not d.is_dir():
            return []
        now = time.time()
        files = []
        for p in d.iterdir():
            if p.name.startswith(".") or p.name.endswith((".part", ".tmp")) or not p.is_file():
                continue
            with contextlib.suppress(OSError):
                st = p.stat()
                if now - st.st_mtime >= self.inbox_settle_s:  # still being copied in otherwise
                    files.append((st.st_mtime, p, st.st_size))
        out = []
        for _, p, size in sorted(files):
            if size > self.store.max_bytes:  # never read an oversize file into memory
                msg = f"{size} bytes is more than the {self.store.max_bytes}-byte limit"
                self.store.report_refusal(BundleError(Reason.OVERSIZE, msg), f"inbox:{p.name}")
                outcome = self._record(Outcome("refused", f"inbox:{p.name}: {msg}", Reason.OVERSIZE))
            else:
                try:
                    data = read_bounded(p, self.store.max_bytes)
                except OSError as e:
                    out.append(
                        self._record(Outcome("refused", f"inbox:{p.name}: cannot read ({e.strerror})", "io"))
                    )
                    continue
                if data is None:  # grew past the limit after the size check
                    msg = f"more than the {self.store.max_bytes}-byte limit"
                    self.store.report_refusal(BundleError(Reason.OVERSIZE, msg), f"inbox:{p.name}")
                    outcome = self._record(Outcome("refused", f"inbox:{p.name}: {msg}", Reason.OVERSIZE))
                else:
                    outcome = self.handle_bundle(data, f"inbox:{p.name}")
            self._dispose(p, outcome)
            out.append(outcome)
        return out

    def _dispose(self, p: Path, outcome: Outcome) -> None:
        try:
            if outcome.action == "refused":
                rejected = p.parent / "rejected"
                rejected.mkdir(mode=0o700, exist_ok=True)
                os.replace(p, rejected / p.name)
                (rejected / f"{p.name}.reason.txt").write_text(outcome.message + "\n")
            else:
                p.unlink()
        except OSError as e:
            log.warning("inbox: cannot move %s aside (%s)", p.name, e)

    # ------------------------------------------------------------------ running

    def attach(self, transport: Transport) -> None:
        """Subscribe through a shared MQTT link (kept across its reconnects)."""
        self.transport = transport
        transport.subscribe(self.watchlist_topic, self.handle_message, 1)
        transport.subscribe(self.cmd_topic, self.handle_message, 1)

    def start(self, poll_interval_s: float = 2.0) -> WatchlistSync:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(poll_interval_s,), name="watchlist-sync", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self, poll_interval_s: float) -> None:
        next_poll = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + poll_interval_s
                try:
                    self.poll_inbox()
                    self.store.check_expiry()
                except Exception:
                    log.exception("watchlist inbox poll failed")
            try:
                item = self._queue.get(timeout=max(0.01, next_poll - time.monotonic()))
            except queue.Empty:
                continue
            if item is None:
                break
            try:
                self.dispatch(*item)
            except Exception:  # keep syncing: one bad message must not end the thread
                log.exception("watchlist sync failed on %s", item[0])


def sync_from_config(cfg: Config, store: WatchlistStore, transport: Transport | None = None) -> WatchlistSync:
    """Sync as configured: inbox polling always (when set), MQTT when `watchlist.mqtt_sync` and a
    shared link is given. Call `.start()` to run it; `.stop()` at shutdown."""
    sync = WatchlistSync(
        store,
        cfg.device.id,
        cfg.topic_prefix,
        store.device_keys,
        store.trusted_signers,
        inbox_dir=cfg.watchlist.inbox_dir,
    )
    if transport is not None and cfg.watchlist.mqtt_sync:
        sync.attach(transport)
    return sync
