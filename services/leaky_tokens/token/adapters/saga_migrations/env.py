"""Alembic environment of the token database: runs on the connection `migrate()` hands over."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
# Its own version table: pointing the token and auth services at one database stays safe.
context.configure(
    connection=connection,
    target_metadata=None,
    render_as_batch=True,
    version_table="token_alembic_version",
)
with context.begin_transaction():
    context.run_migrations()
