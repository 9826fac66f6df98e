"""The console's storage on SQLite and on a real PostgreSQL: migrations, durable alerts, review, retention, audit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy", reason="the console needs the backoffice extra (pip install -e '.[backoffice]')")

from sqlalchemy import inspect, select

from edge.backoffice.console.config import MAX_CROP_BYTES, ConsoleConfig, load_console_config
from edge.backoffice.console.models import Decision, Role
from edge.backoffice.console.retention import sweep
from edge.backoffice.console.server import Parts, open_parts
from edge.backoffice.console.store import AlertFilter, Outcome
from edge.core.alert_message import build_alert, verify_alert
from edge.core.audit.log import iter_records
from edge.core.audit.verify import verify_log
from edge.core.keys import generate_device_keys, load_backoffice_keys, load_device_keys
from tests.alertkit import event, face_jpeg, make_backoffice_keys
from tests.consolekit import Postgres, fresh_database, postgres  # noqa: F401  (fixture)

DAY = 86400.0


class Clock:
    """Injected time: retention is driven by moving this, never by sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def console_config(root: Path, database_url: str | None) -> ConsoleConfig:
    keys = make_backoffice_keys(root)
    devkeys = root / "dev-a-keys"
    generate_device_keys(devkeys)
    console: dict[str, Any] = {"data_dir": str(root / "data"), "keys_dir": str(keys)}
    if database_url:
        console["database_url"] = database_url
    import yaml

    path = root / "backoffice.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "brokers": ["mqtt://127.0.0.1:1"],
                "unseal_key": str(keys),
                "devices": {"dev-a": {"public_key": str(devkeys / "device_ed25519.pub.pem")}},
                "console": console,
                "retention": {"false_alert_days": 1, "confirmed_days": 31},
            }
        )
    )
    return load_console_config(path)


@pytest.fixture(params=["sqlite", "postgresql"])
def parts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Parts, Clock, Path]]:
    url = None
    if request.param == "postgresql":
        pg: Postgres = request.getfixturevalue("postgres")
        url = fresh_database(pg, f"t{abs(hash(tmp_path.name)) % 10**8}")
    cfg = console_config(tmp_path, url)
    clock = Clock()
    p = open_parts(cfg, clock)
    try:
        yield p, clock, tmp_path
    finally:
        p.audit.close()
        p.store.sessions.kw["bind"].dispose()


def verified(root: Path, i: int, crop: bytes | None = None, subject: str | None = None) -> Any:
    dev = load_device_keys(root / "dev-a-keys")
    bo = load_backoffice_keys(root / "bo-keys")
    ev = event(i, crop if crop is not None else face_jpeg())
    if subject is not None:
        from dataclasses import replace

        ev = replace(ev, match=replace(ev.match, subject=replace(ev.match.subject, subject_id=subject)))
    a = build_alert(ev, "dev-a", dev.ed25519, "det", "emb", seal_to=bo.x25519_public)
    return verify_alert(a.payload, {"dev-a": dev.ed25519_public}, bo.x25519)


def test_migrations_create_the_schema_and_alerts_are_stored_once_with_their_crop(
    parts: tuple[Parts, Clock, Path],
) -> None:
    p, _, root = parts
    engine = p.store.sessions.kw["bind"]
    assert {"alerts", "devices", "deployments", "users", "sessions", "watchlists", "reference_images",
            "alembic_version"} <= set(inspect(engine).get_table_names())  # fmt: skip
    a = verified(root, 1)
    res = p.store.store_alert(a, "kid")
    assert res.outcome is Outcome.STORED
    assert p.store.store_alert(a, "kid").outcome is Outcome.DUPLICATE
    row = p.store.alert(res.row_id or 0)
    assert row is not None and row.subject_id == "S-0001" and row.decision is Decision.UNREVIEWED
    assert abs((row.score or 0) - 0.7123) < 1e-9 and row.threshold == 0.55 and row.track_id == 1
    crop = p.store.crops / (row.crop_file or "")
    assert crop.read_bytes() == face_jpeg() and crop.stat().st_mode & 0o777 == 0o600
    # Opening again (a restart) runs the migrations again as a no-op and keeps the data.
    again = open_parts(p.console.cfg)
    assert again.store.queue(AlertFilter()).total == 1
    again.audit.close()


def test_an_oversized_or_non_jpeg_crop_and_overlong_fields_are_refused_never_stored(
    parts: tuple[Parts, Clock, Path],
) -> None:
    p, _, root = parts
    big = b"\xff\xd8" + bytes(MAX_CROP_BYTES)
    r = p.store.store_alert(verified(root, 1, crop=big), "kid")
    assert r.outcome is Outcome.REFUSED and "exceeds" in r.reason
    assert p.store.store_alert(verified(root, 2, crop=b"GIF89a"), "kid").outcome is Outcome.REFUSED
    assert p.store.store_alert(verified(root, 3, subject="x" * 300), "kid").outcome is Outcome.REFUSED
    assert p.store.queue(AlertFilter()).total == 0
    assert list(p.store.crops.iterdir()) == []


def test_queue_puts_unreviewed_first_filters_and_pages(parts: tuple[Parts, Clock, Path]) -> None:
    p, _, root = parts
    ids = [p.store.store_alert(verified(root, i), "kid").row_id or 0 for i in range(7)]
    p.store.page_size = 3
    p.store.decide(ids[-1], Decision.CONFIRMED, "ann", "")  # the newest, now reviewed
    first = p.store.queue(AlertFilter(), 1)
    assert first.total == 7 and first.pages == 3 and len(first.rows) == 3
    every = [r.id for n in (1, 2, 3) for r in p.store.queue(AlertFilter(), n).rows]
    assert sorted(every) == sorted(ids) and every[-1] == ids[-1]  # reviewed last
    assert p.store.queue(AlertFilter(decision=Decision.CONFIRMED)).total == 1
    assert p.store.queue(AlertFilter(device_id="dev-b")).total == 0
    assert p.store.queue(AlertFilter(since=time.time() + 3600)).total == 0
    assert [r.id for r in p.store.newer_than(AlertFilter(), ids[4])] == ids[5:]


