"""PostgreSQL access: the asyncpg pool and versioned SQL migrations."""

from .db import connect, migrate, MIGRATIONS_DIR

__all__ = ["connect", "migrate", "MIGRATIONS_DIR"]
