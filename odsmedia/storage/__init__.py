"""PostgreSQL access: the asyncpg pool and versioned SQL migrations."""

from .db import connect, migrate, transaction, MIGRATIONS_DIR

__all__ = ["connect", "migrate", "transaction", "MIGRATIONS_DIR"]
