"""The console's web pages (Starlette + Jinja2, autoescaped; plain JS from /static; no CDN).

Every route but /login and /static goes through `guarded`, which resolves the session cookie,
enforces the route's role, and checks the CSRF token of every POST. A logged-out client is sent
to the login page whatever it asks for; an officer asking for a supervisor's page gets 403.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from edge.backoffice.console.accounts import Accounts, LoginLimiter, LoginSession
from edge.backoffice.console.config import ConsoleConfig
from edge.backoffice.console.models import AlertRow, Decision, Role
from edge.backoffice.console.security import LOGIN_CSRF_COOKIE, SESSION_COOKIE, SecurityHeaders, same_token
from edge.backoffice.console.store import AlertFilter, ConsoleStore
from edge.core.errors import InputError

HERE = Path(__file__).resolve().parent
MAX_FORM_FIELD = 4096


def fmt_time(t: float | None) -> str:
    if t is None:
        return ""
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def parse_day(value: str, what: str) -> float | None:
    if not value:
        return None
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise InputError(f"{what}: {value[:40]!r} is not a date (YYYY-MM-DD)") from None
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp()


def alert_json(r: AlertRow) -> dict[str, Any]:
    return {
        "id": r.id, "time": fmt_time(r.time), "device_id": r.device_id, "camera": r.camera,
        "subject_id": r.subject_id, "category": r.category, "priority": r.priority, "score": r.score,
        "threshold": r.threshold, "margin": r.margin, "decision": r.decision.value,
        "decision_label": r.decision.label, "url": f"/alerts/{r.id}",
    }  # fmt: skip


@dataclass
class Console:
    """What the pages need: the configuration, the store, the accounts; built by server.build_console."""

    cfg: ConsoleConfig
    store: ConsoleStore
    accounts: Accounts
    limiter: LoginLimiter
    extra_pages: dict[str, Any] = field(default_factory=dict)  # watchlist enrolment, when available


Handler = Callable[[Request, LoginSession, FormData | None], Response]


def build_app(console: Console) -> Starlette:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["t"] = fmt_time
    secure = console.cfg.console.secure_cookies

    def page(request: Request, name: str, login: LoginSession | None, status: int = 200, **ctx: Any) -> Response:
        return templates.TemplateResponse(request, name, {"login": login, **ctx}, status_code=status)

    def error(request: Request, login: LoginSession | None, status: int, message: str) -> Response:
        return page(request, "error.html", login, status=status, message=message)

    def guarded(handler: Handler, role: Role | None = None) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            login = await run_in_threadpool(console.accounts.session, request.cookies.get(SESSION_COOKIE))
            if login is None:
                if request.url.path.startswith("/api/"):
                    return JSONResponse({"error": "not logged in"}, status_code=401)
                return RedirectResponse("/login", status_code=303)
            if role is Role.SUPERVISOR and not login.user.is_supervisor:
                return error(request, login, 403, "This page is for supervisors.")
            form = None
            if request.method == "POST":
                form = await request.form(max_files=0, max_fields=50, max_part_size=MAX_FORM_FIELD)
                if not same_token(str(form.get("csrf", "")), login.csrf):
                    return error(request, login, 403, "The form's security token is missing or stale; reload the page.")
            try:
                return await run_in_threadpool(handler, request, login, form)
            except InputError as e:
                return error(request, login, 400, str(e))

        return endpoint

    # ----------------------------------------------------------------- login

    async def login_page(request: Request) -> Response:
        login = await run_in_threadpool(console.accounts.session, request.cookies.get(SESSION_COOKIE))
        if login is not None:
            return RedirectResponse("/alerts", status_code=303)
        # Keep the token a browser already holds: a second tab (or any stray request that lands here)
        # must not invalidate the form that is open in the first.
        token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not 20 <= len(token) <= 64:
            token = secrets.token_urlsafe(24)
        resp = page(request, "login.html", None, csrf=token, message=request.query_params.get("m", "")[:100])
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, secure=secure, samesite="strict", path="/login")
        return resp

    async def login_post(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=10, max_part_size=MAX_FORM_FIELD)
        if not same_token(str(form.get("csrf", "")), request.cookies.get(LOGIN_CSRF_COOKIE)):
            return RedirectResponse("/login?m=expired", status_code=303)
        username = str(form.get("username", ""))[:64].strip().lower()
        password = str(form.get("password", ""))[:1024]
        address = request.client.host if request.client else "?"
        if console.limiter.blocked(address, username):
            token = secrets.token_urlsafe(24)
            resp = page(request, "login.html", None, status=429, csrf=token,
                        message="Too many failed attempts. Wait a few minutes and try again.")  # fmt: skip
            resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, secure=secure, samesite="strict", path="/login")
            return resp
        user = await run_in_threadpool(console.accounts.authenticate, username, password)
        if user is None:
            console.limiter.failed(address, username)
            return RedirectResponse("/login?m=failed", status_code=303)
        console.limiter.succeeded(address, username)
        token, _ = await run_in_threadpool(console.accounts.open_session, user)
        resp = RedirectResponse("/alerts", status_code=303)
        resp.set_cookie(
            SESSION_COOKIE, token, max_age=int(console.accounts.session_s), httponly=True, secure=secure,
            samesite="strict", path="/",
        )  # fmt: skip
        resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return resp

    def logout(request: Request, login: LoginSession, form: FormData | None) -> Response:
        console.accounts.close_session(login)
        resp = RedirectResponse("/login?m=out", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/", httponly=True, secure=secure, samesite="strict")
        return resp

    # ----------------------------------------------------------------- alerts

    def alert_filter(request: Request) -> tuple[AlertFilter, dict[str, str]]:
        q = request.query_params
        raw = {k: q.get(k, "")[:64] for k in ("device", "state", "from", "to")}
        decision = None
        if raw["state"]:
            try:
                decision = Decision(raw["state"])
            except ValueError:
                raise InputError(
                    f"state: {raw['state']!r} is not one of {', '.join(d.value for d in Decision)}"
                ) from None
        until = parse_day(raw["to"], "to")
        f = AlertFilter(
            device_id=raw["device"] or None, decision=decision, since=parse_day(raw["from"], "from"),
            until=None if until is None else until + 86400.0,
        )  # fmt: skip
        return f, raw

    def queue(request: Request, login: LoginSession, form: FormData | None) -> Response:
        f, raw = alert_filter(request)
        try:
            page_no = int(request.query_params.get("page", "1"))
        except ValueError:
            raise InputError("page: not a number") from None
        result = console.store.queue(f, page_no)
        query = urlencode({k: v for k, v in raw.items() if v})
        return page(
            request, "queue.html", login, result=result, raw=raw, query=query, decisions=list(Decision),
            devices=console.store.device_ids(), after=console.store.max_id(),
        )  # fmt: skip

    def new_alerts(request: Request, login: LoginSession, form: FormData | None) -> Response:
        f, _ = alert_filter(request)
        try:
            after = int(request.query_params.get("after", "0"))
        except ValueError:
            raise InputError("after: not a number") from None
        rows = console.store.newer_than(f, after)
        return JSONResponse({"alerts": [alert_json(r) for r in rows], "last": max([after, *(r.id for r in rows)])})

    def review(request: Request, login: LoginSession, form: FormData | None) -> Response:
        row = console.store.alert(request.path_params["id"])
        if row is None:
            return error(request, login, 404, "No such alert (it may have been deleted by the retention policy).")
        refs = console.store.references(row.subject_id)
        return page(request, "review.html", login, a=row, refs=refs, decisions=list(Decision)[1:])

    def decide(request: Request, login: LoginSession, form: FormData | None) -> Response:
        assert form is not None
        try:
            decision = Decision(str(form.get("decision", "")))
        except ValueError:
            raise InputError("decision: choose Confirmed match, Not a match or Unsure") from None
        if decision is Decision.UNREVIEWED:
            raise InputError("decision: choose Confirmed match, Not a match or Unsure")
        row = console.store.decide(request.path_params["id"], decision, login.user.username, str(form.get("note", "")))
        if row is None:
            return error(request, login, 404, "No such alert.")
        return RedirectResponse(f"/alerts/{row.id}", status_code=303)

    def crop(request: Request, login: LoginSession, form: FormData | None) -> Response:
        row = console.store.alert(request.path_params["id"])
        if row is None or not row.crop_file or not (console.store.crops / row.crop_file).exists():
            return Response(status_code=404)
        return FileResponse(console.store.crops / row.crop_file, media_type="image/jpeg")

    def reference(request: Request, login: LoginSession, form: FormData | None) -> Response:
        ref = console.store.reference(request.path_params["id"])
        if ref is None or not (console.store.refs_dir / ref.file).exists():
            return Response(status_code=404)
        return FileResponse(console.store.refs_dir / ref.file, media_type="image/jpeg")

    # ----------------------------------------------------------------- fleet

    def devices(request: Request, login: LoginSession, form: FormData | None) -> Response:
        now = console.store.clock()
        rows = [
            (d, d.state == "online" and now - d.last_seen <= console.cfg.console.offline_after_s)
            for d in console.store.devices()
        ]
        known = sorted(set(console.cfg.devices) - {d.device_id for d, _ in rows})
        return page(request, "devices.html", login, rows=rows, never_seen=known, now=now)

    def deployments(request: Request, login: LoginSession, form: FormData | None) -> Response:
        rows = [(d, json.loads(d.record_json)) for d in console.store.deployments()]
        return page(request, "deployments.html", login, rows=rows)

    # ----------------------------------------------------------------- supervisors

    def users(request: Request, login: LoginSession, form: FormData | None) -> Response:
        return page(request, "users.html", login, users=console.accounts.users(), roles=list(Role))

    def add_user(request: Request, login: LoginSession, form: FormData | None) -> Response:
        assert form is not None
        try:
            role = Role(str(form.get("role", "")))
        except ValueError:
            raise InputError("role: officer or supervisor") from None
        console.accounts.add_user(
            str(form.get("username", "")).strip().lower(), role, str(form.get("password", "")), login.user.username
        )
        return RedirectResponse("/users", status_code=303)

    def disable_user(request: Request, login: LoginSession, form: FormData | None) -> Response:
        if request.path_params["id"] == login.user.id:
            raise InputError("you cannot disable your own account")
        console.accounts.set_active(request.path_params["id"], False, login.user.username)
        return RedirectResponse("/users", status_code=303)

    def watchlists(request: Request, login: LoginSession, form: FormData | None) -> Response:
        wl = console.extra_pages.get("watchlists")
        return page(
            request,
            "watchlists.html",
            login,
            **(wl.context() if wl else {"lists": [], "installed": [], "report": None}),
        )

    def watchlist_enrol(request: Request, login: LoginSession, form: FormData | None) -> Response:
        wl = console.extra_pages.get("watchlists")
        if wl is None or form is None:
            raise InputError("watchlist enrolment needs the back-office keys (console.keys_dir)")
        report = wl.enrol_from_form(form, login.user.username)
        return page(request, "watchlists.html", login, **wl.context(report))

    def root(request: Request, login: LoginSession, form: FormData | None) -> Response:
        return RedirectResponse("/alerts", status_code=303)

    async def no_favicon(request: Request) -> Response:
        return Response(status_code=204)

    sup = Role.SUPERVISOR
    routes = [
        Route("/", guarded(root)),
        Route("/favicon.ico", no_favicon),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/logout", guarded(logout), methods=["POST"]),
        Route("/alerts", guarded(queue)),
        Route("/api/alerts/new", guarded(new_alerts)),
        Route("/alerts/{id:int}", guarded(review)),
        Route("/alerts/{id:int}/decision", guarded(decide), methods=["POST"]),
        Route("/alerts/{id:int}/crop", guarded(crop)),
        Route("/references/{id:int}", guarded(reference)),
        Route("/devices", guarded(devices)),
        Route("/deployments", guarded(deployments)),
        Route("/users", guarded(users, sup)),
        Route("/users", guarded(add_user, sup), methods=["POST"]),
        Route("/users/{id:int}/disable", guarded(disable_user, sup), methods=["POST"]),
        Route("/watchlists", guarded(watchlists, sup)),
        Route("/watchlists/enrol", guarded(watchlist_enrol, sup), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        login = await run_in_threadpool(console.accounts.session, request.cookies.get(SESSION_COOKIE))
        if login is None:
            return RedirectResponse("/login", status_code=303)
        return error(request, login, 404, "No such page.")

    return Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders, hsts=secure)],
        exception_handlers={404: not_found},
    )
