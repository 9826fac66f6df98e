"""The local control channel: how device-side commands act on the running appliance.

A unix stream socket, `<device.data_dir>/control.sock`, mode 0600 in the 0700 data directory: only
the service's own user (and root) can connect; there is no network listener. One request per
connection, one JSON line each way:

    → {"v": 1, "command": "status" | "install" | "wipe", "source": "cli:…", "bundle_b64": "…"}
    ← {"v": 1, "ok": true, "status": {…}, "watchlist": {…}, "wiped": true}
    ← {"v": 1, "ok": false, "error": "one line", "exit_code": 2}

The service appends the caller's uid and pid (SO_PEERCRED) to the request's `source`, which the
audit log records with every install and wipe.

The socket lives in the data directory rather than systemd's $RUNTIME_DIRECTORY because the command
a technician types does not see the service's environment: both must find the same path from the
config alone, or the command would silently act on the store behind the service's back.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from edge.core.config import Config
from edge.core.errors import EXIT_INPUT, EXIT_OK, EXIT_RUNTIME, InputError, RuntimeFailure

log = logging.getLogger("lfr_edge.control")

PROTOCOL = 1
SOCKET_NAME = "control.sock"
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with its terminating NUL
_OVERHEAD = 64 << 10  # the JSON around a bundle's base64


class Command(Enum):
    STATUS = "status"
    INSTALL = "install"
    WIPE = "wipe"


class ControlError(Exception):
    """A request the service cannot read (not JSON, unknown command, too long)."""


@dataclass(frozen=True, slots=True)
class ControlRequest:
    command: Command
    source: str = "cli"
    bundle: bytes | None = None  # INSTALL only: the bundle file's bytes, size already checked by the CLI

    def encode(self) -> bytes:
        msg: dict[str, Any] = {"v": PROTOCOL, "command": self.command.value, "source": self.source}
        if self.bundle is not None:
            msg["bundle_b64"] = base64.b64encode(self.bundle).decode("ascii")
        return json.dumps(msg).encode() + b"\n"

    @staticmethod
    def decode(line: bytes) -> ControlRequest:
        try:
            msg = json.loads(line)
        except ValueError:
            raise ControlError("request is not JSON") from None
        if not isinstance(msg, dict) or msg.get("v") != PROTOCOL:
            raise ControlError(f"request is not a version {PROTOCOL} control request")
        try:
            command = Command(msg.get("command"))
        except ValueError:
            raise ControlError(f"unknown command {str(msg.get('command'))[:32]!r}") from None
        source = msg.get("source", "cli")
        if not isinstance(source, str) or len(source) > 200:
            raise ControlError("source must be a short string")
        bundle = None
        if command is Command.INSTALL:
            raw = msg.get("bundle_b64")
            if not isinstance(raw, str):
                raise ControlError("install needs bundle_b64")
            try:
                bundle = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise ControlError("bundle_b64 is not base64") from None
        return ControlRequest(command, source, bundle)


@dataclass(frozen=True, slots=True)
class ControlResponse:
    ok: bool
    error: str | None = None
    exit_code: int = EXIT_OK
    status: dict[str, Any] | None = None  # the status document (Status.to_json())
    watchlist: dict[str, Any] | None = None  # the list in force after the command (WatchlistStatus.to_json())
    wiped: bool | None = None  # WIPE: something was removed

    @staticmethod
    def failure(error: str, exit_code: int) -> ControlResponse:
        return ControlResponse(ok=False, error=error, exit_code=exit_code)

    def encode(self) -> bytes:
        msg: dict[str, Any] = {"v": PROTOCOL, "ok": self.ok}
        for k in ("error", "status", "watchlist", "wiped"):
            if getattr(self, k) is not None:
                msg[k] = getattr(self, k)
        if not self.ok:
            msg["exit_code"] = self.exit_code
        return json.dumps(msg).encode() + b"\n"

    @staticmethod
    def decode(line: bytes) -> ControlResponse:
        try:
            msg = json.loads(line)
        except ValueError:
            raise RuntimeFailure("the running service sent an unreadable control response") from None
        if not isinstance(msg, dict) or msg.get("v") != PROTOCOL or not isinstance(msg.get("ok"), bool):
            raise RuntimeFailure("the running service speaks another control protocol version")
        code = msg.get("exit_code", EXIT_OK if msg["ok"] else EXIT_RUNTIME)

        def obj(k: str) -> dict[str, Any] | None:
            v = msg.get(k)
            return v if isinstance(v, dict) else None

        wiped = msg.get("wiped")
        return ControlResponse(
            ok=msg["ok"],
            error=str(msg["error"]) if "error" in msg else None,
            exit_code=code if isinstance(code, int) else EXIT_RUNTIME,
            status=obj("status"),
            watchlist=obj("watchlist"),
            wiped=wiped if isinstance(wiped, bool) else None,
        )


Handler = Callable[[ControlRequest], ControlResponse]


def socket_path(cfg: Config) -> Path:
    return cfg.device.data_dir / SOCKET_NAME


def max_request_bytes(cfg: Config) -> int:
    bundle = int(cfg.watchlist.max_bundle_mb * (1 << 20))
    return bundle * 4 // 3 + _OVERHEAD


def _check_length(path: Path) -> None:
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise InputError(f"device.data_dir: {path} is longer than a unix socket path may be ({_SUN_PATH_MAX} bytes)")


def _read_line(conn: socket.socket, limit: int) -> bytes:
    buf = bytearray()
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return bytes(buf)  # the peer closed: whatever came is the line
        nl = chunk.find(b"\n")
        if nl >= 0:
            buf += chunk[:nl]
            if len(buf) > limit:
                raise ControlError(f"request longer than {limit} bytes")
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise ControlError(f"request longer than {limit} bytes (watchlist.max_bundle_mb)")


# --------------------------------------------------------------------------- service side


class ControlServer:
    """Answers control requests on the socket, one connection at a time, on its own thread.

    One at a time is deliberate: installs and wipes are serialised anyway (the store's lock) and
    a status takes milliseconds; a client that stalls is cut off after `client_timeout_s`."""

    def __init__(self, path: Path, handler: Handler, max_bytes: int, client_timeout_s: float = 30.0) -> None:
        self.path = path
        self.handler = handler
        self.max_bytes = max_bytes
        self.client_timeout_s = client_timeout_s
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def bind(self) -> ControlServer:
        """Create the socket (0600) or refuse when another service already answers on it."""
        _check_length(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise InputError(f"{self.path}: exists and is not a socket; remove it")
            if _answers(self.path):
                raise RuntimeFailure(f"another lfr-edge service already runs on this device ({self.path} answers)")
            self.path.unlink()  # left by a service that died: nobody listens on it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window in which others could connect
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(8)
        sock.settimeout(0.5)
        self._sock = sock
        self._inode = self.path.stat().st_ino
        return self

    def start(self) -> ControlServer:
        if self._sock is None:
            self.bind()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        # Remove the socket only if it is still ours (not one a newer service bound since).
        with contextlib.suppress(OSError):
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()
        self._inode = None

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                log.exception("control: accept failed")
                self._stop.wait(0.5)
                continue
            with conn:
                self._one(conn)

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(self.client_timeout_s)
        try:
            try:
                request = ControlRequest.decode(_read_line(conn, self.max_bytes))
            except ControlError as e:
                conn.sendall(ControlResponse.failure(f"control request refused: {e}", EXIT_INPUT).encode())
                return
            request = dataclasses.replace(request, source=_with_peer(request.source, conn))
            log.info("control: %s from %s", request.command.value, request.source)
            try:
                response = self.handler(request)
            except Exception as e:  # the service keeps running; the command reports the failure
                log.exception("control: %s failed", request.command.value)
                response = ControlResponse.failure(f"{type(e).__name__}: {e}", EXIT_RUNTIME)
            conn.sendall(response.encode())
        except OSError as e:  # the client went away or stalled: its problem, not the service's
            log.warning("control: client dropped (%s)", e)


def _with_peer(source: str, conn: socket.socket) -> str:
    """The requester's own words plus who the kernel says it is, for the audit log's `source`."""
    if not hasattr(socket, "SO_PEERCRED"):
        return source
    try:
        pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except OSError:
        return source
    return f"{source} (uid {uid}, pid {pid})"


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError, TimeoutError):
            return False
    return True


# --------------------------------------------------------------------------- command side


def ask(path: Path, request: ControlRequest, timeout_s: float = 120.0) -> ControlResponse | None:
    """Send `request` to the service on `path`; None when no service runs there (no socket, or a
    socket nobody listens on). Any other failure to reach a service that is there is an error:
    acting on the store behind a running service's back is what this channel exists to prevent."""
    _check_length(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except OSError as e:
            raise RuntimeFailure(f"cannot reach the running service on {path}: {e.strerror or e}") from None
        try:
            s.sendall(request.encode())
            s.shutdown(socket.SHUT_WR)
            line = _read_line(s, 64 << 20)
        except (OSError, ControlError) as e:
            raise RuntimeFailure(f"the running service on {path} did not answer: {e}") from None
    if not line:
        raise RuntimeFailure(f"the running service on {path} closed the connection without an answer")
    return ControlResponse.decode(line)
