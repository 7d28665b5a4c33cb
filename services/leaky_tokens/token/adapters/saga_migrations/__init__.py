"""Alembic migrations of the token database (the purchase saga)."""
