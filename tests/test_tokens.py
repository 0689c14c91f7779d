"""API tokens: resolution, expiry, revocation by owner, last use recorded without a write per request."""

from __future__ import annotations

from odsmedia.auth import tokens


async def test_resolve_records_last_use_at_most_once_a_minute(db, room_factory):
    room = await room_factory()
    token, token_id = await tokens.mint(db, room_id=room.id, role="viewer", ttl_seconds=60)
    assert await db.fetchval("SELECT last_used_at FROM api_tokens WHERE id = $1", token_id) is None
    grant = await tokens.resolve(db, token)
    assert grant is not None and grant.token_id == token_id and grant.role == "viewer"
    first = await db.fetchval("SELECT last_used_at FROM api_tokens WHERE id = $1", token_id)
    assert first is not None
    await tokens.resolve(db, token)
    assert await db.fetchval("SELECT last_used_at FROM api_tokens WHERE id = $1", token_id) == first
    await db.execute("UPDATE api_tokens SET last_used_at = now() - interval '2 minutes' WHERE id = $1", token_id)
    await tokens.resolve(db, token)
    assert await db.fetchval("SELECT last_used_at FROM api_tokens WHERE id = $1", token_id) > first


async def test_expired_revoked_and_malformed_tokens_resolve_to_nothing(db, room_factory):
    room = await room_factory()
    token, token_id = await tokens.mint(db, room_id=room.id, role="host", ttl_seconds=60, account_id=None)
    await db.execute("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1", token_id)
    assert await tokens.resolve(db, token) is None
    live, live_id = await tokens.mint(db, room_id=room.id, role="host", ttl_seconds=60)
    assert await tokens.revoke(db, live_id, account_id=None)
    assert await tokens.resolve(db, live) is None
    assert not await tokens.revoke(db, live_id, account_id=None)   # already revoked
    for bad in ("", "ods_", "xyz_" + live[4:], live + "x" * 100):
        assert await tokens.resolve(db, bad) is None
