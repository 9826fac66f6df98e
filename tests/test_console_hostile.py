"""Hostile input and the console's defences, in a real Chromium against a running console and a real Mosquitto.

SQL and HTML in a subject id, a note, a device name and a deployment record render as inert text
(server-rendered and live-inserted rows alike); logins are rate-limited; a POST without the form's
CSRF token changes nothing; a device that falls silent turns red.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge.core.alert_message import build_alert, build_status
from edge.core.audit.log import canonical
from edge.core.keys import generate_device_keys, load_backoffice_keys, load_device_keys
from edge.core.mqtt import LinkSettings, MqttLink
from edge.lab.localbroker import MosquittoBroker
from tests.alertkit import event, face_jpeg, make_backoffice_keys
from tests.broker import broker_factory, plain_broker  # noqa: F401  (fixtures)
from tests.consolekit import RunningConsole, add_user, make_console_config, start_console
from tests.test_console_browser import browser, login, require_chromium, wait_rows  # noqa: F401  (fixture)

pytest.importorskip("sqlalchemy", reason="the console needs the backoffice extra (pip install -e '.[backoffice]')")
pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (console-test extra)")

pytestmark = pytest.mark.slow

EVIL_DEVICE = 'van"><svg onload=alert(1)>'
SQL_DEVICE = "van'; DROP TABLE alerts;--"
EVIL_SUBJECT = "<script>alert(1)</script>"
SQL_SUBJECT = "Robert'); DROP TABLE alerts;--"
SUP = ("sup", "supervisor-password-1")
OFC = ("ofc", "officer-password-12")


@pytest.fixture
def hostile(tmp_path: Path, plain_broker: MosquittoBroker) -> Iterator[dict[str, Any]]:  # noqa: F811
    require_chromium()
    bo = make_backoffice_keys(tmp_path)
    keys = {}
    for i, dev in enumerate((EVIL_DEVICE, SQL_DEVICE)):
        generate_device_keys(tmp_path / f"dev{i}")
        keys[dev] = load_device_keys(tmp_path / f"dev{i}")
    cfg = make_console_config(
        tmp_path, plain_broker, {d: tmp_path / f"dev{i}" / "device_ed25519.pub.pem" for i, d in enumerate(keys)},
        "unused", keys_dir=str(bo), offline_after_s=2.0,
    )  # fmt: skip
    add_user(cfg, SUP[0], "supervisor", SUP[1])
    add_user(cfg, OFC[0], "officer", OFC[1])
    console = start_console(cfg)
    link = MqttLink(LinkSettings(brokers=(plain_broker.uri,), client_id="hostile-sim")).start()
    try:
        assert plain_broker.wait_subscribed("bo-console", "lfr/+/alerts")
        assert link.wait_connected(10)
        yield {"console": console, "link": link, "keys": keys, "seal": load_backoffice_keys(bo).x25519_public}
    finally:
        link.stop(offline_status=False)
        console.stop()


def send(h: dict[str, Any], device: str, subject: str, i: int) -> None:
    ev = event(i, face_jpeg())
    ev = replace(ev, match=replace(ev.match, subject=replace(ev.match.subject, subject_id=subject)))
    a = build_alert(ev, device, h["keys"][device].ed25519, "d", "e", seal_to=h["seal"])
    assert h["link"].publish(f"lfr/{device}/alerts", a.payload, qos=1).wait(10)


def test_injection_in_subject_device_note_and_records_renders_inert(
    hostile: dict[str, Any],
    browser: Any,  # noqa: F811
) -> None:
    console: RunningConsole = hostile["console"]
    url = console.url
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    # Rate-limited login: after 5 failures for a name, even the right password is refused for a while.
    for _ in range(5):
        page.goto(url + "/login")
        page.fill("#username", OFC[0])
        page.fill("#password", "not the password")
        page.click("#login")
        page.wait_for_load_state()
        assert "Wrong user name or password" in page.inner_text("#message")
    page.fill("#username", OFC[0])
    page.fill("#password", OFC[1])
    page.click("#login")
    page.wait_for_load_state()
    assert "Too many failed attempts" in page.inner_text("#message") and "/alerts" not in page.url

    login(page, url, SUP)
    send(hostile, EVIL_DEVICE, EVIL_SUBJECT, 1)  # arrives while the queue is open: the live path
    wait_rows(page, 1, 15)
    send(hostile, SQL_DEVICE, SQL_SUBJECT, 2)
    wait_rows(page, 2, 15)
    live_cells = page.locator("#queue tbody td.subject").all_inner_texts()
    page.reload()  # and the server-rendered path
    assert sorted(live_cells) == sorted(page.locator("#queue tbody td.subject").all_inner_texts())
    assert sorted(live_cells) == sorted([EVIL_SUBJECT, SQL_SUBJECT])
    rows = page.locator("#queue tbody tr").all_inner_texts()
    assert any(EVIL_DEVICE in r for r in rows) and any(SQL_DEVICE in r for r in rows)
    assert page.locator("main svg, main script").count() == 0
    # The device filter takes the hostile name as a value, nothing more.
    page.select_option("#f-device", EVIL_DEVICE)
    page.click("form.filters button")
    assert page.locator("#queue tbody td.subject").all_inner_texts() == [EVIL_SUBJECT]

    # A decision posted without the form's CSRF token is refused and changes nothing.
    page.click("#queue tbody tr a")
    page.wait_for_selector("#decision")
    alert_path = page.url.removeprefix(url)
    forged = page.request.post(url + alert_path + "/decision", form={"decision": "confirmed"})
    assert forged.status == 403
    page.reload()
    assert page.inner_text("#decision") == "Unreviewed"
    note = "</td><script>alert(2)</script>'; DELETE FROM users;--"
    page.fill("#note-input", note)
    page.click("#unsure")
    page.wait_for_selector("#note")
    assert page.inner_text("#note") == note and page.inner_text("#subject") == EVIL_SUBJECT
    page.goto(url + "/users")
    assert page.locator("#users tbody tr").count() == 2  # no DELETE ran

    # Devices: retained status makes one online; silence past offline_after_s turns it red.
    status = {"state": "online", "alerts": {"raised": 1, "pending": 0}}
    signed = build_status(status, EVIL_DEVICE, hostile["keys"][EVIL_DEVICE].ed25519)  # statuses are signed
    assert hostile["link"].publish(f"lfr/{EVIL_DEVICE}/status", signed, qos=1, retain=True).wait(10)
    record = {"seq": 3, "time": "2026-01-01T00:00:00Z", "kind": "deployment_record", "prev_hash": "0" * 64,
              "hash": "cd" * 32, "fields": {"device_id": EVIL_DEVICE, "location": "<img src=x onerror=alert(3)>"}}  # fmt: skip
    assert hostile["link"].publish(f"lfr/{EVIL_DEVICE}/audit", canonical(record), qos=1).wait(10)
    time.sleep(0.5)
    page.goto(url + "/devices")
    evil_row = page.locator("#devices tbody tr").filter(has_text="svg onload")
    assert evil_row.get_attribute("class") == "online" and evil_row.locator("td").first.inner_text() == EVIL_DEVICE
    assert page.locator("#devices tbody tr.offline").filter(has_text="DROP TABLE").count() == 1  # never seen
    time.sleep(2.5)
    page.reload()
    assert page.locator("#devices tbody tr").filter(has_text="svg onload").get_attribute("class") == "offline"
    page.goto(url + "/deployments")
    assert "<img src=x onerror=alert(3)>" in page.inner_text("main")
    assert page.locator("main img, main svg, main script").count() == 0
    assert dialogs == []
