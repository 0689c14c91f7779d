"""The gate's own rules, on a real database: one subject-to-role rule, and reconsider()."""

from __future__ import annotations

import uuid

import pytest

from odsmedia.auth import accounts, tokens
from odsmedia.auth.tokens import GateTokens
from odsmedia.errors import ApiError
from odsmedia.gate import Entry, Gate, Identity
from odsmedia.rooms import directory


async def new_account(db) -> int:
    return (await accounts.create_verified(db, f"gate-{uuid.uuid4().hex[:10]}@example.org")).id


async def test_role_of_subject_is_the_role_the_gate_gives(db, room_factory):
    owner, member, stranger = await new_account(db), await new_account(db), await new_account(db)
    room = await room_factory(owner_id=owner)
    other = await room_factory()
    await directory.add_member(db, room.id, member, "moderator")
    _, host_token = await tokens.mint(db, room_id=room.id, role="host", ttl_seconds=60)
    _, revoked = await tokens.mint(db, room_id=room.id, role="moderator", ttl_seconds=60, account_id=stranger)
    assert await tokens.revoke(db, revoked, account_id=stranger)
    _, elsewhere = await tokens.mint(db, room_id=other.id, role="host", ttl_seconds=60)
    gate = Gate(db, tokens=GateTokens(db))

    roles = {subject: await gate.role_of_subject(room, subject) for subject in (
        f"a:{owner}", f"a:{member}", f"a:{stranger}", f"t:{host_token}", f"t:{revoked}", f"t:{elsewhere}",
        "t:999999999", "v:someone", "none")}
    assert roles == {
        f"a:{owner}": "host", f"a:{member}": "moderator", f"a:{stranger}": "viewer",
        # An operator-minted token keeps the rank it was minted with; an account's token is clamped
        # to its owner's current role in the room (issue 11), so the stranger's token is a viewer's.
        f"t:{host_token}": "host", f"t:{revoked}": "viewer",
        f"t:{elsewhere}": "viewer", "t:999999999": "viewer", "v:someone": "viewer", "none": "viewer",
    }
    # The same rule as an admission's role.
    assert await gate.role_of(Identity(account_id=member), room) == roles[f"a:{member}"]


async def test_reconsider_runs_policy_and_checks_for_another_entry(db, room_factory):
    room = await room_factory()
    gate = Gate(db, tokens=GateTokens(db))
    token, _ = await tokens.mint(db, room_id=room.id, role="viewer", ttl_seconds=60)
    viewer = await gate.admit_token(token, room, Entry.JOIN)
    with pytest.raises(ApiError) as refused:
        await gate.reconsider(viewer, Entry.PUBLISH)
    assert (refused.value.status, refused.value.reason) == (403, "not_a_publisher")
    host_token, _ = await tokens.mint(db, room_id=room.id, role="host", ttl_seconds=60)
    host = await gate.admit_token(host_token, room, Entry.JOIN)
    assert (await gate.reconsider(host, Entry.PUBLISH)).role == "host"

    seen: list[Entry] = []

    async def banned_from_chat(admission, entry: Entry) -> None:
        seen.append(entry)
        if entry is Entry.CHAT:
            raise ApiError(403, "banned", "no")

    gate.checks.append(banned_from_chat)
    with pytest.raises(ApiError) as refused:
        await gate.reconsider(viewer, Entry.CHAT)
    assert refused.value.reason == "banned" and seen == [Entry.CHAT]


async def test_without_a_token_resolver_bearer_tokens_are_refused(db, room_factory):
    room = await room_factory()
    token, _ = await tokens.mint(db, room_id=room.id, role="host", ttl_seconds=60)
    with pytest.raises(ApiError) as refused:
        await Gate(db).admit_token(token, room, Entry.JOIN)
    assert (refused.value.status, refused.value.reason) == (401, "invalid_token")
