"""Tables of the console (SQLAlchemy 2). Times are unix seconds (double precision) on every backend.

The schema itself is created and changed only by the Alembic migrations in migrations/versions;
these classes must describe the head revision.
"""

from __future__ import annotations

import enum

from sqlalchemy import Boolean, Enum, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Seconds = Float(precision=53)


class Base(DeclarativeBase):
    pass


class Decision(enum.Enum):
    UNREVIEWED = "unreviewed"
    CONFIRMED = "confirmed"
    NOT_A_MATCH = "not_a_match"
    UNSURE = "unsure"

    @property
    def label(self) -> str:
        return {
            "unreviewed": "Unreviewed",
            "confirmed": "Confirmed match",
            "not_a_match": "Not a match",
            "unsure": "Unsure",
        }[self.value]


class Role(enum.Enum):
    OFFICER = "officer"
    SUPERVISOR = "supervisor"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as the value string in a plain VARCHAR: portable, readable, no native enum types to migrate.
    return Enum(cls, name=name, native_enum=False, values_callable=lambda e: [m.value for m in e], length=16)


class AlertRow(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[str] = mapped_column(String(128), unique=True)
    device_id: Mapped[str] = mapped_column(String(128))
    camera: Mapped[str] = mapped_column(String(128))
    time: Mapped[float] = mapped_column(Seconds)  # the device's match time
    time_text: Mapped[str] = mapped_column(String(40))  # as the device signed it
    received_at: Mapped[float] = mapped_column(Seconds)
    sealed: Mapped[bool] = mapped_column(Boolean)
    signature_key_id: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[str | None] = mapped_column(String(256))
    category: Mapped[str | None] = mapped_column(String(64))
    priority: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    margin: Mapped[float | None] = mapped_column(Float)
    runner_up: Mapped[str | None] = mapped_column(String(256))
    track_id: Mapped[int | None] = mapped_column(Integer)
    watchlist_version: Mapped[int | None] = mapped_column(Integer)
    crop_file: Mapped[str | None] = mapped_column(String(80))  # file name under <data_dir>/crops
    decision: Mapped[Decision] = mapped_column(_enum(Decision, "decision"), default=Decision.UNREVIEWED)
    decided_by: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[float | None] = mapped_column(Seconds)
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_alerts_queue", "decision", "time"),
        Index("ix_alerts_device", "device_id", "time"),
    )


class DeviceRow(Base):
    __tablename__ = "devices"
    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # as the device reported it: online / offline
    last_seen: Mapped[float] = mapped_column(Seconds)
    watchlist_version: Mapped[int | None] = mapped_column(Integer)
    watchlist_expires: Mapped[str | None] = mapped_column(String(40))
    spool_depth: Mapped[int | None] = mapped_column(Integer)
    alerts_raised: Mapped[int | None] = mapped_column(Integer)
    status_json: Mapped[str] = mapped_column(Text)


class DeploymentRow(Base):
    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(Integer)
    record_hash: Mapped[str] = mapped_column(String(64), unique=True)
    received_at: Mapped[float] = mapped_column(Seconds)
    record_json: Mapped[str] = mapped_column(Text)


class UserRow(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(_enum(Role, "role"))
    password_hash: Mapped[str] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[float] = mapped_column(Seconds)


class SessionRow(Base):
    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    csrf: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Seconds)


class WatchlistRow(Base):
    __tablename__ = "watchlists"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    created_at: Mapped[float] = mapped_column(Seconds)
    created_by: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Seconds)
    subjects: Mapped[int] = mapped_column(Integer)
    templates: Mapped[int] = mapped_column(Integer)
    bundle_file: Mapped[str] = mapped_column(String(80))
    report_json: Mapped[str] = mapped_column(Text)
    published_to: Mapped[str] = mapped_column(Text, default="")  # comma-separated device ids


class ReferenceImageRow(Base):
    __tablename__ = "reference_images"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    watchlist_version: Mapped[int] = mapped_column(Integer)
    subject_id: Mapped[str] = mapped_column(String(256), index=True)
    file: Mapped[str] = mapped_column(String(80))  # under <data_dir>/references
