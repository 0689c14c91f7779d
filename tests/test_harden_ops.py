"""Operator-facing hardening (issue 11): secrets never printed, outages answered
as outages, the dev outbox kept private."""

from __future__ import annotations

import json
import subprocess

from conftest import ODSMEDIA, REPO, odsmedia_env

from odsmedia import config as configmod


def run_cli(env, *args, timeout=60):
    return subprocess.run(ODSMEDIA + list(args), env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_config_masks_every_credential_form(service_urls, tmp_path):
    env = odsmedia_env(
        service_urls, tmp_path,
        REDIS_URL="redis://:redispw@127.0.0.1:6379/0",
        DATABASE_URL="postgresql://ods@127.0.0.1/ods?password=dbpw1&sslmode=disable&sslpassword=keypw2",
        ODS_ICE_TURN_URLS="turn:ice.example?transport=udp&access_token=tok3",
        STRIPE_SECRET_KEY="sk_test_hidden4",
    )
    out = run_cli(env, "config")
    assert out.returncode == 0, out.stderr
    for secret in ("redispw", "dbpw1", "keypw2", "tok3", "sk_test_hidden4", "test-secret-key-0123456789"):
        assert secret not in out.stdout, secret
    shown = json.loads(out.stdout)
    assert shown["redis.url"] == "redis://:***@127.0.0.1:6379/0"
    assert shown["database.url"] == "postgresql://ods@127.0.0.1/ods?password=***&sslmode=disable&sslpassword=***"
    assert shown["ice.turn_urls"] == ["turn:ice.example?transport=udp&access_token=***"]
    assert shown["billing.stripe_secret_key"] == "***"


def test_mask_forms():
    assert configmod.mask("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert configmod.mask("redis://user:pw@h") == "redis://user:***@h"
    assert configmod.mask("rediss://user@h") == "rediss://user@h"
    assert configmod.mask("postgres://h/db?sslpassword=x&application_name=a") == \
        "postgres://h/db?sslpassword=***&application_name=a"
    assert configmod.mask("postgres://h/db?client_secret=s;api_key=k") == "postgres://h/db?client_secret=***;api_key=***"
    assert configmod.mask("postgres://h/db") == "postgres://h/db"


def test_a_bad_secret_setting_is_named_without_its_value(service_urls, tmp_path):
    env = odsmedia_env(service_urls, tmp_path, REDIS_URL="http://:hunter22@127.0.0.1")
    out = run_cli(env, "config")
    assert out.returncode == 2
    assert "REDIS_URL" in out.stderr and "hunter22" not in out.stderr


async def test_outbox_mail_is_owner_only(client, config):
    import os
    import stat

    from odsmedia.keys import FEATURES

    old = os.umask(0o022)
    try:
        resp = await client.post("/auth/magic-link", json={"email": "perm@example.test"})
        assert resp.status == 202
        await client.server.app[FEATURES]["auth"].drain()
    finally:
        os.umask(old)
    outbox = config.data_dir / "outbox"
    files = list(outbox.glob("*.eml"))
    assert files
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}


def test_serve_refuses_the_outbox_unless_asked_for(service_urls, tmp_path):
    env = odsmedia_env(service_urls, tmp_path)
    del env["ODS_MAIL_BACKEND"]
    out = run_cli(env, "serve", timeout=30)
    assert out.returncode == 2
    assert "ODS_MAIL_BACKEND" in out.stderr
