"""Alembic environment of the embedded analytics database: runs on the connection `migrate()`
hands over."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=None,
    render_as_batch=True,
    version_table="analytics_alembic_version",
)
with context.begin_transaction():
    context.run_migrations()
