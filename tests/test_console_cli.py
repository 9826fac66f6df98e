"""`lfr-edge backoffice serve|user`: beside `backoffice init`, bad input in one line with exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.alertkit import ROOT, make_backoffice_keys

pytest.importorskip("sqlalchemy", reason="the console needs the backoffice extra (pip install -e '.[backoffice]')")


def lfr(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_example_config_loads_and_binds_loopback_by_default() -> None:
    from edge.backoffice.console.config import ConsoleSettings, load_console_config

    cfg = load_console_config(ROOT / "config" / "console.example.yaml")
    assert cfg.console.host == "127.0.0.1" and ConsoleSettings().host == "127.0.0.1"
    assert cfg.retention.false_alert_days == 1 and cfg.retention.confirmed_days == 31
    assert cfg.database_url.startswith("sqlite:///") and cfg.data_dir.is_absolute()


def test_console_commands_sit_beside_backoffice_init_and_refuse_bad_input(tmp_path: Path) -> None:
    r = lfr("backoffice", "--help")
    assert r.returncode == 0 and all(w in r.stdout for w in ("init", "show", "serve", "user"))
    keys = tmp_path / "keys"
    assert lfr("backoffice", "init", "--dir", str(keys)).returncode == 0
    make_backoffice_keys(tmp_path)
    cfg = {"brokers": ["mqtt://127.0.0.1:1"], "unseal_key": str(keys), "console": {"data_dir": str(tmp_path / "d")}}
    good = tmp_path / "console.yaml"
    good.write_text(yaml.safe_dump(cfg))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**cfg, "console": {"colour": "red"}}))

    r = lfr("backoffice", "serve", "--config", str(bad))
    assert (
        r.returncode == 2
        and r.stderr.strip() == f"error: {bad}: console.colour: unknown key (see config/backoffice.example.yaml)"
    )
    r = lfr("backoffice", "user", "add", "--config", str(good), "--username", "chief", "--role", "supervisor",
            "--password-stdin", stdin="short\n")  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip() == "error: password: at least 12 characters (got 5)"
    r = lfr("backoffice", "user", "add", "--config", str(good), "--username", "Chief <b>", "--role", "officer",
            "--password-stdin", stdin="long enough password\n")  # fmt: skip
    assert r.returncode == 2 and "user name" in r.stderr
    add = ("backoffice", "user", "add", "--config", str(good), "--username", "chief", "--role", "supervisor",
           "--password-stdin")  # fmt: skip
    assert lfr(*add, stdin="long enough password\n").returncode == 0
    r = lfr(*add, stdin="long enough password\n")
    assert r.returncode == 2 and "already exists" in r.stderr
    r = lfr("backoffice", "user", "list", "--config", str(good))
    assert r.returncode == 0 and r.stdout.split() == ["chief", "supervisor", "active"]


def test_bench_console_reports_ingest_rate_and_page_load_percentiles() -> None:
    import json

    from edge.lab.localbroker import mosquitto_available

    if not mosquitto_available():
        pytest.skip("Debian mosquitto not installed")
    r = lfr("bench", "console", "--alerts", "20", "--db-alerts", "300", "--requests", "5", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ingest"]["stored"] == 20 and out["ingest"]["alerts_per_s"] > 0
    assert out["pages"]["db_alerts"] == 300
    assert set(out["pages"]["ms"]) == {
        "queue page 1",
        "queue deep page",
        "queue filtered",
        "review page",
        "live poll (api)",
    }
    assert all(0 < v["p50"] <= v["p95"] <= v["max"] for v in out["pages"]["ms"].values())


BLOCK_EXTRA = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('sqlalchemy', 'starlette', 'alembic', 'argon2', 'uvicorn', 'jinja2'):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
from edge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_device_install_without_the_extra_runs_the_cli_and_names_the_missing_extra(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", "import sys, edge.cli.main; edge.cli.main.build_parser(); "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'starlette', 'argon2')))"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    cfg = tmp_path / "console.yaml"
    cfg.write_text(yaml.safe_dump({"brokers": ["mqtt://127.0.0.1:1"]}))
    r = subprocess.run([sys.executable, "-c", BLOCK_EXTRA, "backoffice", "serve", "--config", str(cfg)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "needs the backoffice extra" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = subprocess.run([sys.executable, "-c", BLOCK_EXTRA, "keys", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0
