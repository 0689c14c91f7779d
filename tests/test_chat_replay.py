"""Chat replay by episode offsets, highlights as jump points, and full-text search."""

from __future__ import annotations

from test_chat_support import ChatSocket


async def seed_episode(db, room, items):
    """An ended episode with items at known offsets (what live posting would have stored)."""
    episode = await db.fetchval(
        "INSERT INTO episodes (room_id, storage_key, status) VALUES ($1, 'k', 'ready') RETURNING id", room.id)
    for n, (offset, kind, text) in enumerate(items, start=1):
        await db.execute(
            "INSERT INTO chat_items (room_id, id, changed_seq, kind, author, author_name, body, episode_id, "
            "episode_offset) VALUES ($1, $2, $2, $3, 'v:x', 'X', $4, $5, $6)",
            room.id, n, kind, text, episode, offset)
    await db.execute("INSERT INTO chat_rooms (room_id, last_seq) VALUES ($1, $2)", room.id, len(items))
    return episode


async def test_replay_window_returns_items_between_offsets_and_highlights(client, room_factory, db):
    room = await room_factory()
    episode = await seed_episode(db, room, [
        (1.0, "message", "at one"), (5.0, "highlight", "the bug appears"), (9.5, "question", "why?"),
        (10.0, "message", "at ten"), (30.0, "highlight", ""), (31.0, "message", "late")])
    resp = await client.get(f"/episodes/{episode}/chat?from=5&to=10")
    assert resp.status == 200 and resp.content_type == "application/json"
    body = await resp.json()
    assert [(i["offset"], i["text"]) for i in body["items"]] == [(5.0, "the bug appears"), (9.5, "why?"),
                                                                  (10.0, "at ten")]
    assert body["from"] == 5 and body["to"] == 10 and body["truncated"] is False
    assert [(h["offset"], h["note"]) for h in body["highlights"]] == [(5.0, "the bug appears"), (30.0, "")]
    everything = await (await client.get(f"/episodes/{episode}/chat")).json()
    assert len(everything["items"]) == 6 and everything["to"] is None
    empty = await (await client.get(f"/episodes/{episode}/chat?from=100&to=200")).json()
    assert empty["items"] == []


async def test_highlights_are_the_episode_chapters(client, room_factory, db):
    room = await room_factory()
    episode = await seed_episode(db, room, [
        (1.0, "message", "hello"), (42.5, "highlight", "the fix"), (7.25, "highlight", ""), (50.0, "question", "q?")])
    resp = await client.get(f"/episodes/{episode}")
    assert resp.status == 200
    chapters = (await resp.json())["chapters"]
    assert [(c["offset"], c["title"], c["name"]) for c in chapters] == [(7.25, "Highlight by X", "X"),
                                                                       (42.5, "the fix", "X")]


async def test_replay_refusals(client, room_factory, db, token_factory):
    room = await room_factory()
    episode = await seed_episode(db, room, [(1.0, "message", "x")])
    for query, reason in (("from=abc", "invalid_from"), ("from=-1", "invalid_from"), ("to=nan", "invalid_to"),
                          ("from=10&to=5", "invalid_window")):
        resp = await client.get(f"/episodes/{episode}/chat?{query}")
        assert resp.status == 400 and (await resp.json())["error"] == reason
    resp = await client.get("/episodes/999999999/chat")
    assert resp.status == 404 and (await resp.json())["error"] == "episode_not_found"
    members = await room_factory(policy="signed-in")
    private = await seed_episode(db, members, [(1.0, "message", "members only")])
    resp = await client.get(f"/episodes/{private}/chat")
    assert resp.status == 401 and (await resp.json())["error"] == "sign_in_required"
    resp = await client.get(f"/episodes/{private}/chat",
                            headers={"Authorization": "Bearer " + await token_factory(members, "viewer")})
    assert resp.status == 200 and (await resp.json())["items"][0]["text"] == "members only"


async def test_search_finds_messages_and_questions_and_respects_deletions(client, room_factory, token_factory):
    room = await room_factory()
    host = await ChatSocket.open(client, f"/rooms/{room.slug}/chat", token=await token_factory(room, "host"))
    keep = await host.post("The encoder drops keyframes under load")
    question = await host.post("Which keyframe interval do you use?", kind="question")
    gone = await host.post("keyframes are overrated, delete me")
    await host.post("unrelated chatter")
    assert (await host.request({"type": "delete", "id": gone["id"]}))["type"] == "ack"
    resp = await client.get(f"/rooms/{room.slug}/chat/search", params={"q": "keyframe"})
    assert resp.status == 200
    ids = {i["id"] for i in (await resp.json())["items"]}
    assert ids == {keep["id"], question["id"]}  # stemming matches keyframes/keyframe; deleted excluded
    phrase = await (await client.get(f"/rooms/{room.slug}/chat/search", params={"q": '"drops keyframes"'})).json()
    assert [i["id"] for i in phrase["items"]] == [keep["id"]]
    other = await room_factory()
    assert (await (await client.get(f"/rooms/{other.slug}/chat/search", params={"q": "keyframe"})).json())["items"] == []
    for q in ("", "x" * 201):
        resp = await client.get(f"/rooms/{room.slug}/chat/search", params={"q": q})
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_query"
    # Text comes back as the same text, HTML and all, as JSON.
    html = await host.post("<script>alert('keyframe')</script>")
    found = await (await client.get(f"/rooms/{room.slug}/chat/search", params={"q": "alert"})).json()
    assert found["items"][0]["id"] == html["id"]
    assert found["items"][0]["text"] == "<script>alert('keyframe')</script>"
    await host.close()
