"""Throwaway PostgreSQL database and Redis prefix for a benchmark run."""

from __future__ import annotations

import os
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
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

    def config(self, data_dir: Path, **env: str):
        """The app's configuration on these services: loopback ICE, quiet logs, any port; ``env``
        adds or overrides settings by their environment names."""
        from odsmedia import config as configmod

        return configmod.load(environ={
            "DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url, "ODS_REDIS_PREFIX": self.prefix,
            "ODS_DATA_DIR": str(data_dir), "ODS_SECRET_KEY": "bench-secret-key-0123456789-abcdefghijkl",
            "ODS_HTTP_PORT": "0", "ODS_LOG_LEVEL": "warning", "ODS_ICE_ADDRESSES": "127.0.0.1", **env,
        }, dev=True)


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
