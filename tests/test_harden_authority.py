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
from test_billing import bclient, billing_env, stripe_api  # noqa: F401
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


# -- item 2: open sockets re-authorized when authority ends, on every node -------------------

REAUTH_BOUND = 5.0   # the promise: within 5 s on every node


def session_cookie(client) -> str:
    return next(c.value for c in client.session.cookie_jar if c.key == "ods_session")


async def two_nodes_for(aiohttp_client, service_urls, tmp_path):
    prefix = f"{service_urls.prefix}{uuid.uuid4().hex[:8]}:"
    return [await aiohttp_client(make_app(make_config(service_urls, tmp_path / n, ODS_REDIS_PREFIX=prefix)))
            for n in "ab"]


async def open_signaling(session: aiohttp.ClientSession, url: str, **join) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(url)
    await ws.send_json({"type": "join", "ref": "j", **join})
    joined = await ws.receive_json(timeout=10)
    assert joined["type"] == "joined", joined
    return ws


async def closed_with(ws: aiohttp.ClientWebSocketResponse, timeout: float = REAUTH_BOUND) -> tuple[int, list]:
    """Read until the server closes; the close code and the events seen."""
    events = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"still open after {timeout}s: {events}"
        msg = await ws.receive(timeout=remaining)
        if msg.type == aiohttp.WSMsgType.TEXT:
            events.append(msg.json())
        elif msg.type == aiohttp.WSMsgType.CLOSE:
            return msg.data, events            # the server's close frame (ws.close_code may read 1006)
        elif msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            return ws.close_code, events


async def test_sign_out_and_session_revocation_close_sockets_on_the_other_node(aiohttp_client, service_urls, tmp_path,
                                                                               room_factory):
    a, b = await two_nodes_for(aiohttp_client, service_urls, tmp_path)
    room = await room_factory()
    csrf, account = await sign_in(a)
    cookie = {"Cookie": f"ods_session={session_cookie(a)}"}
    async with aiohttp.ClientSession(headers=cookie) as browser:
        chat_b = await ChatSocket.open(browser, chat_url(b, room))
        assert chat_b.welcome["you"]["subject"] == f"a:{account['id']}"
        sig_b = await open_signaling(browser, str(b.make_url(f"/rooms/{room.slug}/ws")))
        assert (await a.post("/auth/sign-out", headers={"X-CSRF-Token": csrf})).status == 200
        assert await chat_b.wait_closed(REAUTH_BOUND) == 4401
        assert chat_b.events[-1]["error"] == "session_ended"
        code, events = await closed_with(sig_b)
        assert code == 4401 and events[-1]["code"] == "session_ended"

    # A session revoked from another one ends the same way.
    csrf, _ = await sign_in(a, account["email"])
    other_csrf, _ = await sign_in(b, account["email"])
    victim = await ChatSocket.open(b.session, chat_url(b, room))
    victim_session = victim.welcome["you"]["subject"]
    sessions = (await (await a.get("/api/sessions")).json())["sessions"]
    target = next(s["id"] for s in sessions if not s["current"])
    assert (await a.delete(f"/api/sessions/{target}", headers={"X-CSRF-Token": csrf})).status == 204
    assert await victim.wait_closed(REAUTH_BOUND) == 4401 and victim_session


async def test_a_revoked_token_closes_its_sockets_and_posts_nothing_more(aiohttp_client, service_urls, tmp_path,
                                                                         room_factory, db):
    a, b = await two_nodes_for(aiohttp_client, service_urls, tmp_path)
    room = await room_factory()
    csrf, account = await sign_in(a)
    resp = await a.post("/api/tokens", json={"room": room.slug, "role": "viewer"}, headers={"X-CSRF-Token": csrf})
    minted = await resp.json()
    async with aiohttp.ClientSession() as other:
        chat_b = await ChatSocket.open(other, chat_url(b, room), token=minted["token"])
        sig_b = await open_signaling(other, str(b.make_url(f"/rooms/{room.slug}/ws")), token=minted["token"])
        assert (await a.delete(f"/api/tokens/{minted['id']}", headers={"X-CSRF-Token": csrf})).status == 204
        assert await chat_b.wait_closed(REAUTH_BOUND) == 4401
        assert chat_b.events[-1]["error"] == "token_revoked"
        code, events = await closed_with(sig_b)
        assert code == 4401 and events[-1]["code"] == "token_revoked"
    metrics = await (await b.get("/metrics")).text()
    assert 'ods_authority_ended_total{reason="token_revoked"}' in metrics


