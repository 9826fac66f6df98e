"""Assemble and run the console: migrate, ingest from the broker, serve the pages, sweep retention."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge.backoffice.console import audit as ca
from edge.backoffice.console.accounts import Accounts, LoginLimiter
from edge.backoffice.console.config import ConsoleConfig
from edge.backoffice.console.db import make_engine, migrate, session_factory
from edge.backoffice.console.ingest import Ingest
from edge.backoffice.console.retention import sweep
from edge.backoffice.console.store import ConsoleStore
from edge.backoffice.console.web import Console, build_app
from edge.core.errors import InputError
from edge.core.keys import load_backoffice_keys

log = logging.getLogger("lfr_edge.console")


@dataclass
class Parts:
    console: Console
    audit: ca.ConsoleAudit

    @property
    def store(self) -> ConsoleStore:
        return self.console.store

    @property
    def accounts(self) -> Accounts:
        return self.console.accounts


def open_parts(cfg: ConsoleConfig, clock: Callable[[], float] = time.time) -> Parts:
    """Database migrated to head, audit log open, store and accounts ready; no network yet."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys_dir = cfg.signing_keys_dir
    if keys_dir is None:
        raise InputError("console.keys_dir: the back-office keys directory is needed to sign the console's audit log")
    signer = load_backoffice_keys(keys_dir).ed25519
    engine = make_engine(cfg.database_url)
    migrate(engine)
    sessions = session_factory(engine)
    audit = ca.ConsoleAudit(cfg.data_dir, signer, clock)
    store = ConsoleStore(sessions, cfg.data_dir, audit, clock, cfg.console.page_size)
    accounts = Accounts(sessions, audit, cfg.console.session_hours, clock)
    limiter = LoginLimiter(cfg.console.login_attempts, cfg.console.login_window_s)
    console = Console(cfg, store, accounts, limiter)
    try:
        from edge.backoffice.console.watchlists import WatchlistPages

        console.extra_pages["watchlists"] = WatchlistPages(cfg, store, audit, signer)
    except ImportError:  # pragma: no cover - the module ships with the package
        pass
    return Parts(console, audit)


def _retention_loop(parts: Parts, stop: threading.Event) -> None:
    policy = parts.console.cfg.retention
    while not stop.wait(policy.sweep_interval_s):
        try:
            sweep(parts.store, policy)
        except Exception:
            log.exception("console: retention sweep failed; retrying at the next interval")


def serve(cfg: ConsoleConfig, ready: Callable[[str], None] | None = None) -> None:
    import uvicorn

    parts = open_parts(cfg)
    ingest = Ingest(cfg, parts.store).start()
    pages = parts.console.extra_pages.get("watchlists")
    if pages is not None:
        link, root = ingest.listener.link, cfg.topic_root

        def publish(device_id: str, bundle: bytes) -> bool:
            return bool(link.publish(f"{root}/{device_id}/watchlist", bundle, qos=1, retain=True).wait(30.0))

        pages.publish = publish
    stop = threading.Event()
    sweeper = threading.Thread(target=_retention_loop, args=(parts, stop), name="retention", daemon=True)
    sweep(parts.store, cfg.retention)
    sweeper.start()
    app = build_app(parts.console)
    config = uvicorn.Config(app, host=cfg.console.host, port=cfg.console.port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if ready is not None:
        orig_startup = server.startup

        async def startup(sockets: object = None) -> None:
            await orig_startup(sockets)  # type: ignore[arg-type]
            port = server.servers[0].sockets[0].getsockname()[1] if server.servers else cfg.console.port
            ready(f"http://{cfg.console.host}:{port}/")

        server.startup = startup  # type: ignore[method-assign]
    try:
        server.run()
    finally:
        stop.set()
        ingest.stop()
        parts.audit.close()
