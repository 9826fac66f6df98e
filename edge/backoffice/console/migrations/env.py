"""Alembic environment: the console hands over its own connection (see edge.backoffice.console.db)."""

from __future__ import annotations

from alembic import context

from edge.backoffice.console.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
