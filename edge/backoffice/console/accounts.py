"""Accounts, login sessions and the login rate limit.

Passwords are argon2id hashes (argon2-cffi). A session is a random token in an HttpOnly,
SameSite=Strict cookie; only its sha256 is stored, with the session's CSRF token, so a copy of the
database lets nobody log in. There is no default account: the first supervisor comes from
`lfr-edge backoffice user add`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from edge.backoffice.console import audit as ca
from edge.backoffice.console.models import Role, SessionRow, UserRow
from edge.core.errors import InputError

MIN_PASSWORD = 12
USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,63}")
_hasher = PasswordHasher()
# Verified when the user does not exist, so a login takes as long for an unknown name as for a known one.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: Role

    @property
    def is_supervisor(self) -> bool:
        return self.role is Role.SUPERVISOR


@dataclass(frozen=True, slots=True)
class LoginSession:
    user: User
    csrf: str
    token_hash: str


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_username(name: str) -> str:
    if not USERNAME_RE.fullmatch(name):
        raise InputError(
            f"user name {name[:70]!r}: use 2-64 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InputError(f"password: at least {MIN_PASSWORD} characters (got {len(password)})")
    return password


class Accounts:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        audit: ca.ConsoleAudit | None,
        session_hours: float = 12.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sessions = sessions
        self.audit = audit
        self.session_s = session_hours * 3600.0
        self.clock = clock

    def add_user(self, username: str, role: Role, password: str, by: str) -> User:
        check_username(username)
        check_password(password)
        with self.sessions() as s:
            if s.scalar(select(UserRow.id).where(UserRow.username == username)) is not None:
                raise InputError(f"user {username!r} already exists")
            row = UserRow(
                username=username, role=role, password_hash=_hasher.hash(password), active=True, created_at=self.clock()
            )
            s.add(row)
            s.commit()
            user = User(row.id, row.username, row.role)
        if self.audit is not None:
            self.audit.record(ca.USER_ADDED, {"username": username, "role": role.value, "by": by})
        return user

    def set_active(self, user_id: int, active: bool, by: str) -> None:
        with self.sessions() as s:
            row = s.get(UserRow, user_id)
            if row is None:
                raise InputError(f"no user with id {user_id}")
            row.active = active
            if not active:
                s.execute(delete(SessionRow).where(SessionRow.user_id == user_id))
            s.commit()
            name = row.username
        if self.audit is not None and not active:
            self.audit.record(ca.USER_DISABLED, {"username": name, "by": by})

    def users(self) -> list[tuple[User, bool, float]]:
        with self.sessions() as s:
            rows = s.scalars(select(UserRow).order_by(UserRow.username)).all()
            return [(User(r.id, r.username, r.role), r.active, r.created_at) for r in rows]

    def authenticate(self, username: str, password: str) -> User | None:
        with self.sessions() as s:
            row = s.scalar(select(UserRow).where(UserRow.username == username))
            stored = row.password_hash if row is not None and row.active else _DUMMY_HASH
            try:
                _hasher.verify(stored, password)
            except (VerificationError, InvalidHashError):
                return None
            if row is None or not row.active:
                return None
            if _hasher.check_needs_rehash(row.password_hash):
                row.password_hash = _hasher.hash(password)
                s.commit()
            return User(row.id, row.username, row.role)

    def open_session(self, user: User) -> tuple[str, LoginSession]:
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = self.clock()
        with self.sessions() as s:
            s.execute(delete(SessionRow).where(SessionRow.expires_at < now))
            s.add(
                SessionRow(token_hash=_token_hash(token), user_id=user.id, csrf=csrf, expires_at=now + self.session_s)
            )
            s.commit()
        return token, LoginSession(user, csrf, _token_hash(token))

    def session(self, token: str | None) -> LoginSession | None:
        if not token or len(token) > 100:
            return None
        th = _token_hash(token)
        with self.sessions() as s:
            row = s.get(SessionRow, th)
            if row is None or row.expires_at < self.clock():
                return None
            user = s.get(UserRow, row.user_id)
            if user is None or not user.active:
                return None
            return LoginSession(User(user.id, user.username, user.role), row.csrf, th)

    def close_session(self, login: LoginSession) -> None:
        with self.sessions() as s:
            s.execute(delete(SessionRow).where(SessionRow.token_hash == login.token_hash))
            s.commit()


class LoginLimiter:
    """At most `attempts` failed logins per (address, user name) in a sliding window."""

    def __init__(self, attempts: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts, self.window = attempts, window_s
        self.clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str]) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        cutoff = self.clock() - self.window
        while q and q[0] < cutoff:
            q.popleft()
        return q

    def blocked(self, address: str, username: str) -> bool:
        with self._lock:
            return len(self._recent((address, username))) >= self.attempts

    def failed(self, address: str, username: str) -> None:
        with self._lock:
            self._recent((address, username)).append(self.clock())
            if len(self._failures) > 10_000:  # forget idle keys so a spray of names cannot grow memory
                for k in [k for k, q in self._failures.items() if not q]:
                    del self._failures[k]

    def succeeded(self, address: str, username: str) -> None:
        with self._lock:
            self._failures.pop((address, username), None)
