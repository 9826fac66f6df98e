"""`lfr-edge bench console`: alerts/s the console ingests, and page load times on a 10,000-alert database.

Ingest runs the real path: signed and sealed alerts with face crops, published QoS 1 over TLS with
passwords to a local Mosquitto by 10 simulated devices, received by the console's subscriber,
verified, unsealed and stored (crop fsynced, row committed with synchronous=FULL on SQLite).
Page loads are timed over HTTP against the console's own Starlette app under uvicorn, logged in,
on a database seeded with N alerts (rows written in bulk: the seeding is not what is measured).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import InputError, RuntimeFailure

DEVICES = 10
PASSWORD = "bench-supervisor-pw"


@dataclass(frozen=True, slots=True)
class ConsoleBenchParams:
    alerts: int = 1000  # alerts in the ingest burst
    db_alerts: int = 10_000  # alerts in the page-load database
    requests: int = 100  # requests per page kind
    database_url: str | None = None  # an empty scratch database instead of SQLite in a temp dir


def _ms(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000.0
    return {"p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1),
            "max": round(float(a.max()), 1)}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_config(root: Path, broker_uri: str, ca: Path | None, devices: dict[str, Path], url: str | None) -> Path:
    import yaml

    pw = root / "bo.pw"
    pw.write_text("bench-backoffice-pw")
    pw.chmod(0o600)
    cfg: dict[str, Any] = {
        "brokers": [broker_uri], "client_id": "bench-console", "username": "backoffice", "password_file": str(pw),
        "tls": {"ca_file": str(ca)} if ca else {}, "unseal_key": str(root / "bo-keys"),
        "devices": {d: {"public_key": str(p)} for d, p in devices.items()},
        "console": {"data_dir": str(root / "data"), "port": _free_port(), "secure_cookies": False,
                    **({"database_url": url} if url else {})},
    }  # fmt: skip
    path = root / "console.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ingest(root: Path, n: int, url: str | None) -> dict[str, Any]:
    from edge.backoffice.console.config import load_console_config
    from edge.backoffice.console.ingest import Ingest
    from edge.backoffice.console.server import open_parts
    from edge.core.alert_message import build_alert
    from edge.core.keys import generate_backoffice_keys, generate_device_keys
    from edge.core.mqtt import LinkSettings, MqttLink
    from edge.core.types import Match, MatchEvent, Subject
    from edge.lab.bench.alerts import _crop
    from edge.lab.localbroker import MosquittoBroker, mosquitto_available

    if not mosquitto_available():
        raise InputError("bench console needs Debian's mosquitto (apt-get install mosquitto)")
    bo = generate_backoffice_keys(root / "bo-keys")
    keys = {f"van-{i:02d}": generate_device_keys(root / f"van-{i:02d}") for i in range(DEVICES)}
    users = {d: f"pw-{d}" for d in keys} | {"backoffice": "bench-backoffice-pw"}
    broker = MosquittoBroker(root / "broker", tls=True, users=users, acl=None, persistence=False).start()
    try:
        cfg = load_console_config(
            _write_config(root, broker.uri, broker.ca_file, {d: root / d / "device_ed25519.pub.pem" for d in keys}, url)
        )
        parts = open_parts(cfg)
        ingest = Ingest(cfg, parts.store).start()
        crop = _crop()
        payloads = []
        for i in range(n):
            dev = f"van-{i % DEVICES:02d}"
            ev = MatchEvent(match=Match(Subject(f"S-{i % 200:04d}", "wanted", 2), 0.97, 0.1, 0.957), track_id=i,
                            frame_seq=i, t_wall=time.time(), camera="cam0", bbox=(1.0, 2.0, 3.0, 4.0), frames_fused=3,
                            watchlist_version=1, crop_jpeg=crop)  # fmt: skip
            payloads.append((dev, build_alert(ev, dev, keys[dev].ed25519, "det", "emb", seal_to=bo.x25519_public)))
        # Each simulated van on its own connection with its own credentials, as the ACL requires.
        links = {
            dev: MqttLink(
                LinkSettings(brokers=(broker.uri,), client_id=dev, username=dev, password=f"pw-{dev}",
                             ca_file=broker.ca_file, max_inflight=100)
            ).start()
            for dev in keys
        }  # fmt: skip
        try:
            if not (all(lk.wait_connected(20) for lk in links.values()) and ingest.listener.link.wait_connected(20)):
                raise RuntimeFailure("bench console: cannot connect to the local broker")
            if not broker.wait_subscribed("bench-console", "lfr/+/alerts"):
                raise RuntimeFailure("bench console: the console did not subscribe")
            t0 = time.perf_counter()
            handles = [links[dev].publish(f"lfr/{dev}/alerts", a.payload, qos=1) for dev, a in payloads]
            if not all(h.wait(120) for h in handles):
                raise RuntimeFailure("bench console: the broker did not acknowledge every alert")
            t_published = time.perf_counter() - t0
            if not ingest.wait_stored(n, 600):
                raise RuntimeFailure(f"bench console: only {ingest.stored} of {n} alerts stored")
            elapsed = time.perf_counter() - t0
        finally:
            for lk in links.values():
                lk.stop(offline_status=False)
            ingest.stop()
            parts.audit.close()
        return {"alerts": n, "devices": DEVICES, "seconds": round(elapsed, 2), "alerts_per_s": round(n / elapsed, 1),
                "published_in_s": round(t_published, 2), "stored": ingest.stored}  # fmt: skip
    finally:
        broker.stop()


def _seed(parts: Any, total: int) -> list[int]:
    """Bring the alerts table to `total` rows (a shared --database-url already holds the ingested ones)."""
    from sqlalchemy import func, select

    from edge.backoffice.console.models import AlertRow, Decision

    with parts.store.sessions() as s:
        n = max(0, total - (s.scalar(select(func.count(AlertRow.id))) or 0))

    decisions = [Decision.UNREVIEWED, Decision.CONFIRMED, Decision.NOT_A_MATCH, Decision.UNSURE]
    now = time.time()
    rng = np.random.default_rng(0)
    with parts.store.sessions() as s:
        for start in range(0, n, 1000):
            s.add_all(
                AlertRow(alert_id=f"seed-{i:08d}", device_id=f"van-{i % DEVICES:02d}", camera="cam0",
                         time=now - (n - i) * 30.0, time_text="", received_at=now, sealed=True, signature_key_id="k",
                         subject_id=f"S-{i % 500:04d}", category="wanted", priority=2, score=float(rng.uniform(0.95, 1)),
                         threshold=0.957, margin=0.1, track_id=i, watchlist_version=1,
                         decision=decisions[0 if i % 10 == 0 else 1 + i % 3], decided_by=None if i % 10 == 0 else "sup",
                         decided_at=None if i % 10 == 0 else now)
                for i in range(start, min(n, start + 1000))
            )  # fmt: skip
            s.commit()
    with parts.store.sessions() as s:
        return list(s.scalars(select(AlertRow.id).order_by(AlertRow.id)).all())


def _pages(root: Path, n: int, requests: int, url: str | None) -> dict[str, Any]:
    import uvicorn

    from edge.backoffice.console.config import load_console_config
    from edge.backoffice.console.httpclient import ConsoleClient
    from edge.backoffice.console.models import Role
    from edge.backoffice.console.server import open_parts
    from edge.backoffice.console.web import build_app
    from edge.core.keys import generate_backoffice_keys

    (root / "pages").mkdir()
    generate_backoffice_keys(root / "pages" / "bo-keys")
    cfg = load_console_config(_write_config(root / "pages", "mqtt://127.0.0.1:1", None, {}, url))
    parts = open_parts(cfg)
    t0 = time.perf_counter()
    ids = _seed(parts, n)
    seed_s = time.perf_counter() - t0
    parts.accounts.add_user("bench", Role.SUPERVISOR, PASSWORD, "bench")
    server = uvicorn.Server(uvicorn.Config(build_app(parts.console), host="127.0.0.1", port=cfg.console.port,
                                           log_level="warning", access_log=False))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        client = ConsoleClient(cfg.console.port)
        try:
            client.login("bench", PASSWORD)
        except RuntimeError as e:
            raise RuntimeFailure(f"bench console: {e}") from None
        rng = np.random.default_rng(1)
        last_page = -(-n // cfg.console.page_size)
        kinds: dict[str, Callable[[int], str]] = {
            "queue page 1": lambda i: "/alerts",
            "queue deep page": lambda i: f"/alerts?page={int(rng.integers(2, last_page + 1))}",
            "queue filtered": lambda i: f"/alerts?device=van-{i % DEVICES:02d}&state=unreviewed",
            "review page": lambda i: f"/alerts/{ids[int(rng.integers(0, len(ids)))]}",
            "live poll (api)": lambda i: f"/api/alerts/new?after={ids[-1]}",
        }
        out: dict[str, Any] = {}
        for name, path in kinds.items():
            times = []
            for i in range(requests):
                t = time.perf_counter()
                status, _, _ = client.request("GET", path(i))
                times.append(time.perf_counter() - t)
                if status != 200:
                    raise RuntimeFailure(f"bench console: {path(i)} answered HTTP {status}")
            out[name] = _ms(times)
        return {"db_alerts": len(ids), "requests_per_kind": requests, "seed_s": round(seed_s, 1), "ms": out}
    finally:
        server.should_exit = True
        thread.join(10)
        parts.audit.close()


def run(args: ConsoleBenchParams) -> dict[str, Any]:
    """The bench's JSON document (docs/BENCHMARKS.md)."""
    root = Path(tempfile.mkdtemp(prefix="lfr-bench-console-"))
    try:
        ingest = _ingest(root / "ingest", args.alerts, args.database_url)
        pages = _pages(root, args.db_alerts, args.requests, args.database_url)
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu, Python {platform.python_version()}",
        "database": "PostgreSQL" if args.database_url and args.database_url.startswith("postgres") else "SQLite",
        "ingest": ingest,
        "pages": pages,
    }


def format_text(result: dict[str, Any]) -> str:
    i, pages = result["ingest"], result["pages"]
    lines = [
        f"console ingest: {i['alerts']} alerts from {i['devices']} devices (TLS, QoS 1, sealed, with crops) "
        f"stored in {i['seconds']} s = {i['alerts_per_s']} alerts/s ({result['database']})",
        f"page loads on a {pages['db_alerts']}-alert database, {pages['requests_per_kind']} requests each (ms):",
    ]
    for name, ms in pages["ms"].items():
        lines.append(f"  {name:<18} p50 {ms['p50']:>7}  p95 {ms['p95']:>7}  max {ms['max']:>7}")
    return "\n".join(lines)
