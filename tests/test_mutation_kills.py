"""Assertions that kill mutants the mutation run (docs/testing.md) found surviving."""

from __future__ import annotations

from test_chat_support import ChatSocket


def chat(room) -> str:
    return f"/rooms/{room.slug}/chat"


async def test_a_sanctioned_person_casts_no_vote(client, room_factory, token_factory, db):
    """chat.store.upvote checks the voter's timeout/ban in the same transaction as the vote
    (mutants that skip it or look it up for the wrong room or subject survived)."""
    room, other_room = await room_factory(), await room_factory()
    host = await ChatSocket.open(client, chat(room), token=await token_factory(room, "host"))
    viewer_token = await token_factory(room, "viewer")
    viewer = await ChatSocket.open(client, chat(room), token=viewer_token)
    subject = viewer.welcome["you"]["subject"]
    question = (await host.post("why?", kind="question"))["id"]
    # A sanction on the same subject in another room does not count here.
    await db.execute("INSERT INTO chat_rooms (room_id, last_seq) VALUES ($1, 0) ON CONFLICT DO NOTHING",
                     other_room.id)
    other_host = await ChatSocket.open(client, chat(other_room), token=await token_factory(other_room, "host"))
    assert (await other_host.request({"type": "ban", "target": subject}))["type"] == "ack"

    assert (await host.request({"type": "timeout", "target": subject, "minutes": 5}))["type"] == "ack"
    reply = await viewer.request({"type": "upvote", "id": question})
    assert (reply["type"], reply["error"]) == ("error", "timed_out") and reply["until"]
    assert await db.fetchval("SELECT votes FROM chat_items WHERE room_id = $1 AND id = $2", room.id, question) == 0
    assert await db.fetchval("SELECT count(*) FROM chat_votes WHERE room_id = $1", room.id) == 0

    assert (await host.request({"type": "end_timeout", "target": subject}))["type"] == "ack"
    reply = await viewer.request({"type": "upvote", "id": question})
    assert reply["type"] == "ack" and reply["votes"] == 1
    for sock in (host, viewer, other_host):
        await sock.close()
