"""`odsmedia migrate`, `config` (and `config --docs`) and `episode finalize` run for real, as an
operator runs them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from conftest import REPO, _with_database, odsmedia_env, unique_slug
from odsmedia import config as configmod
from recorder import episodes
from recorder.recorder import local_node_id
from test_cli import run_cli

MIGRATIONS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent
                                     / "odsmedia" / "storage" / "migrations").glob("*.sql"))


async def test_migrate_builds_an_empty_database_once(service_urls, tmp_path):
    name = f"ods_migrate_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(service_urls.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        env = odsmedia_env(service_urls, tmp_path, DATABASE_URL=_with_database(service_urls.database_url, name))
        first = run_cli(env, "migrate")
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip() == "applied: " + ", ".join(MIGRATIONS)
        again = run_cli(env, "migrate")
        assert (again.returncode, again.stdout.strip()) == (0, "schema up to date")
        fresh = await asyncpg.connect(_with_database(service_urls.database_url, name))
        try:
            tables = {r["tablename"] for r in await fresh.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        finally:
            await fresh.close()
        assert {"rooms", "episodes", "segments", "chat_items", "accounts", "sessions", "magic_links"} <= tables
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def test_config_masks_every_secret(service_urls, tmp_path):
    stripe_key, webhook_secret = "sk_test_" + uuid.uuid4().hex, "whsec_" + uuid.uuid4().hex
    url = urlsplit(service_urls.database_url)
    with_password = url._replace(netloc=f"{url.username or 'postgres'}:hunter2pw@{url.hostname}:{url.port or 5432}")
    env = odsmedia_env(service_urls, tmp_path, STRIPE_SECRET_KEY=stripe_key, STRIPE_WEBHOOK_SECRET=webhook_secret,
                       DATABASE_URL=urlunsplit(with_password))
    out = run_cli(env, "config")
    assert out.returncode == 0, out.stderr
    for secret in (stripe_key, webhook_secret, env["ODS_SECRET_KEY"], "hunter2pw"):
        assert secret not in out.stdout
    shown = json.loads(out.stdout)
    assert shown["billing.stripe_secret_key"] == "***" and shown["secret.key"] == "***"
    assert shown["http.trusted_proxies"] == [] and shown["storage.backend"] == "local"   # the rest is shown


def test_config_docs_prints_the_table_docs_configuration_md_carries(service_urls, tmp_path):
    out = run_cli(odsmedia_env(service_urls, tmp_path), "config", "--docs")
    assert out.returncode == 0, out.stderr
    assert out.stdout == configmod.markdown_table()
    assert out.stdout.startswith("|") and out.stdout in (REPO / "docs" / "configuration.md").read_text()


async def test_episode_finalize_closes_what_this_node_left_live(service_urls, tmp_path, db, room_factory):
    data = tmp_path / "data"
    data.mkdir()
    ours = await episodes.create(db, (await room_factory()).id, title="ours", storage_key=unique_slug("fin"),
                                 node=local_node_id(data))
    theirs = await episodes.create(db, (await room_factory()).id, title="theirs", storage_key=unique_slug("fin"),
                                   node="another-node")
    out = run_cli(odsmedia_env(service_urls, data), "episode", "finalize")
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert results == [{"id": ours.id, "status": "failed", "segments": 0}]   # nothing was written: nothing playable
    assert (await episodes.get(db, ours.id)).status == "failed"
    assert (await episodes.get(db, theirs.id)).status == "live"