async def test_a_deleted_account_is_closed_out_and_nothing_more_is_stored(aiohttp_client, service_urls, tmp_path,
                                                                          room_factory, db):
    a, b = await two_nodes_for(aiohttp_client, service_urls, tmp_path)
    room = await room_factory()
    csrf, account = await sign_in(a)
    subject = f"a:{account['id']}"
    async with aiohttp.ClientSession(headers={"Cookie": f"ods_session={session_cookie(a)}"}) as browser:
        chat_b = await ChatSocket.open(browser, chat_url(b, room))
        assert (await chat_b.post("before deletion"))["type"] == "ack"
        resp = await a.delete("/api/me", json={"confirm_email": account["email"]}, headers={"X-CSRF-Token": csrf})
        assert resp.status == 200, await resp.text()
        # Posting right after the deletion (before the socket is closed) stores nothing.
        reply = await chat_b.post("zombiepost after deletion")
        assert reply["type"] == "error" and reply["error"] == "account_deleted"
        assert await chat_b.wait_closed(REAUTH_BOUND) == 4401
        assert chat_b.events[-1]["error"] == "account_deleted"
    assert await db.fetchval("SELECT count(*) FROM chat_items WHERE room_id = $1 AND body LIKE 'zombiepost%'",
                             room.id) == 0
    # What it posted before is tombstoned (privacy deletion); nothing live remains under its name.
    assert await db.fetchval("SELECT count(*) FROM chat_items WHERE author = $1 AND deleted_at IS NULL", subject) == 0


async def test_demotion_drops_the_signaling_role_on_the_sfu_node(client, room_factory, token_factory):
    room = await room_factory()
    host = await ChatSocket.open(client.session, chat_url(client, room), token=await token_factory(room, "host"))
    csrf, account = await sign_in(client)
    subject = f"a:{account['id']}"
    assert (await host.request({"type": "promote", "target": subject}))["type"] == "ack"
    async with aiohttp.ClientSession(headers={"Cookie": f"ods_session={session_cookie(client)}"}) as browser:
        ws = await browser.ws_connect(str(client.make_url(f"/rooms/{room.slug}/ws")))
        await ws.send_json({"type": "join", "ref": "j"})
        joined = await ws.receive_json(timeout=10)
        assert joined["participant"]["role"] == "moderator"
        assert (await host.request({"type": "demote", "target": subject}))["type"] == "ack"
        while True:
            event = await ws.receive_json(timeout=REAUTH_BOUND)
            if event["type"] == "role":
                break
        assert event == {"type": "role", "participant": joined["participant"]["id"], "role": "viewer"}
        await ws.close()
    await host.close()


async def test_a_plan_that_ends_closes_the_chat_socket(bclient, room_factory, db):
    import time

    from test_billing import deliver, event, subscription

    _, account = await sign_in(bclient)
    customer = f"cus_{uuid.uuid4().hex[:10]}"
    await db.execute("INSERT INTO billing_customers (customer_id, account_id) VALUES ($1, $2)", customer, account["id"])
    sub_id = f"sub_{uuid.uuid4().hex[:12]}"
    t0 = time.time() - 60
    assert (await deliver(bclient, event("customer.subscription.created", subscription(sub_id, customer),
                                         created=t0)))[0] == 200
    room = await room_factory("plans", plans=("pro",))
    sock = await ChatSocket.open(bclient.session, chat_url(bclient, room))
    assert sock.welcome["you"]["subject"] == account["subject"]
    status, _ = await deliver(bclient, event("customer.subscription.deleted", subscription(
        sub_id, customer, status="canceled", period_end=time.time() - 1), created=t0 + 1))
    assert status == 200
    assert await sock.wait_closed(REAUTH_BOUND) == 4402
    assert sock.events[-1]["error"] == "entitlement_ended" and sock.events[-1]["detail"] == "subscription_ended"


async def test_a_whip_session_ends_when_its_token_is_revoked(client, room_factory):
    from aiortc import RTCSessionDescription

    from odsmedia.rooms.sfu import SFU
    from testsupport.peers import whip_offer

    csrf, account = await sign_in(client)
    room = await room_factory(owner_id=account["id"])
    resp = await client.post("/api/tokens", json={"room": room.slug, "role": "host"}, headers={"X-CSRF-Token": csrf})
    minted = await resp.json()
    publisher, offer = await whip_offer()
    try:
        async with aiohttp.ClientSession() as obs:     # OBS: the token only, no cookies
            resp = await obs.post(str(client.make_url(f"/rooms/{room.slug}/whip")), data=offer,
                                  headers={"Content-Type": "application/sdp",
                                           "Authorization": f"Bearer {minted['token']}"})
            assert resp.status == 201, await resp.text()
            await publisher.setRemoteDescription(RTCSessionDescription(await resp.text(), "answer"))
        sfu = client.server.app[SFU]
        assert sfu.get(room.slug) is not None and sfu.get(room.slug).participants
        assert (await client.delete(f"/api/tokens/{minted['id']}", headers={"X-CSRF-Token": csrf})).status == 204
        deadline = asyncio.get_running_loop().time() + REAUTH_BOUND
        while sfu.get(room.slug) is not None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)    # polled with a deadline: the room empties on the node's next check
        assert sfu.get(room.slug) is None
    finally:
        await publisher.close()
