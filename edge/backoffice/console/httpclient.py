"""A minimal logged-in HTTP client for the console (benchmark and tests): cookies kept, CSRF tokens read."""

from __future__ import annotations

import http.client
import re

_CSRF = re.compile(rb'name="csrf" value="([^"]+)"')


class ConsoleClient:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=30)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, headers with lower-case names); redirects are not followed."""
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        out: dict[str, str] = {}
        for name, value in resp.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                val = rest.split(";", 1)[0].strip('"')
                if "max-age=0" in value.lower() or not val:
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = val
            out[name.lower()] = value
        return resp.status, data, out

    def login(self, username: str, password: str) -> str:
        """Log in through the form; returns the session's CSRF token (read from a page's logout form)."""
        _, page, _ = self.request("GET", "/login")
        m = _CSRF.search(page)
        if m is None:
            raise RuntimeError("no CSRF token on the login page")
        status, _, headers = self.request(
            "POST", "/login", f"csrf={m.group(1).decode()}&username={username}&password={password}"
        )
        if status != 303 or headers.get("location") != "/alerts":
            raise RuntimeError(f"login as {username} failed (HTTP {status}, to {headers.get('location')})")
        _, page, _ = self.request("GET", "/alerts")
        m = _CSRF.search(page)
        if m is None:
            raise RuntimeError("no CSRF token on the alerts page")
        return m.group(1).decode()
