"""`lfr-edge bench alerts`: alerts/s and match→PUBACK latency through TLS to a local Mosquitto.

Runs the real path: sign, seal to a back-office key, write to the encrypted spool (WAL,
synchronous=FULL), publish QoS 1 over TLS with a password, delete on PUBACK. Two phases: flat out
(sustained throughput, latency includes queueing) and paced (latency of an alert on an idle link).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import RuntimeFailure
from edge.core.timefmt import format_utc

DEVICE = "bench-dev"


@dataclass(frozen=True, slots=True)
class AlertsBenchParams:
    count: int = 500  # alerts in the flat-out phase
    paced: int = 100  # alerts in the paced phase
    rate: float = 20.0  # alerts/s in the paced phase
    crop: bool = True  # alerts carry a probe face crop


@dataclass(frozen=True, slots=True)
class LatencyMs:
    p50: float
    p99: float
    max: float


@dataclass(frozen=True, slots=True)
class FlatOut:
    count: int
    alerts_per_s: float
    enqueue_per_s: float
    latency_ms: LatencyMs


@dataclass(frozen=True, slots=True)
class Paced:
    count: int
    rate_per_s: float
    latency_ms: LatencyMs


@dataclass(frozen=True, slots=True)
class Machine:
    arch: str
    cpus: int | None
    system: str
    python: str


@dataclass(frozen=True, slots=True)
class AlertsBench:
    """One run of the alerts bench; to_json() is the document docs/BENCHMARKS.md quotes."""

    date: str
    machine: Machine
    path: str
    alert_bytes: int
    flat_out: FlatOut
    paced: Paced

    def to_json(self) -> dict[str, Any]:
        return {"benchmark": "alerts", **asdict(self)}


def _percentiles(values: list[float]) -> LatencyMs:
    if not values:
        return LatencyMs(float("nan"), float("nan"), float("nan"))
    a = np.asarray(values) * 1000.0
    return LatencyMs(
        p50=round(float(np.percentile(a, 50)), 2),
        p99=round(float(np.percentile(a, 99)), 2),
        max=round(float(a.max()), 2),
    )


def _crop() -> bytes:
    import cv2

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (150, 150, 3), dtype=np.uint8), (5, 5), 0)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise RuntimeFailure("cannot encode the benchmark face crop")
    return bytes(buf)


def run(args: AlertsBenchParams, progress: Callable[[str], None] | None = None) -> AlertsBench:
    from edge.core.alert_message import build_alert
    from edge.core.config import parse_config
    from edge.core.keys import BACKOFFICE_X25519_PUB, generate_backoffice_keys, generate_device_keys
    from edge.core.types import Match, MatchEvent, Subject
    from edge.device.publisher import AlertPublisher
    from edge.lab.localbroker import MosquittoBroker, mosquitto_available

    if not mosquitto_available():
        raise RuntimeFailure("mosquitto is not installed (Debian: apt-get install mosquitto)")
    say = progress or (lambda _msg: None)
    crop = _crop() if args.crop else None
    with tempfile.TemporaryDirectory(prefix="lfr-bench-alerts-") as tmp:
        root = Path(tmp)
        broker = MosquittoBroker(root / "broker", tls=True, users={DEVICE: "bench-pw"}, persistence=False)
        generate_device_keys(root / "keys")
        generate_backoffice_keys(root / "bo")
        pw = root / "mqtt.pw"
        pw.write_text("bench-pw")
        pw.chmod(0o600)
        doc = {
            "device": {"id": DEVICE, "data_dir": str(root / "data"), "keys_dir": str(root / "keys")},
            "mqtt": {
                "brokers": [broker.uri],
                "username": DEVICE,
                "password_file": str(pw),
                "tls": {"ca_file": str(broker.ca_file)},
                "status_interval_s": 3600.0,
            },
            # No back office acknowledges here (the bench measures up to the broker's PUBACK):
            # re-sends of unacknowledged alerts are pushed past the run so they do not skew it.
            "alerts": {"seal_to": str(root / "bo" / BACKOFFICE_X25519_PUB), "spool": {"max_rows": 1_000_000},
                       "ack_retry_s": 3600.0, "ack_retry_max_s": 3600.0, "ack_overdue_s": 30 * 24 * 3600.0},
        }
        cfg = parse_config(doc, root)
        subject = Subject("BENCH-0001", "wanted", 1)

        def event(i: int) -> MatchEvent:
            return MatchEvent(Match(subject, 0.71, 0.2, 0.55), i, i, time.time(), "cam0",
                              (100.0, 80.0, 220.0, 230.0), 3, 1, crop)  # fmt: skip

        with broker:
            pub = AlertPublisher.from_config(cfg).start()
            try:
                if not pub.link.wait_connected(15):
                    raise RuntimeFailure(f"cannot connect to the bench broker: {pub.link.stats.last_error}")
                say(f"flat out: {args.count} alerts …")
                t0 = time.perf_counter()
                for i in range(args.count):
                    pub.on_match(event(i))
                t_enq = time.perf_counter() - t0
                if not pub.flush(300):
                    raise RuntimeFailure(f"{pub.spool.pending()} alerts still unacknowledged after 300 s")
                t_all = time.perf_counter() - t0
                flat = list(pub.latencies_s)
                pub.latencies_s.clear()
                say(f"paced: {args.paced} alerts at {args.rate:g}/s …")
                for i in range(args.paced):
                    t_next = time.perf_counter() + 1.0 / args.rate
                    pub.on_match(event(args.count + i))
                    time.sleep(max(0.0, t_next - time.perf_counter()))
                if not pub.flush(60):
                    raise RuntimeFailure("paced alerts still unacknowledged after 60 s")
                paced = list(pub.latencies_s)
                payload_bytes = len(
                    build_alert(event(0), DEVICE, pub.signer, "d", "e", pub.seal_to, crop is not None).payload
                )
            finally:
                pub.stop()
    return AlertsBench(
        date=format_utc(time.time()),
        machine=Machine(
            arch=platform.machine(),
            cpus=os.cpu_count(),
            system=f"{platform.system()} {platform.release()}",
            python=platform.python_version(),
        ),
        path="Ed25519 sign + X25519/AES-GCM seal + encrypted SQLite spool (WAL, synchronous=FULL) "
        "+ MQTT v5 QoS 1 over TLS (local Mosquitto, password auth)",
        alert_bytes=payload_bytes,
        flat_out=FlatOut(
            count=args.count,
            alerts_per_s=round(args.count / t_all, 1),
            enqueue_per_s=round(args.count / t_enq, 1),
            latency_ms=_percentiles(flat),
        ),
        paced=Paced(count=args.paced, rate_per_s=args.rate, latency_ms=_percentiles(paced)),
    )


def format_text(result: AlertsBench) -> str:
    f, p = result.flat_out, result.paced
    return "\n".join([
        f"alerts bench ({result.machine.arch}, {result.machine.cpus} CPUs), {result.alert_bytes} B per alert",
        f"  flat out: {f.alerts_per_s} alerts/s acknowledged ({f.count} alerts); "
        f"match→PUBACK p50 {f.latency_ms.p50} ms, p99 {f.latency_ms.p99} ms",
        f"  paced {p.rate_per_s:g}/s: match→PUBACK p50 {p.latency_ms.p50} ms, "
        f"p99 {p.latency_ms.p99} ms, max {p.latency_ms.max} ms",
    ])  # fmt: skip
