"""Throwaway PostgreSQL database and Redis prefix for a benchmark run."""

from __future__ import annotations

import os
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

import asyncpg
import redis.asyncio as redis

from odsmedia.storage import migrate

ADMIN_DSN = os.environ.get("ODS_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ODS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass(frozen=True)
class Services:
    database_url: str
    redis_url: str
    prefix: str


@asynccontextmanager
async def throwaway(admin_dsn: str = ADMIN_DSN, redis_url: str = REDIS_URL) -> AsyncIterator[Services]:
    """A migrated database of its own and a Redis key prefix of its own; both go at the end."""
    run = uuid.uuid4().hex[:8]
    dbname = f"ods_bench_{run}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{dbname}"')
    await admin.close()
    services = Services(admin_dsn.rsplit("/", 1)[0] + "/" + dbname, redis_url, f"odsbench:{run}:")
    try:
        await migrate(services.database_url)
        yield services
    finally:
        admin = await asyncpg.connect(admin_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await admin.close()
        client = redis.from_url(redis_url)
        keys = [k async for k in client.scan_iter(match=services.prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
