"""A TCP front for a broker that speaks only MQTT 3.1.1: refuses v5 CONNECTs like an old broker does."""

from __future__ import annotations

import contextlib
import socket
import threading

CONNACK_BAD_PROTOCOL = b"\x20\x02\x00\x01"  # v3.1.1 CONNACK: 0x01 unacceptable protocol version


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class V311OnlyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.levels: list[int] = []  # protocol level of each CONNECT seen
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        head = b""
        while len(head) < 12:
            chunk = conn.recv(12 - len(head))
            if not chunk:
                conn.close()
                return
            head += chunk
        i = 1
        while head[i] & 0x80:  # variable-length remaining length
            i += 1
        level = head[i + 1 + 2 + 4]  # after remaining length: name length (2), "MQTT" (4), level
        self.levels.append(level)
        if level == 5:
            conn.sendall(CONNACK_BAD_PROTOCOL)
            conn.close()
            return
        up = socket.create_connection(("127.0.0.1", self.upstream))
        up.sendall(head)
        threading.Thread(target=_pipe, args=(conn, up), daemon=True).start()
        threading.Thread(target=_pipe, args=(up, conn), daemon=True).start()

    def close(self) -> None:
        self.sock.close()
