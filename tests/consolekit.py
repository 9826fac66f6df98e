"""Builders for console tests: a console config on a real broker, a real PostgreSQL, a running console."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.lab.localbroker import MosquittoBroker
from tests.alertkit import ROOT, make_backoffice

PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_console_config(
    root: Path,
    broker: MosquittoBroker,
    devices: dict[str, Path],
    password: str,
    database_url: str | None = None,
    port: int = 0,
    **console: Any,
) -> Path:
    """backoffice.yaml (as tests.alertkit writes it) plus a console: section; returns its path."""
    path = make_backoffice(root, broker, devices, password, client_id="bo-console")
    cfg = yaml.safe_load(path.read_text())
    section: dict[str, Any] = {"data_dir": str(root / "console-data"), "port": port, "secure_cookies": True}
    if database_url:
        section["database_url"] = database_url
    section.update(console)
    cfg["console"] = section
    path.write_text(yaml.safe_dump(cfg))
    return path


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class Postgres:
    url: str
    data: Path
    pg_ctl: Path
    user: str | None

    def stop(self) -> None:
        cmd = [str(self.pg_ctl), "-D", str(self.data), "-m", "immediate", "stop"]
        subprocess.run(_as(self.user, cmd), capture_output=True, timeout=60)
        shutil.rmtree(self.data.parent, ignore_errors=True)


def _as(user: str | None, cmd: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


def start_postgres(durable: bool = False) -> Postgres:
    """A throwaway cluster on a free loopback port; initdb refuses root, so as `nobody` when root.

    Tests run it with fsync off (they check behaviour, not crash safety); `durable` keeps fsync on, for figures.
    """
    if not PG_BINS:
        pytest.skip("PostgreSQL server not installed (Debian package `postgresql`)")
    bindir = PG_BINS[-1].parent
    user = None
    base = Path(tempfile.mkdtemp(prefix="lfr-console-pg-"))
    if os.geteuid() == 0:
        user = "nobody"
        pw = pwd.getpwnam(user)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    data = base / "data"
    port = free_port()
    r = subprocess.run(
        _as(user, [str(bindir / "initdb"), "-D", str(data), "-U", "lfr", "--auth=trust", "-E", "UTF8", "--no-sync"]),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1" + ("" if durable else " -c fsync=off")
    r = subprocess.run(
        _as(user, [str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"]),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr + (base / "log").read_text()
    return Postgres(f"postgresql+psycopg://lfr@127.0.0.1:{port}/postgres", data, bindir / "pg_ctl", user)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = start_postgres()
    try:
        yield pg
    finally:
        pg.stop()


def fresh_database(pg: Postgres, name: str) -> str:
    """An empty database on the shared cluster, so each test starts from migration 0."""
    from sqlalchemy import create_engine, text

    admin = create_engine(pg.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return pg.url.rsplit("/", 1)[0] + "/" + name


# --------------------------------------------------------------------------- a running console


@dataclass
class RunningConsole:
    proc: subprocess.Popen[str]
    url: str
    config: Path

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return (self.proc.stderr.read() if self.proc.stderr else "") or ""


def add_user(config: Path, username: str, role: str, password: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "edge", "backoffice", "user", "add", "--config", str(config), "--username", username,
         "--role", role, "--password-stdin"],
        input=password + "\n", capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def start_console(config: Path, timeout: float = 60.0) -> RunningConsole:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "backoffice", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "serving http" in line or not line:
            break
    if "serving http" not in line:
        proc.kill()
        raise AssertionError(f"console did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    url = line.split("serving ", 1)[1].split()[0].rstrip("/")
    return RunningConsole(proc, url, config)
