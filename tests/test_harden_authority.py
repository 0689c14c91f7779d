"""Authority that ends, ends everywhere (issue 11, items 1-4): tokens never outrank their
owner, nobody lifts their own sanction, every moderation notice arrives once, and open
sockets are re-authorized when a session, token, account, plan or role ends."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from conftest import make_config
from odsmedia.app import make_app
from test_auth import sign_in
from test_chat_support import ChatSocket

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def config(service_urls, tmp_path):
    return make_config(service_urls, tmp_path / "data", ODS_REDIS_PREFIX=f"{service_urls.prefix}{uuid.uuid4().hex[:8]}:")


def chat_url(client, room) -> str:
    return str(client.make_url(f"/rooms/{room.slug}/chat"))


async def moderator_with_own_token(client, room, host) -> tuple[str, dict, str]:
    """An account the host promotes, which then mints itself a moderator token."""
    csrf, account = await sign_in(client)
    subject = f"a:{account['id']}"
    assert (await host.request({"type": "promote", "target": subject}))["type"] == "ack"
    resp = await client.post("/api/tokens", json={"room": room.slug, "role": "moderator", "label": "mine"},
                             headers={"X-CSRF-Token": csrf})
    assert resp.status == 201, await resp.text()
    return subject, account, (await resp.json())["token"]


async def test_a_token_never_outranks_its_owner_and_a_ban_holds_against_it(client, room_factory, token_factory):
    room = await room_factory()
    host = await ChatSocket.open(client.session, chat_url(client, room), token=await token_factory(room, "host"))
    subject, _, token = await moderator_with_own_token(client, room, host)
    async with aiohttp.ClientSession() as other:      # no cookies: the token alone speaks
        mod = await ChatSocket.open(other, chat_url(client, room), token=token)
        assert mod.welcome["you"]["role"] == "moderator"
        assert (await host.request({"type": "demote", "target": subject}))["type"] == "ack"
        await mod.wait(lambda e: e["type"] == "you" and e["role"] == "viewer")
        await mod.close()
        again = await ChatSocket.open(other, chat_url(client, room), token=token)
        assert again.welcome["you"]["role"] == "viewer"           # clamped at use, not only at minting
        reply = await again.request({"type": "timeout", "target": host.welcome["you"]["subject"], "minutes": 5})
        assert reply["error"] == "not_a_moderator"
        # Signaling clamps the same way.
        ws = await other.ws_connect(str(client.make_url(f"/rooms/{room.slug}/ws")))
        await ws.send_json({"type": "join", "token": token, "ref": 1})
        joined = await ws.receive_json(timeout=10)
        assert joined["type"] == "joined" and joined["participant"]["role"] == "viewer"
        await ws.close()

        assert (await host.request({"type": "ban", "target": subject}))["type"] == "ack"
        assert await again.wait_closed() == 4403
        ws = await other.ws_connect(chat_url(client, room))
        await ws.send_json({"type": "join", "token": token})
        refusal = await ws.receive_json(timeout=5)
        assert refusal["error"] == "banned"
        await ws.close()
    await host.close()


async def test_a_host_ban_holds_against_a_moderator_who_stays_one(client, room_factory, token_factory):
    room = await room_factory()
    host = await ChatSocket.open(client.session, chat_url(client, room), token=await token_factory(room, "host"))
    subject, _, token = await moderator_with_own_token(client, room, host)
    assert (await host.request({"type": "ban", "target": subject}))["type"] == "ack"
    async with aiohttp.ClientSession() as other:
        ws = await other.ws_connect(chat_url(client, room))
        await ws.send_json({"type": "join", "token": token})
        assert (await ws.receive_json(timeout=5))["error"] == "banned"
        await ws.close()
    await host.close()


async def test_nobody_lifts_their_own_sanction_and_the_sanctioned_do_not_upvote(client, room_factory, token_factory,
                                                                                db):
    room = await room_factory()
    host = await ChatSocket.open(client.session, chat_url(client, room), token=await token_factory(room, "host"))
    subject, _, token = await moderator_with_own_token(client, room, host)
    question = await host.post("a question?", kind="question")
    async with aiohttp.ClientSession() as other:
        mod = await ChatSocket.open(other, chat_url(client, room), token=token)
        assert (await host.request({"type": "timeout", "target": subject, "minutes": 10}))["type"] == "ack"
        reply = await mod.request({"type": "end_timeout", "target": subject})
        assert reply["type"] == "error" and reply["error"] == "invalid_target"
        reply = await mod.request({"type": "upvote", "id": question["id"]})
        assert reply["type"] == "error" and reply["error"] == "timed_out"
        assert await db.fetchval("SELECT votes FROM chat_items WHERE room_id = $1 AND id = $2",
                                 room.id, question["id"]) == 0
        assert await db.fetchval("SELECT count(*) FROM chat_sanctions WHERE room_id = $1 AND subject = $2",
                                 room.id, subject) == 1
        await mod.close()
    await host.close()


async def test_every_moderation_notice_reaches_each_client_once_on_both_nodes(aiohttp_client, service_urls, tmp_path,
                                                                               room_factory, token_factory, db):
    from test_chat_support import make_account

    nodes = [await aiohttp_client(make_app(make_config(service_urls, tmp_path / n))) for n in "ab"]
    member = await make_account(db, f"notice-{uuid.uuid4().hex[:6]}@example.test", "Member")
    room = await room_factory()
    host = await ChatSocket.open(nodes[0], f"/rooms/{room.slug}/chat", token=await token_factory(room, "host"))
    watchers = [await ChatSocket.open(node, f"/rooms/{room.slug}/chat", token=await token_factory(room, "viewer"))
                for node in nodes]
    person = await ChatSocket.open(nodes[0], f"/rooms/{room.slug}/chat",
                                   token=await token_factory(room, "viewer", account_id=member))
    targets = [await ChatSocket.open(node, f"/rooms/{room.slug}/chat", token=await token_factory(room, "viewer"))
               for node in nodes]
    t0, t1 = (t.welcome["you"]["subject"] for t in targets)
    for request in ({"type": "slow_mode", "seconds": 5}, {"type": "timeout", "target": t0, "minutes": 1},
                    {"type": "end_timeout", "target": t0}, {"type": "kick", "target": t0},
                    {"type": "ban", "target": t1}, {"type": "promote", "target": f"a:{member}"}):
        assert (await host.request(request))["type"] == "ack", request
    last = await host.post("after every notice")
    for sock in (*watchers, person, host):
        await sock.wait(lambda e: e.get("seq") == last["id"])
    # A post from node b, published after node a published (and got back) every notice:
    # Redis keeps one order per channel, so once node a's clients have it, every echo is in.
    probe = await watchers[1].post("probe")
    for sock in (*watchers, person, host):
        await sock.wait(lambda e: e.get("seq") == probe["id"])
    for sock in (*watchers, host):
        kinds = [e["type"] for e in sock.events if e["type"] in ("settings", "sanction", "sanction_lifted", "kicked",
                                                                 "banned")]
        assert kinds == ["settings", "sanction", "sanction_lifted", "kicked", "banned"], kinds
        notice_ids = [e["notice"] for e in sock.events if "notice" in e]
        assert len(notice_ids) == len(set(notice_ids)) == 5
    assert [e["role"] for e in person.events if e["type"] == "you"] == ["moderator"]
    for sock in (host, *watchers, person):
        await sock.close()
