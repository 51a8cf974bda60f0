"""Persistence: the engine and its transactions, the ORM models, Alembic helpers and the repositories."""
