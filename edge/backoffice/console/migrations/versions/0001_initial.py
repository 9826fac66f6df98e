"""Initial console schema: alerts, devices, deployments, users, sessions, watchlists, reference images.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SECONDS = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("alert_id", sa.String(128), nullable=False, unique=True),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("camera", sa.String(128), nullable=False),
        sa.Column("time", SECONDS, nullable=False),
        sa.Column("time_text", sa.String(40), nullable=False),
        sa.Column("received_at", SECONDS, nullable=False),
        sa.Column("sealed", sa.Boolean, nullable=False),
        sa.Column("signature_key_id", sa.String(64), nullable=False),
        sa.Column("subject_id", sa.String(256)),
        sa.Column("category", sa.String(64)),
        sa.Column("priority", sa.Integer),
        sa.Column("score", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("margin", sa.Float),
        sa.Column("runner_up", sa.String(256)),
        sa.Column("track_id", sa.Integer),
        sa.Column("watchlist_version", sa.Integer),
        sa.Column("crop_file", sa.String(80)),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(64)),
        sa.Column("decided_at", SECONDS),
        sa.Column("note", sa.Text),
    )
    op.create_index("ix_alerts_queue", "alerts", ["decision", "time"])
    op.create_index("ix_alerts_device", "alerts", ["device_id", "time"])
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_seen", SECONDS, nullable=False),
        sa.Column("watchlist_version", sa.Integer),
        sa.Column("watchlist_expires", sa.String(40)),
        sa.Column("spool_depth", sa.Integer),
        sa.Column("alerts_raised", sa.Integer),
        sa.Column("status_json", sa.Text, nullable=False),
    )
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("record_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("received_at", SECONDS, nullable=False),
        sa.Column("record_json", sa.Text, nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", SECONDS, nullable=False),
    )
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("expires_at", SECONDS, nullable=False),
    )
    op.create_table(
        "watchlists",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False, unique=True),
        sa.Column("created_at", SECONDS, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("expires_at", SECONDS, nullable=False),
        sa.Column("subjects", sa.Integer, nullable=False),
        sa.Column("templates", sa.Integer, nullable=False),
        sa.Column("bundle_file", sa.String(80), nullable=False),
        sa.Column("report_json", sa.Text, nullable=False),
        sa.Column("published_to", sa.Text, nullable=False),
    )
    op.create_table(
        "reference_images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("watchlist_version", sa.Integer, nullable=False),
        sa.Column("subject_id", sa.String(256), nullable=False),
        sa.Column("file", sa.String(80), nullable=False),
    )
    op.create_index("ix_reference_images_subject_id", "reference_images", ["subject_id"])


def downgrade() -> None:
    for table in ("reference_images", "watchlists", "sessions", "users", "deployments", "devices", "alerts"):
        op.drop_table(table)