def test_decisions_are_stored_and_audited_and_retention_deletes_crops_on_time(parts: tuple[Parts, Clock, Path]) -> None:
    p, clock, root = parts
    keep, false_alert, confirmed = (p.store.store_alert(verified(root, i), "kid").row_id or 0 for i in range(3))
    p.store.decide(false_alert, Decision.NOT_A_MATCH, "ann", "different person; <script>x</script>")
    p.store.decide(confirmed, Decision.CONFIRMED, "bob", "")
    crops = {i: p.store.crops / (p.store.alert(i).crop_file or "") for i in (keep, false_alert, confirmed)}  # type: ignore[union-attr]
    policy = p.console.cfg.retention

    clock.now += 0.9 * DAY
    assert sweep(p.store, policy).deleted == 0 and all(c.exists() for c in crops.values())
    clock.now += 0.2 * DAY  # past false_alert_days (1)
    assert sweep(p.store, policy).deleted == 1
    assert not crops[false_alert].exists() and p.store.alert(false_alert) is None
    assert crops[confirmed].exists() and crops[keep].exists()
    clock.now += 31 * DAY  # past confirmed_days (31); the unreviewed alert stays until someone decides
    assert sweep(p.store, policy).deleted == 1
    assert not crops[confirmed].exists() and crops[keep].exists() and p.store.alert(keep) is not None

    p.audit.close()
    pub = load_backoffice_keys(root / "bo-keys").ed25519_public
    report = verify_log(p.audit.dir, pub)
    assert report.ok, report.problems
    recs = [r for r in iter_records(p.audit.dir) if r.kind in ("alert_reviewed", "alert_deleted")]
    assert [(r.kind, r.fields["decision"]) for r in recs] == [
        ("alert_reviewed", "not_a_match"), ("alert_reviewed", "confirmed"),
        ("alert_deleted", "not_a_match"), ("alert_deleted", "confirmed"),
    ]  # fmt: skip
    assert recs[0].fields["officer"] == "ann" and recs[1].fields["officer"] == "bob"


def test_accounts_hash_with_argon2_refuse_weak_passwords_and_sessions_expire(parts: tuple[Parts, Clock, Path]) -> None:
    from edge.backoffice.console.models import UserRow
    from edge.core.errors import InputError

    p, clock, _ = parts
    with pytest.raises(InputError, match="at least 12"):
        p.accounts.add_user("ann", Role.OFFICER, "short", "cli")
    user = p.accounts.add_user("ann", Role.OFFICER, "correct horse battery", "cli")
    with pytest.raises(InputError, match="already exists"):
        p.accounts.add_user("ann", Role.SUPERVISOR, "correct horse battery", "cli")
    with p.store.sessions() as s:
        stored = s.scalar(select(UserRow.password_hash).where(UserRow.username == "ann"))
    assert stored is not None and stored.startswith("$argon2id$") and "correct horse" not in stored
    assert p.accounts.authenticate("ann", "wrong password!") is None
    assert p.accounts.authenticate("nobody", "correct horse battery") is None
    assert p.accounts.authenticate("ann", "correct horse battery") == user
    token, login = p.accounts.open_session(user)
    assert p.accounts.session(token) == login and p.accounts.session(token + "x") is None
    clock.now += 13 * 3600  # past session_hours (12)
    assert p.accounts.session(token) is None


def test_reference_images_go_after_their_watchlist_expired_and_no_alert_needs_them(
    parts: tuple[Parts, Clock, Path],
) -> None:
    from edge.backoffice.console.models import ReferenceImageRow, WatchlistRow

    p, clock, root = parts
    ref = p.store.refs_dir / "ref.jpg"
    ref.write_bytes(face_jpeg())
    with p.store.sessions() as s:
        s.add(WatchlistRow(version=7, created_at=clock.now, created_by="sup", expires_at=clock.now + DAY, subjects=1,
                           templates=1, bundle_file="w.lfrw", report_json="[]", published_to=""))  # fmt: skip
        s.add(ReferenceImageRow(watchlist_version=7, subject_id="S-0001", file="ref.jpg"))
        s.commit()
    alert = p.store.store_alert(verified(root, 1), "kid").row_id or 0  # raised under watchlist v7
    assert [r.file for r in p.store.references("S-0001")] == ["ref.jpg"]
    policy = p.console.cfg.retention
    clock.now += 40 * DAY  # the list expired 39 days ago, but an unreviewed alert still needs the image
    assert sweep(p.store, policy).references_removed == 0 and ref.exists()
    p.store.decide(alert, Decision.NOT_A_MATCH, "ann", "")
    clock.now += 2 * DAY
    result = sweep(p.store, policy)
    assert (result.deleted, result.references_removed) == (1, 1)
    assert not ref.exists() and p.store.references("S-0001") == []


def test_a_last_will_marks_a_device_offline_and_keeps_what_it_last_reported(parts: tuple[Parts, Clock, Path]) -> None:
    p, clock, _ = parts
    p.store.update_status("dev-a", {"state": "online", "watchlist_version": 3, "alerts": {"raised": 5, "pending": 1}})
    clock.now += 60
    p.store.update_status("dev-a", {"state": "offline"})
    (dev,) = p.store.devices()
    assert (dev.state, dev.watchlist_version, dev.alerts_raised, dev.spool_depth) == ("offline", 3, 5, 1)
    assert dev.last_seen == clock.now
