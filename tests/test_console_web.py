"""Role checks on every route, over HTTP against the console's app (uvicorn on loopback, SQLite)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_console_store import Clock, console_config, verified

pytest.importorskip("sqlalchemy", reason="the console needs the backoffice extra (pip install -e '.[backoffice]')")

ROUTES_GET = ["/", "/alerts", "/alerts/1", "/alerts/1/crop", "/references/1", "/devices", "/deployments", "/users",
              "/watchlists", "/no/such/page"]  # fmt: skip
ROUTES_POST = ["/alerts/1/decision", "/users", "/users/1/disable", "/watchlists/enrol", "/logout"]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict[str, Any]]:
    import uvicorn

    from edge.backoffice.console.httpclient import ConsoleClient
    from edge.backoffice.console.models import Role
    from edge.backoffice.console.server import open_parts
    from edge.backoffice.console.web import build_app
    from tests.consolekit import free_port

    parts = open_parts(console_config(tmp_path, None), Clock())
    parts.accounts.add_user("sup", Role.SUPERVISOR, "supervisor-password", "t")
    parts.accounts.add_user("ofc", Role.OFFICER, "officer-password-1", "t")
    parts.store.store_alert(verified(tmp_path, 1), "kid")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(parts.console), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield {"port": port, "client": lambda: ConsoleClient(port), "parts": parts}
    finally:
        server.should_exit = True
        thread.join(10)
        parts.audit.close()


def test_a_logged_out_client_gets_only_the_login_page(site: dict[str, Any]) -> None:
    c = site["client"]()
    for path in ROUTES_GET:
        status, _, headers = c.request("GET", path)
        assert (status, headers.get("location")) == (303, "/login"), path
        assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    for path in ROUTES_POST:
        status, _, headers = c.request("POST", path, "csrf=x&decision=confirmed")
        assert (status, headers.get("location")) == (303, "/login"), path
    status, body, _ = c.request("GET", "/api/alerts/new?after=0")
    assert status == 401 and b"subject" not in body
    status, body, headers = c.request("GET", "/login")
    assert status == 200 and b'name="password"' in body and "no-store" in headers["cache-control"]


def test_officers_review_but_supervisor_routes_refuse_them_even_with_a_valid_token(site: dict[str, Any]) -> None:
    c = site["client"]()
    csrf = c.login("ofc", "officer-password-1")
    for path in ("/users", "/watchlists"):
        assert c.request("GET", path)[0] == 403
    for path, form in (("/users", "username=mallory&role=supervisor&password=mallory-password"),
                       ("/users/1/disable", ""), ("/watchlists/enrol", "folder=/tmp&version=1&hours=1")):  # fmt: skip
        assert c.request("POST", path, f"csrf={csrf}&{form}")[0] == 403, path
    assert [u.username for u, _, _ in site["parts"].accounts.users()] == ["ofc", "sup"]
    status, body, _ = c.request("GET", "/alerts/1")
    assert status == 200 and b"S-0001" in body
    status, _, headers = c.request("POST", "/alerts/1/decision", f"csrf={csrf}&decision=unsure&note=")
    assert (status, headers.get("location")) == (303, "/alerts/1")
    assert c.request("POST", "/alerts/1/decision", "csrf=wrong&decision=confirmed")[0] == 403
    row = site["parts"].store.alert(1)
    assert row is not None and row.decision.value == "unsure" and row.decided_by == "ofc"
    # A supervisor can add users.
    s = site["client"]()
    token = s.login("sup", "supervisor-password")
    status, _, _ = s.request("POST", "/users", f"csrf={token}&username=newbie&role=officer&password=long-enough-pass")
    assert status == 303 and "newbie" in [u.username for u, _, _ in site["parts"].accounts.users()]


def test_the_csrf_token_is_per_session_and_logout_ends_it_server_side(site: dict[str, Any]) -> None:
    a, b = site["client"](), site["client"]()
    token_a, token_b = a.login("sup", "supervisor-password"), b.login("ofc", "officer-password-1")
    assert token_a != token_b and re.fullmatch(r"[\w-]{40,}", token_a)
    assert b.request("POST", "/alerts/1/decision", f"csrf={token_a}&decision=confirmed")[0] == 403
    stolen = dict(a.cookies)
    assert a.request("POST", "/logout", f"csrf={token_a}")[0] == 303
    replay = site["client"]()
    replay.cookies = stolen
    assert replay.request("GET", "/alerts")[0] == 303  # the old cookie no longer opens anything
