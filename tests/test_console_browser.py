"""The review console in a real headless Chromium: a real device run's alerts are reviewed end to end.

Real parts only: Mosquitto with TLS, passwords and the ACL; `lfr-edge run` on a generated clip of
LFW faces; `lfr-edge backoffice serve` on SQLite; Debian's chromium driven by Playwright. The queue
and review screenshots land in test-artifacts/ (CI keeps them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from edge.core.audit.log import iter_records
from edge.core.audit.verify import verify_log
from edge.core.keys import load_backoffice_keys
from tests.alertkit import ROOT, make_backoffice_keys, make_device
from tests.broker import DEVICE_USERS, broker_factory, tls_broker  # noqa: F401  (fixtures)
from tests.consolekit import RunningConsole, add_user, make_console_config, start_console

pytest.importorskip("sqlalchemy", reason="the console needs the backoffice extra (pip install -e '.[backoffice]')")
playwright_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (console-test extra)")

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
ARTIFACTS = Path(os.environ.get("LFR_EDGE_ARTIFACTS", ROOT / "test-artifacts"))
SUPERVISOR = ("sup", "supervisor-password-1")
OFFICER = ("ofc", "officer-password-12")
ENROLLED = ("Jimmy_Carter", "Rob_Marshall")
N_FRAMES = 45
MATCHING = {"threshold": 4.5, "min_margin": 0.5, "cooldown_s": 60.0}  # as tests/test_pipeline.py


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium not installed (apt-get install chromium)")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    require_chromium()
    with playwright_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 860},
        )  # fmt: skip
        try:
            yield ctx
        finally:
            ctx.close()


def login(page: Any, url: str, who: tuple[str, str]) -> None:
    page.goto(url + "/login")
    page.fill("#username", who[0])
    page.fill("#password", who[1])
    page.click("#login")
    page.wait_for_load_state()
    assert page.url == url + "/alerts", f"login as {who[0]} failed: {page.url} {page.inner_text('main')[:300]}"


def wait_rows(page: Any, n: int, timeout: float) -> float:
    """Wait until the queue shows n rows; returns when. (Polled from here: the page's CSP forbids
    the eval that Playwright's wait_for_function would inject.)"""
    deadline = time.monotonic() + timeout
    while page.locator("#queue tbody tr").count() < n:
        assert time.monotonic() < deadline, f"queue shows {page.locator('#queue tbody tr').count()} rows, expected {n}"
        time.sleep(0.05)
    return time.monotonic()


def decode(body: bytes) -> np.ndarray[Any, Any]:
    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "the page's image URL did not return a decodable image"
    return img


@pytest.fixture
def world(tmp_path: Path, tls_broker: Any, faces_dir: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    from tests.videogen import default_cast, enrolment_images, generate

    bo_keys = make_backoffice_keys(tmp_path)
    dev = make_device(
        tmp_path, tls_broker, "dev-a", DEVICE_USERS["dev-a"], seal_to=bo_keys / "backoffice_x25519.pub.pem"
    )
    cast = [p for p in default_cast(N_FRAMES) if p.identity in ENROLLED]
    clip = tmp_path / "clip"
    generate(faces_dir, clip, 1280, 720, n_frames=N_FRAMES, fps=15.0, cast=cast, write_dir=False)
    cfg = yaml.safe_load(dev.config.read_text())
    cfg["camera"] = {"source": f"file:{clip / 'clip.mp4'}"}
    cfg["matching"] = MATCHING
    cfg["watchlist"] = {"trusted_signers": [str(bo_keys / "backoffice_ed25519.pub.pem")], "at_rest": True}  # installed before it runs
    cfg["logging"] = {"level": "WARNING"}
    dev.config.write_text(yaml.safe_dump(cfg))
    custody = tmp_path / "custody"
    for ident in ENROLLED:
        (custody / ident).mkdir(parents=True)
        for img in enrolment_images(faces_dir / "lfw", ident, 2):
            shutil.copy(img, custody / ident / img.name)
    console_cfg = make_console_config(
        tmp_path, tls_broker, {"dev-a": dev.public_key}, DEVICE_USERS["backoffice"], keys_dir=str(bo_keys),
        device_x25519={"dev-a": str(dev.dir / "keys" / "device_x25519.pub.pem")},
    )  # fmt: skip
    add_user(console_cfg, SUPERVISOR[0], "supervisor", SUPERVISOR[1])
    add_user(console_cfg, OFFICER[0], "officer", OFFICER[1])
    console = start_console(console_cfg)
    try:
        assert tls_broker.wait_subscribed("bo-console", "lfr/+/alerts")
        yield {"console": console, "device": dev, "custody": custody, "root": tmp_path, "bo_keys": bo_keys}
    finally:
        err = console.stop()
        if err.strip():
            print(err[-3000:], file=sys.stderr)


def lfr(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def test_officers_review_a_real_device_runs_alerts_in_the_browser(world: dict[str, Any], browser: Any) -> None:
    console: RunningConsole = world["console"]
    url = console.url
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

    # A logged-out client gets the login page whatever it asks for.
    page.goto(url + "/alerts")
    assert page.url == url + "/login"
    assert page.request.get(url + "/alerts/1/crop", max_redirects=0).status == 303
    login(page, url, SUPERVISOR)
    cookie = next(c for c in browser.cookies() if c["name"] == "lfr_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    headers = page.request.get(url + "/alerts").headers
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"

    # Supervisor enrols the custody folder on the watchlist page; the report lists every image.
    page.goto(url + "/watchlists")
    page.fill("input[name=folder]", str(world["custody"]))
    page.fill("input[name=version]", "1")
    page.check("input[name=device][value=dev-a]")
    page.click("form.enrol button[type=submit]")
    page.wait_for_selector("#enrol-result", timeout=120_000)
    summary = page.inner_text("#enrol-result")
    assert "Watchlist v1: 2 subject(s), 4 image(s) accepted" in summary and "published to dev-a." in summary
    assert page.locator("#report tbody tr.ok").count() == 4
    bundle = world["root"] / "console-data" / "watchlists" / "watchlist-1.lfrw"
    r = lfr("watchlist", "install", str(bundle), "--config", str(world["device"].config))
    assert r.returncode == 0, r.stderr

    # The queue is open while the van runs: its alerts appear without a reload.
    page.goto(url + "/alerts")
    page.evaluate("window.__notReloaded = true")
    run = lfr("run", "--config", str(world["device"].config), timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    wait_rows(page, 2, 30)
    assert page.evaluate("window.__notReloaded === true")
    subjects = sorted(page.locator("#queue tbody td.subject").all_inner_texts())
    assert subjects == sorted(ENROLLED)
    # One more alert through the device's real alert path: on the page within 2 s of the broker's ack.
    r = lfr("alerts", "test", "--config", str(world["device"].config), "--count", "1", "--wait", "30")
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    assert wait_rows(page, 3, 5) - t0 < 2.0
    assert page.evaluate("window.__notReloaded === true")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-queue.png"), full_page=True)

    # The van's status (watchlist it ran with, alerts raised) and its deployment record reached the console.
    page.goto(url + "/devices")
    cells = page.locator("#devices tbody tr[data-device='dev-a'] td").all_inner_texts()
    assert cells[0] == "dev-a" and cells[3] == "1", cells
    page.goto(url + "/deployments")
    assert "dev-a" in page.inner_text("main") and page.locator("section.deployment").count() >= 1
    page.goto(url + "/watchlists")
    assert page.locator("#installed tbody tr").first.inner_text().split("\t")[:2] == ["dev-a", "1"]

    # Review: the live face beside the custody images, all real decodable JPEGs behind the page's URLs.
    decided = {}
    for subject, decision, note in (
        ("Jimmy_Carter", "#confirm", "same man, checked the ears"),
        ("Rob_Marshall", "#reject", "<img src=x onerror=alert(1)> different chin'; DROP TABLE alerts;--"),
    ):
        page.goto(url + "/alerts")
        page.click(f"#queue tbody tr:has(td.subject:text-is('{subject}')) a")
        page.wait_for_selector("#probe")
        assert page.inner_text("#subject") == subject
        assert "verified" in page.inner_text("#signature")
        probe = decode(page.request.get(url + page.get_attribute("#probe", "src")).body())
        refs = [decode(page.request.get(url + src).body()) for src in
                page.eval_on_selector_all("img.reference", "els => els.map(e => e.getAttribute('src'))")]  # fmt: skip
        assert probe.shape[0] >= 40 and len(refs) == 2 and all(r.shape[0] >= 100 for r in refs)
        if subject == "Jimmy_Carter":
            page.screenshot(path=str(ARTIFACTS / "console-review.png"), full_page=True)
        page.fill("#note-input", note)
        page.click(decision)
        page.wait_for_selector("#note")
        assert page.inner_text("#note") == note  # shown as text, never as markup
        decided[subject] = page.inner_text("#decision")
    assert decided["Jimmy_Carter"].startswith("Confirmed match by sup")
    assert decided["Rob_Marshall"].startswith("Not a match by sup")
    assert dialogs == []
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors

    # The console's audit log verifies under the back-office key and names both decisions.
    pub = load_backoffice_keys(world["bo_keys"]).ed25519_public
    report = verify_log(world["root"] / "console-data" / "audit", pub)
    assert report.ok, report.problems
    reviews = {r.fields["subject_id"]: r.fields for r in iter_records(report.directory) if r.kind == "alert_reviewed"}
    assert reviews["Jimmy_Carter"]["decision"] == "confirmed" and reviews["Jimmy_Carter"]["officer"] == "sup"
    assert reviews["Rob_Marshall"]["decision"] == "not_a_match"

    # Log out: the session is gone server-side, not only in the browser.
    page.click("#logout")
    page.wait_for_url(url + "/login?m=out")
    page.goto(url + "/alerts")
    assert page.url == url + "/login"

    # An officer reviews but cannot reach the watchlist page, nor post to it.
    login(page, url, OFFICER)
    assert page.locator("nav a[href='/watchlists']").count() == 0
    resp = page.goto(url + "/watchlists")
    assert resp is not None and resp.status == 403 and "for supervisors" in page.inner_text("#error")
    page.goto(url + "/users")
    assert "for supervisors" in page.inner_text("#error")
    page.click("#logout")
    page.wait_for_url(url + "/login?m=out")
