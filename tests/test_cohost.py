"""Co-hosts and per-source moderation.

A host invites a co-host over HTTP (an ``api_tokens`` row with purpose
``invitation``); the invitation is exchanged once for a host token of the
room; bad, used, expired and revoked invitations are refused with a reason
and change nothing; revoking the invitation ends the co-host's sockets.
A moderator's mute names one source: muting a host's camera leaves their
screen flowing, and the mute holds when the host publishes again.  A role
change reaches everyone in the room at once.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from odsmedia.bus import Bus  # noqa: F401  (typing of app[BUS])
from odsmedia.keys import BUS
from odsmedia.rooms.sfu import SFU
from testsupport.peers import Publisher, SignalingClient, SignalingError, Viewer

pytestmark = [pytest.mark.timeout(120)]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def invite(client, room, token: str, **body) -> tuple[int, dict]:
    resp = await client.post(f"/api/rooms/{room.slug}/invitations", json=body, headers=bearer(token))
    return resp.status, await resp.json()


async def accept(client, invitation, name="Grace") -> tuple[int, dict]:
    resp = await client.post("/api/invitations/accept", json={"invitation": invitation, "name": name})
    return resp.status, await resp.json()


async def token_rows(db, room) -> list[tuple]:
    return [tuple(r) for r in await db.fetch(
        "SELECT id, purpose, role, parent_id, used_at IS NOT NULL, revoked_at IS NOT NULL FROM api_tokens "
        "WHERE room_id = $1 ORDER BY id", room.id)]


async def test_a_host_invites_a_co_host_who_joins_as_a_host_of_that_room(client, db, room_factory, token_factory):
    room = await room_factory()
    host_token = await token_factory(room, "host")
    status, made = await invite(client, room, host_token, label="for Grace")
    assert status == 201, made
    invitation = made["invitation"]
    assert made["url"].endswith(f"/rooms/{room.slug}/host#invite={invitation}")
    assert made["status"] == "open" and made["label"] == "for Grace" and made["cohost"] is None
    # Hashed at rest, like every token: the table never holds the invitation itself.
    stored = await db.fetchrow("SELECT token_hash, purpose, role FROM api_tokens WHERE id = $1", made["id"])
    assert stored["purpose"] == "invitation" and stored["role"] == "host"
    assert invitation.encode() not in bytes(stored["token_hash"])
    # An invitation is not a credential: the gate refuses it as a bearer token.
    resp = await client.get(f"/api/rooms/{room.slug}/invitations", headers=bearer(invitation))
    assert resp.status == 401 and (await resp.json())["error"] == "invalid_token"

    status, got = await accept(client, invitation, name="Grace")
    assert status == 201, got
    assert got["room"] == room.slug and got["role"] == "host" and got["name"] == "Grace"
    cohost = SignalingClient(str(client.make_url("")), room.slug)
    await cohost.connect()
    try:
        joined = await cohost.join(got["token"], name="Grace")
        assert joined["participant"]["role"] == "host"
        assert joined["participant"]["name"] == "Grace"
        assert joined["participant"]["subject"] == got["subject"] != f"t:{made['id']}"
        listed = (await (await client.get(f"/api/rooms/{room.slug}/invitations", headers=bearer(host_token))).json())
        [entry] = listed["invitations"]
        assert entry["status"] == "accepted"
        assert entry["cohost"] == {"subject": got["subject"], "name": "Grace", "active": True}
    finally:
        await cohost.close()


async def test_bad_used_expired_and_revoked_invitations_are_refused_and_change_nothing(
        client, db, room_factory, token_factory):
    room = await room_factory()
    host_token = await token_factory(room, "host")
    _, used = await invite(client, room, host_token)
    _, expired = await invite(client, room, host_token)
    _, revoked = await invite(client, room, host_token)
    _, fresh = await invite(client, room, host_token)
    assert (await accept(client, used["invitation"]))[0] == 201
    await db.execute("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1", expired["id"])
    resp = await client.delete(f"/api/rooms/{room.slug}/invitations/{revoked['id']}", headers=bearer(host_token))
    assert resp.status == 204
    before = await token_rows(db, room)

    cases = [
        (used["invitation"], "invitation_used"),
        (expired["invitation"], "invitation_expired"),
        (revoked["invitation"], "invitation_revoked"),
        ("ods_" + "x" * 43, "invalid_invitation"),
        ("not a token", "invalid_invitation"),
        (12, "invalid_invitation"),
        (host_token, "invalid_invitation"),      # an access token is not an invitation
    ]
    for invitation, reason in cases:
        status, body = await accept(client, invitation)
        assert (status, body["error"]) == (400, reason), (invitation, body)
        assert body["message"]
    # A name outside the display-name rule: refused before the invitation is spent.
    status, body = await accept(client, fresh["invitation"], name="bad\u202ename")
    assert (status, body["error"]) == (400, "invalid_display_name")
    assert await token_rows(db, room) == before
    assert (await accept(client, fresh["invitation"], name="Linus"))[0] == 201


async def test_only_a_host_of_the_room_invites_lists_or_revokes(client, db, room_factory, token_factory):
    room, other = await room_factory(), await room_factory()
    host_token = await token_factory(room, "host")
    _, made = await invite(client, room, host_token)
    for role in ("moderator", "viewer"):
        status, body = await invite(client, room, await token_factory(room, role))
        assert (status, body["error"]) == (403, "not_the_host")
    status, body = await invite(client, room, await token_factory(other, "host"))
    assert (status, body["error"]) == (403, "token_wrong_room")
    resp = await client.post(f"/api/rooms/{room.slug}/invitations", json={})      # an anonymous visitor
    assert resp.status == 403 and (await resp.json())["error"] == "not_the_host"
    for ttl in (0, -5, 8 * 86400, "soon"):
        status, body = await invite(client, room, host_token, ttl=ttl)
        assert (status, body["error"]) == (400, "invalid_ttl"), ttl
    status, body = await invite(client, room, host_token, label="x" * 81)
    assert (status, body["error"]) == (400, "invalid_label")
    # Another room's host cannot revoke this room's invitation; unknown ids are 404 too.
    other_host = await token_factory(other, "host")
    for slug, token, inv in ((other.slug, other_host, made["id"]), (room.slug, host_token, 999999999999),
                             (room.slug, host_token, "abc")):
        resp = await client.delete(f"/api/rooms/{slug}/invitations/{inv}", headers=bearer(token))
        assert resp.status == 404 and (await resp.json())["error"] == "invitation_not_found"
    resp = await client.get(f"/api/rooms/{room.slug}/invitations", headers=bearer(await token_factory(room, "viewer")))
    assert (resp.status, (await resp.json())["error"]) == (403, "not_the_host")
    assert await db.fetchval("SELECT count(*) FROM api_tokens WHERE room_id = $1 AND purpose = 'invitation'",
                             room.id) == 1


async def test_revoking_an_invitation_ends_its_co_host(aiohttp_client, service_urls, tmp_path, db, room_factory,
                                                       token_factory):
    from conftest import make_config
    from odsmedia.app import make_app

    client = await aiohttp_client(make_app(make_config(service_urls, tmp_path / "d", ODS_AUTH_REAUTH_INTERVAL="0.2")))
    room = await room_factory()
    host_token = await token_factory(room, "host")
    _, made = await invite(client, room, host_token)
    _, got = await accept(client, made["invitation"])
    cohost = SignalingClient(str(client.make_url("")), room.slug)
    await cohost.connect()
    try:
        await cohost.join(got["token"])
        resp = await client.delete(f"/api/rooms/{room.slug}/invitations/{made['id']}", headers=bearer(host_token))
        assert resp.status == 204
        error = await cohost.next_event("error", timeout=10)
        assert error["code"] == "token_revoked"
        await asyncio.wait_for(cohost.closed.wait(), 10)
        assert await db.fetchval("SELECT revoked_at IS NOT NULL FROM api_tokens WHERE id = $1",
                                 int(got["subject"][2:]))
        resp = await client.delete(f"/api/rooms/{room.slug}/invitations/{made['id']}", headers=bearer(host_token))
        assert resp.status == 404        # revoked already: nothing live to revoke
    finally:
        await cohost.close()


async def frames_past(received, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while received.frames < count:
        assert time.monotonic() < deadline, f"frames stayed at {received.frames}, wanted {count}"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_muting_a_hosts_camera_leaves_their_screen_flowing_and_holds_across_republishing(
        client, peers, room_factory, token_factory):
    room = await room_factory()
    bus = client.server.app[BUS]
    host_token = await token_factory(room, "host")
    host = await peers.client(client, room, join=False)
    await host.join(host_token)
    camera = Publisher(host)
    screen = Publisher(host)
    try:
        camera_id = (await camera.publish(fps=15, audio=False))["publications"][0]["id"]
        screen_pub = (await screen.publish(fps=15, audio=False, source="screen"))["publications"][0]
        assert screen_pub["source"] == "screen"
        watcher: Viewer = await peers.viewer(client, room)
        await watcher.subscribe([camera_id, screen_pub["id"]])
        await frames_past(watcher.received[camera_id], 5)
        await frames_past(watcher.received[screen_pub["id"]], 5)
        live = client.server.app[SFU].get(room.slug)
        subject = live.publications[camera_id].participant.subject

        await bus.publish(f"room:{room.slug}:control",
                          {"action": "mute", "target": subject, "source": "camera", "by": "a:99"})
        event = await watcher.client.next_event("track_muted")
        assert event == {"type": "track_muted", "publication": camera_id, "by": "moderator"}
        assert not live.publications[camera_id].forwarding
        assert live.publications[screen_pub["id"]].forwarding
        # The screen keeps arriving (30 more frames at 15 fps) while the camera stays stopped.
        cam_frames = watcher.received[camera_id].frames
        await frames_past(watcher.received[screen_pub["id"]], watcher.received[screen_pub["id"]].frames + 30)
        assert watcher.received[camera_id].frames <= cam_frames + 2     # at most what was in flight

        # Everyone leaves (the room empties on this node); the host reconnects within the session's
        # grace and publishes its camera again from a new socket: still muted.
        await watcher.close()
        await watcher.client.close()
        await camera.close()
        await screen.close()
        await host.close()
        deadline = time.monotonic() + 10
        while client.server.app[SFU].get(room.slug) is not None:
            assert time.monotonic() < deadline, "the room did not empty"
            await asyncio.sleep(0.05)
        again = await peers.client(client, room, join=False)
        await again.join(host_token)
        live = client.server.app[SFU].get(room.slug)
        republished = Publisher(again)
        reply = await republished.publish(fps=15, audio=False)
        [pub] = reply["publications"]
        assert (pub["source"], pub["muted"], pub["muted_by"]) == ("camera", True, "moderator")
        assert not live.publications[pub["id"]].forwarding
        with pytest.raises(SignalingError) as exc:
            await again.request({"type": "unmute", "publication": pub["id"]})
        assert exc.value.code == "muted_by_moderator"

        await bus.publish(f"room:{room.slug}:control",
                          {"action": "unmute", "target": subject, "source": "camera", "by": "a:99"})
        assert (await again.next_event("track_unmuted"))["publication"] == pub["id"]
        assert live.publications[pub["id"]].forwarding
        await republished.close()
    finally:
        await camera.close()
        await screen.close()


async def test_a_role_change_reaches_everyone_in_the_room(client, peers, room_factory):
    room = await room_factory()
    person = await peers.viewer(client, room, name="Ada", role="viewer")
    onlooker = await peers.viewer(client, room, name="Bob", role="viewer")
    live = client.server.app[SFU].get(room.slug)
    target = next(p for p in live.participants.values() if p.name == "Ada")
    await client.server.app[BUS].publish(f"room:{room.slug}:control",
                                         {"action": "role", "target": target.subject, "role": "moderator",
                                          "by": "a:1"})
    expected = {"type": "role", "participant": target.id, "role": "moderator"}
    assert await onlooker.client.next_event("role") == expected
    assert await person.client.next_event("role") == expected


async def test_nothing_outlives_the_token_it_came_from(client, db, room_factory, token_factory):
    room = await room_factory()
    short_host = await token_factory(room, "host", ttl=600)
    parent = await db.fetchval("SELECT expires_at FROM api_tokens WHERE room_id = $1", room.id)
    status, made = await invite(client, room, short_host, ttl=86400)
    assert status == 201
    invitation_expiry = await db.fetchval("SELECT expires_at FROM api_tokens WHERE id = $1", made["id"])
    assert invitation_expiry <= parent
    _, got = await accept(client, made["invitation"])
    cohost_expiry = await db.fetchval("SELECT expires_at FROM api_tokens WHERE id = $1", int(got["subject"][2:]))
    assert cohost_expiry <= parent
    # Revoking the inviter's token (DELETE /api/tokens/{id} does the same) revokes what it gave.
    inviter = await db.fetchval("SELECT parent_id FROM api_tokens WHERE id = $1", made["id"])
    from odsmedia.auth import tokens
    assert await tokens.revoke(db, inviter, account_id=None)
    revoked = await db.fetch("SELECT id FROM api_tokens WHERE room_id = $1 AND revoked_at IS NOT NULL ORDER BY id",
                             room.id)
    assert [r["id"] for r in revoked] == [inviter, made["id"], int(got["subject"][2:])]
