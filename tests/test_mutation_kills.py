"""Assertions that kill mutants the mutation run (docs/testing.md) found surviving."""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timezone

import pytest

from odsmedia import metrics
from odsmedia.auth import accounts, tokens
from odsmedia.auth.service import AUTH
from odsmedia.billing.plans import Catalog
from odsmedia.billing.webhooks import (MAX_EPOCH, MAX_QUANTITY, MAX_TEXT, InvalidEvent, _invoice_subscription,
                                       apply, parse_subscription)
from odsmedia.chat import store as chat_store
from odsmedia.chat.items import ChatError
from odsmedia.errors import ApiError
from odsmedia.gate import Admission, Entitlement, Entry, Gate, Identity, TokenGrant
from odsmedia.rooms import directory
from odsmedia.rooms.directory import RoomRecord
from test_auth import mails_to, sign_in
from test_billing import bclient, billing_env, deliver, event, stripe_api, subscription  # noqa: F401
from test_chat_support import ChatSocket
from test_moderation import control  # noqa: F401


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


def test_identity_kind_and_subject_for_each_way_in():
    """gate.Identity: the kind and subject each identity has (mutants returning None or
    flipping an `is not None` survived: only chat and moderation tests read them)."""
    expires = datetime.now(timezone.utc)
    operator_token = TokenGrant(token_id=7, room_id=1, role="host", account_id=None, expires_at=expires)
    account_token = TokenGrant(token_id=8, room_id=1, role="viewer", account_id=5, expires_at=expires)
    seen = {name: (identity.kind, identity.subject) for name, identity in {
        "nobody": Identity(),
        "anonymous": Identity(anon_id="c0ffee"),
        "account": Identity(account_id=5, session_id=3),
        "operator token": Identity(token=operator_token),
        "account token": Identity(account_id=5, token=account_token),
    }.items()}
    assert seen == {"nobody": ("none", "none"), "anonymous": ("anonymous", "v:c0ffee"),
                    "account": ("account", "a:5"), "operator token": ("token", "t:7"),
                    "account token": ("token", "a:5")}
    room = RoomRecord(id=1, slug="r", title="R", access_policy="public", access_plans=(), owner_id=None)
    assert {role: Admission(room, Identity(), role).is_moderator for role in ("viewer", "moderator", "host")} == \
        {"viewer": False, "moderator": True, "host": True}


async def test_a_malformed_or_unknown_bearer_is_401_with_a_challenge(client, room_factory, token_factory):
    """RFC 6750: a 401 for a bearer token says how to authenticate (WWW-Authenticate); a 403 does not."""
    room, other = await room_factory(), await room_factory()
    real = await token_factory(room, "viewer")
    for authorization in ("Basic dXNlcjpwdw==", f"Basic {real}", "Bearer ", "Bearer ods_not_a_token"):
        resp = await client.post(f"/rooms/{room.slug}/whep", data="v=0\r\n",
                                 headers={"Authorization": authorization, "Content-Type": "application/sdp"})
        assert (resp.status, (await resp.json())["error"]) == (401, "invalid_token"), authorization
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="odsmedia"'
    resp = await client.post(f"/rooms/{room.slug}/whep", data="v=0\r\n",
                             headers={"Authorization": f"Bearer {await token_factory(other, 'viewer')}",
                                      "Content-Type": "application/sdp"})
    assert (resp.status, (await resp.json())["error"]) == (403, "token_wrong_room")
    assert "WWW-Authenticate" not in resp.headers


async def test_plan_rooms_ask_the_entitlement_checker_and_pass_on_its_reason(db, room_factory):
    """gate.Gate.decide for a room sold by plan: the checker's yes admits (mutants returning
    None from decide survived), its no refuses with its reason and plans, or the room's."""
    paying, lapsed, unexplained = [
        (await accounts.create_verified(db, f"plan-{uuid.uuid4().hex[:10]}@example.org")).id for _ in range(3)]
    room = await room_factory("plans", plans=("pro", "team"))
    answers = {paying: Entitlement(True), lapsed: Entitlement(False, "payment_past_due", ("pro",)),
               unexplained: Entitlement(False)}
    asked: list[int] = []

    async def checker(account_id: int, asked_room) -> Entitlement:
        assert asked_room.id == room.id
        asked.append(account_id)
        return answers[account_id]

    gate = Gate(db, entitlements=checker)
    record = await directory.require(db, room.slug)

    def asking(account_id):   # the identity a session cookie resolves to, asking to enter
        return Admission(record, Identity(account_id=account_id), "viewer")

    admitted = await gate.reconsider(asking(paying), Entry.JOIN)
    assert (admitted.room.id, admitted.role, admitted.identity.account_id) == (room.id, "viewer", paying)
    refusals = {}
    for account in (lapsed, unexplained):
        with pytest.raises(ApiError) as refused:
            await gate.reconsider(asking(account), Entry.PLAY)
        refusals[account] = (refused.value.status, refused.value.reason, refused.value.extra["plans"])
    assert refusals == {lapsed: (402, "payment_past_due", ["pro"]),
                        unexplained: (402, "plan_required", ["pro", "team"])}
    assert asked == [paying, lapsed, unexplained]
    with pytest.raises(ApiError) as refused:                       # no account: sign in first
        await gate.reconsider(asking(None), Entry.JOIN)
    assert (refused.value.status, refused.value.reason, refused.value.extra["plans"]) == \
        (401, "sign_in_required", ["pro", "team"])
    # Without a checker (billing not configured) a plan room needs a plan, and says which.
    with pytest.raises(ApiError) as refused:
        await Gate(db).reconsider(asking(paying), Entry.JOIN)
    assert (refused.value.status, refused.value.reason, refused.value.extra["plans"]) == \
        (402, "plan_required", ["pro", "team"])
    # A moderator of the room enters without a plan (the checker is not asked).
    moderator = (await accounts.create_verified(db, f"plan-{uuid.uuid4().hex[:10]}@example.org")).id
    await directory.add_member(db, room.id, moderator, "moderator")
    admitted = await gate.reconsider(asking(moderator), Entry.PLAY)
    assert admitted.role == "moderator" and asked == [paying, lapsed, unexplained]
    # A public room: nobody at all may watch, not chat.
    public = await directory.require(db, (await room_factory()).slug)
    nobody = Admission(public, Identity(), "viewer")
    assert (await gate.reconsider(nobody, Entry.JOIN)).role == "viewer"
    with pytest.raises(ApiError) as refused:
        await gate.reconsider(nobody, Entry.CHAT)
    assert (refused.value.status, refused.value.reason) == (401, "sign_in_required")
    # Each decision's latency is what it took (a run of this test, not the clock's reading).
    latency = metrics.gate_latency.labels("join")
    before = latency._sum.get()
    await gate.reconsider(nobody, Entry.JOIN)
    assert 0 <= latency._sum.get() - before < 5


def _subscription_object(**fields) -> dict:
    obj = {"id": "sub_k1", "customer": "cus_k1", "status": "active",
           "items": {"data": [{"price": {"id": "price_k"}, "quantity": 3, "current_period_end": 1_800_000_000}]}}
    obj.update(fields)
    return obj


def _item(**fields) -> dict:
    return {"items": {"data": [{"price": {"id": "price_k"}, **fields}]}}


def test_webhook_fields_are_refused_exactly_past_their_bounds():
    """billing.webhooks field checks at their edges: the last value allowed passes, the first past it
    is InvalidEvent (mutants moving a bound by one, or dropping the bool check, survived)."""
    assert parse_subscription(_subscription_object(status="a" * MAX_TEXT)).status == "a" * MAX_TEXT
    accepted = {
        "quantity 0": (_item(quantity=0), "quantity", 0),
        "quantity max": (_item(quantity=MAX_QUANTITY), "quantity", MAX_QUANTITY),
        "no quantity": (_item(), "quantity", 1),
        "period at the epoch": (_item(current_period_end=0), "current_period_end",
                                datetime(1970, 1, 1, tzinfo=timezone.utc)),
        "period at the last second": (_item(current_period_end=MAX_EPOCH), "current_period_end",
                                      datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)),
    }
    for name, (fields, attribute, expected) in accepted.items():
        assert getattr(parse_subscription(_subscription_object(**fields)), attribute) == expected, name
    refused = {
        "status too long": {"status": "a" * (MAX_TEXT + 1)},
        "status with NUL": {"status": "act\x00ive"},
        "quantity below 0": _item(quantity=-1),
        "quantity past max": _item(quantity=MAX_QUANTITY + 1),
        "quantity a bool": _item(quantity=True),
        "quantity a float": _item(quantity=2.0),
        "period before the epoch": _item(current_period_end=-1),
        "period past the last second": _item(current_period_end=MAX_EPOCH + 1),
        "period a bool": _item(current_period_end=True),
        "period a string": _item(current_period_end="soon"),
        "no status": {"status": None},
        "customer an object without id": {"customer": {"object": "customer"}},
        "customer empty": {"customer": ""},
    }
    accepted_anyway = []
    for name, fields in refused.items():
        try:
            parse_subscription(_subscription_object(**fields))
        except InvalidEvent:
            continue
        accepted_anyway.append(name)
    assert accepted_anyway == []


def test_webhook_references_and_older_shapes_are_read():
    """Expanded objects stand for their id; the period and price are found where older API
    versions put them; an invoice names its subscription directly or through its parent."""
    expanded = parse_subscription(_subscription_object(customer={"id": "cus_k2", "object": "customer"},
                                                       cancel_at_period_end=1))
    assert (expanded.customer, expanded.cancel_at_period_end) == ("cus_k2", True)
    legacy = parse_subscription({"id": "sub_k3", "customer": "cus_k3", "status": "past_due",
                                 "plan": {"id": "price_legacy"}, "quantity": 4, "current_period_end": 1_800_000_000})
    assert (legacy.price, legacy.quantity, legacy.status, legacy.cancel_at_period_end) == \
        ("price_legacy", 4, "past_due", False)
    assert legacy.current_period_end == datetime.fromtimestamp(1_800_000_000, timezone.utc)
    assert parse_subscription(_subscription_object(items=None)).price == ""
    assert _invoice_subscription({"subscription": {"id": "sub_k4"}}) == "sub_k4"
    assert _invoice_subscription({"parent": {"subscription_details": {"subscription": "sub_k5"}}}) == "sub_k5"
    assert _invoice_subscription({"parent": {"type": "quote_details"}}) is None


async def test_an_event_nested_past_the_limit_is_refused_whole(db):
    """billing.webhooks: nesting is walked to depth 32 and no further; NUL is found in keys as in values."""
    def nested(levels: int) -> dict:
        inner: object = "leaf"
        for _ in range(levels):
            inner = {"k": inner}
        return {"id": f"evt_{uuid.uuid4().hex[:16]}", "type": "customer.updated", "created": 1_800_000_000,
                "data": {"object": {"id": "cus_k6", "deep": inner}}}

    catalog = Catalog({}, {})
    # event (0) -> data (1) -> object (2) -> deep (3), one more per level: the leaf may be at 32.
    deepest_allowed = 32 - 3
    assert (await apply(db, nested(deepest_allowed), catalog, grace_seconds=1.0)).ignored
    with pytest.raises(InvalidEvent):
        await apply(db, nested(deepest_allowed + 1), catalog, grace_seconds=1.0)
    for odd in ({"data": {"object": {"k\x00": 1}}}, {"data": {"object": {"list": ["a", ["b\x00"]]}}},
                {"created": True}, {"data": {"object": "cus_k7"}}, {"id": 17}):
        event = {"id": f"evt_{uuid.uuid4().hex[:16]}", "type": "customer.updated", "created": 1_800_000_000,
                 "data": {"object": {"id": "cus_k7"}}, **odd}
        with pytest.raises(InvalidEvent):
            await apply(db, event, catalog, grace_seconds=1.0)


async def test_invoice_events_defer_to_what_the_subscription_already_says(bclient, db):  # noqa: F811
    """billing.webhooks._invoice_event: an invoice for a subscription never seen, canceled, or
    older than its state is ignored and writes nothing (the whole `or` chain as `and` survived)."""
    customer, sub_id, t = f"cus_{uuid.uuid4().hex[:10]}", f"sub_{uuid.uuid4().hex[:12]}", time.time()

    def invoice(kind: str, subscription_id: str, created: float) -> bytes:
        return event(kind, {"id": f"in_{uuid.uuid4().hex[:8]}", "object": "invoice", "customer": customer,
                            "subscription": subscription_id}, created=created)

    status, body = await deliver(bclient, invoice("invoice.payment_failed", "sub_never_seen", t))
    assert (status, body["ignored"]) == (200, True)
    assert await db.fetchval("SELECT count(*) FROM subscriptions WHERE subscription_id = 'sub_never_seen'") == 0
    assert (await deliver(bclient, event("customer.subscription.created", subscription(sub_id, customer),
                                         created=t)))[0] == 200
    status, body = await deliver(bclient, invoice("invoice.payment_failed", sub_id, t - 60))   # older
    assert (status, body["ignored"]) == (200, True)
    status, body = await deliver(bclient, invoice("invoice.payment_failed", sub_id, t))        # same second
    assert (status, body["ignored"]) == (200, True)
    assert await db.fetchval("SELECT status FROM subscriptions WHERE subscription_id = $1", sub_id) == "active"
    status, body = await deliver(bclient, invoice("invoice.payment_failed", sub_id, t + 60))   # newer: applies
    assert (status, body["ignored"]) == (200, False)
    assert await db.fetchval("SELECT status FROM subscriptions WHERE subscription_id = $1", sub_id) == "past_due"


async def test_chat_store_refusals_counts_and_deletion_events_exactly(db, room_factory):
    """chat.store mutants that survived the chat selection: a deleted item still answerable or
    votable (``or`` -> ``and`` in _require_live), a banned voter's refusal, the account-deletion
    counts, the default role of a post, and deletions grouped per seq (events_of)."""
    room = await room_factory()
    assert await chat_store.slow_mode(db, room.id) == 0
    assert await chat_store.room_states(db, [room.id]) == {}
    post = chat_store.post
    q = await post(db, room.id, kind="question", author="v:101", author_name="Asker", text="why?")
    assert q.author_role == "viewer"
    for refused in (chat_store.upvote(db, room.id, 999, "v:voter"), chat_store.mark_answered(db, room.id, 999)):
        with pytest.raises(ChatError) as caught:
            await refused
        assert caught.value.reason == "item_not_found"

    m = await post(db, room.id, kind="message", author="v:104", author_name="N" * 81, text="not a question")
    assert m.author_name == "N" * 80
    with pytest.raises(ChatError) as caught:
        await chat_store.mark_answered(db, room.id, m.id)
    assert caught.value.reason == "not_a_question"
    # Resuming from cursor 0 is a resume (everything since), not a reset to history.
    snap = await chat_store.snapshot(db, room.id, after=0, history=1)
    assert (snap.reset, [i.id for i in snap.items], snap.cursor) == (False, [q.id, m.id], m.id)
    # Exactly resume_limit changes are resumed; one more and the client starts over from history.
    snap = await chat_store.snapshot(db, room.id, after=0, history=1, resume_limit=2)
    assert (snap.reset, [i.id for i in snap.items]) == (False, [q.id, m.id])
    snap = await chat_store.snapshot(db, room.id, after=0, history=1, resume_limit=1)
    assert (snap.reset, [i.id for i in snap.items]) == (True, [m.id])

    await chat_store.ban(db, room.id, "v:banned", by="a:1", reason="")
    with pytest.raises(ChatError) as caught:
        await chat_store.upvote(db, room.id, q.id, "v:banned")
    assert caught.value.reason == "banned"
    assert (await chat_store.upvote(db, room.id, q.id, "v:voter")).votes == 1

    await chat_store.delete(db, room.id, q.id, "a:1")
    for refused in (chat_store.upvote(db, room.id, q.id, "v:other"), chat_store.mark_answered(db, room.id, q.id),
                    chat_store.delete(db, room.id, q.id, "a:1")):
        with pytest.raises(ChatError) as caught:
            await refused
        assert caught.value.reason == "item_not_found"

    a, b, c, d = [await post(db, room.id, kind="message", author="v:102", author_name="P", text=t)
                  for t in ("a", "b", "c", "d")]
    after = await chat_store.last_seq(db, room.id)
    await chat_store.delete(db, room.id, a.id, "a:1")
    await chat_store.delete(db, room.id, b.id, "a:1")
    seq, ids = await chat_store.clear(db, room.id, "a:1")
    assert ids == [m.id, c.id, d.id]
    live = await post(db, room.id, kind="message", author="v:102", author_name="P", text="e")
    events = chat_store.events_of(await chat_store.changes_after(db, room.id, after))
    assert [(e["type"], e["seq"], e.get("ids")) for e in events] == [
        ("deleted", after + 1, [a.id]), ("deleted", after + 2, [b.id]), ("deleted", seq, [m.id, c.id, d.id]),
        ("item", live.id, None)]
    await chat_store.set_slow_mode(db, room.id, 7)
    assert await chat_store.room_states(db, [room.id]) == {room.id: (live.id, 7)}

    for text in ("one", "two"):
        await post(db, room.id, kind="message", author="v:103", author_name="L", text=text)
    other = await post(db, room.id, kind="question", author="v:102", author_name="P", text="how?")
    await chat_store.upvote(db, room.id, other.id, "v:103")
    async with db.acquire() as conn, conn.transaction():
        assert await chat_store.forget_author(conn, "v:103") == (2, 1)
    assert await chat_store.forget_author(db, "v:nobody") == (0, 0)
    exported = await chat_store.export(db, "v:102")
    assert sorted(exported) == ["chat_items", "chat_sanctions", "chat_votes"]
    assert [i["body"] for i in exported["chat_items"]] == ["", "", "", "", "e", "how?"]



async def test_a_guest_posts_past_the_generic_plan_of_one_connection(db, room_factory):
    """Found during the chat.store mutation run: from a connection's sixth execution of the post
    statement on, Postgres may use a generic plan that casts a guest's ``v:`` id to bigint."""
    room = await room_factory()
    async with db.acquire() as conn:
        items = [await chat_store.post(conn, room.id, kind="message", author="v:guest_Ab-1", author_name="G",
                                       text=f"m{i}") for i in range(8)]
    assert [i.text for i in items] == [f"m{i}" for i in range(8)]


async def test_moderation_reasons_are_bounded_and_answers_acknowledged(client, room_factory, token_factory, db):
    """chat.moderation mutants that survived the moderation selection: the ``or`` chain of
    ``_reason`` as ``and`` (every reason accepted), ``answer``/``delete`` acknowledging without
    the id, the lowest id moved by one, an unknown item's delete not refused as item_not_found."""
    room = await room_factory()
    host = await ChatSocket.open(client, chat(room), token=await token_factory(room, "host"))
    viewer = await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
    target = viewer.welcome["you"]["subject"]
    for reason in ("x" * 201, "bell\x07", 12):
        reply = await host.request({"type": "timeout", "target": target, "minutes": 1, "reason": reason})
        assert (reply["type"], reply["error"]) == ("error", "invalid_reason"), reason
    assert await db.fetchval("SELECT count(*) FROM chat_sanctions WHERE room_id = $1", room.id) == 0
    reply = await host.request({"type": "timeout", "target": target, "minutes": 1, "reason": " " + "x" * 199})
    assert reply["type"] == "ack" and reply["target"] == target
    assert await db.fetchval("SELECT reason FROM chat_sanctions WHERE room_id = $1", room.id) == "x" * 199
    reply = await host.request({"type": "end_timeout", "target": target})
    assert (reply["type"], reply["target"]) == ("ack", target)

    question = (await host.post("why?", kind="question"))["id"]
    assert question == 1   # the lowest id allowed
    reply = await host.request({"type": "answer", "id": question})
    assert (reply["type"], reply["id"]) == ("ack", question)
    assert await db.fetchval("SELECT answered_at IS NOT NULL FROM chat_items WHERE room_id = $1 AND id = $2",
                             room.id, question) is True
    me = host.welcome["you"]["subject"]
    for attempt in ({"type": "end_timeout", "target": me}, {"type": "mute", "target": me, "source": "microphone"}):
        reply = await host.request(attempt)
        assert (reply["type"], reply["error"]) == ("error", "invalid_target"), attempt
    for kind in ("answer", "delete"):
        reply = await host.request({"type": kind, "id": 0})
        assert (reply["type"], reply["error"]) == ("error", "invalid_id"), kind
    reply = await host.request({"type": "delete", "id": 999})
    assert (reply["type"], reply["error"]) == ("error", "item_not_found")
    reply = await host.request({"type": "delete", "id": question})
    assert (reply["type"], reply["id"]) == ("ack", question)
    reply = await host.request({"type": "ban", "target": target})
    assert (reply["type"], reply["target"]) == ("ack", target)
    for sock in (host, viewer):
        await sock.close()


# ---- third pass: chat.moderation's notices and billing.webhooks' branches, exactly ----------------

async def test_moderation_notices_acks_and_sanction_list_key_by_key(client, room_factory, token_factory, db,
                                                                    control):  # noqa: F811
    """chat.moderation: every notice, ack, control message and the sanctions list compared whole
    (mutants renaming or dropping one key survived where tests read only some); set_role on the
    room's owner, a co-host member and an unknown account; lifting a sanction that is not there."""
    listen, next_message = control
    owner, cohost, member = [(await accounts.create_verified(db, f"mod-{uuid.uuid4().hex[:10]}@example.org")).id
                             for _ in range(3)]
    room = await room_factory(owner_id=owner)
    await directory.add_member(db, room.id, cohost, "host")
    await listen(room.slug)
    host = await ChatSocket.open(client, chat(room), token=await token_factory(room, "host"))   # an operator's token
    watcher, viewer, spammer = [await ChatSocket.open(client, chat(room), token=await token_factory(room, "viewer"))
                                for _ in range(3)]
    me, target, other = (s.welcome["you"]["subject"] for s in (host, viewer, spammer))
    name = viewer.welcome["you"]["name"]
    assert name and (await viewer.post("hello"))["type"] == "ack"   # the sanctions list names who posted
    used: set[int] = set()

    async def notice(sock: ChatSocket, kind: str) -> dict:
        """The next `kind` notice this socket got, without its delivery id."""
        got = await sock.wait(lambda e: e["type"] == kind and id(e) not in used)
        used.add(id(got))
        return {k: v for k, v in got.items() if k != "notice"}

    async def ack(message: dict) -> dict:
        reply = await host.request(message)
        assert reply["type"] == "ack", (message, reply)
        return {k: v for k, v in reply.items() if k not in ("type", "ref")}

    async def error(message: dict) -> str:
        reply = await host.request(message)
        assert reply["type"] == "error", (message, reply)
        return reply["error"]

    timed = await ack({"type": "timeout", "target": target, "minutes": 1, "reason": "calm down"})
    until = timed["until"]
    assert timed == {"target": target, "until": until}
    assert await notice(watcher, "sanction") == {"type": "sanction", "sanction": "timeout", "target": target,
                                                 "until": until, "by": me}
    assert await ack({"type": "ban", "target": other}) == {"target": other}
    banned = {"type": "banned", "target": other, "by": me, "error": "banned",
              "message": "you are banned from this room"}
    assert await notice(spammer, "banned") == banned and await notice(watcher, "banned") == banned
    assert await spammer.wait_closed() == 4403
    assert await next_message() == {"action": "ban", "target": other, "by": me, "reason": ""}
    since = {r["subject"]: r["created_at"].isoformat()
             for r in await db.fetch("SELECT subject, created_at FROM chat_sanctions WHERE room_id = $1", room.id)}
    assert await ack({"type": "sanctions"}) == {"sanctions": [   # newest first
        {"target": other, "name": None, "sanction": "ban", "until": None, "by": me, "reason": "",
         "since": since[other]},
        {"target": target, "name": name, "sanction": "timeout", "until": until, "by": me, "reason": "calm down",
         "since": since[target]}]}

    for lift, kind, subject in (("end_timeout", "timeout", target), ("unban", "ban", other)):
        assert await ack({"type": lift, "target": subject}) == {"target": subject}
        assert await notice(watcher, "sanction_lifted") == {"type": "sanction_lifted", "sanction": kind,
                                                            "target": subject, "by": me}
        assert await error({"type": lift, "target": subject}) == "not_sanctioned"
    assert await ack({"type": "sanctions"}) == {"sanctions": []}

    assert await ack({"type": "slow_mode", "seconds": 3600}) == {"slow_mode": 3600}
    assert await notice(watcher, "settings") == {"type": "settings", "slow_mode": 3600, "by": me}
    assert await error({"type": "slow_mode", "seconds": 3601}) == "invalid_seconds"
    assert await ack({"type": "slow_mode", "seconds": 0}) == {"slow_mode": 0}

    assert await ack({"type": "mute", "target": target, "source": "microphone"}) == \
        {"target": target, "source": "microphone"}
    assert await next_message() == {"action": "mute", "target": target, "source": "microphone", "by": me}

    # The owner and a co-host member hold the host role for good; an unknown account cannot be promoted.
    for attempt in ({"type": "promote", "target": f"a:{owner}"}, {"type": "promote", "target": f"a:{cohost}"},
                    {"type": "demote", "target": f"a:{cohost}"}, {"type": "promote", "target": "a:999999999999"}):
        assert await error(attempt) == "invalid_target", attempt
    for kind, role in (("promote", "moderator"), ("demote", "viewer")):
        assert await ack({"type": kind, "target": f"a:{member}"}) == {"target": f"a:{member}", "role": role}
        assert await next_message() == {"action": "role", "target": f"a:{member}", "role": role, "by": me}
    assert {r["account_id"]: r["role"] for r in await db.fetch(
        "SELECT account_id, role FROM room_members WHERE room_id = $1", room.id)} == {cohost: "host"}

    assert await ack({"type": "kick", "target": target}) == {"target": target}
    kicked = {"type": "kicked", "target": target, "by": me, "error": "kicked", "message": "removed by a moderator"}
    assert await notice(viewer, "kicked") == kicked and await notice(watcher, "kicked") == kicked
    assert await viewer.wait_closed() == 4003
    assert await next_message() == {"action": "kick", "target": target, "by": me, "reason": ""}
    assert [(r["action"], r["target"]) for r in await db.fetch(
        "SELECT action, target FROM moderation_actions WHERE room_id = $1 ORDER BY id", room.id)] == [
        ("timeout", target), ("ban", other), ("end_timeout", target), ("unban", other), ("slow_mode", ""),
        ("slow_mode", ""), ("mute", target), ("promote", f"a:{member}"), ("demote", f"a:{member}"),
        ("kick", target)]
    for sock in (host, watcher):
        await sock.close()


async def _payer(db) -> tuple[str, str]:
    """A Stripe customer mapped to a fresh account: (customer id, the account's address)."""
    address = f"payer-{uuid.uuid4().hex[:10]}@example.org"
    account = await accounts.create_verified(db, address)
    customer = f"cus_{uuid.uuid4().hex[:10]}"
    await db.execute("INSERT INTO billing_customers (customer_id, account_id) VALUES ($1, $2)", customer, account.id)
    return customer, address


async def _notices(client, address: str) -> list[tuple[str, str]]:
    """(template, the date the mail names) of each billing notice mailed to ``address``."""
    await client.server.app[AUTH].drain()
    found = []
    for mail in mails_to(client.server.app[AUTH].config, address):
        day = re.search(r"(?:ends\s+on|continues\s+until) (\S+?)[.\s]", mail.get_content())
        found.append((mail["X-ODS-Template"], day.group(1)))
    return sorted(found)


def _day(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), timezone.utc).date().isoformat()


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(int(ts), timezone.utc)


async def test_a_cancellation_is_mailed_once_with_the_day_access_ends(bclient, db):  # noqa: F811
    """billing.webhooks._subscription_event: subscription_canceled is mailed when a subscription
    starts canceling or is canceled, once (mutants of `was_canceling` and of the notice's condition
    survived), naming the period's last day, or "now" without a period end."""
    customer, address = await _payer(db)
    t, period = time.time() - 3600, time.time() + 20 * 86400

    async def send(kind: str, sub_id: str, created: float, no_period: bool = False, **fields) -> bool:
        obj = subscription(sub_id, customer, period_end=period, **fields)
        if no_period:
            obj["current_period_end"] = None
        status, body = await deliver(bclient, event(kind, obj, created=created))
        assert status == 200, body
        return body["ignored"]

    first, second = f"sub_{uuid.uuid4().hex[:12]}", f"sub_{uuid.uuid4().hex[:12]}"
    assert await send("customer.subscription.created", first, t) is False
    assert await _notices(bclient, address) == []
    assert await send("customer.subscription.updated", first, t + 1, cancel_at_period_end=True) is False
    assert await send("customer.subscription.updated", first, t + 2, cancel_at_period_end=True) is False
    assert await send("customer.subscription.deleted", first, t + 3, status="canceled") is False
    assert await _notices(bclient, address) == [("subscription_canceled", _day(period))]
    assert await send("customer.subscription.created", second, t) is False
    assert await send("customer.subscription.deleted", second, t + 1, no_period=True, status="canceled") is False
    # A canceled subscription takes Stripe's newer word (still canceled) without a second notice.
    assert await send("customer.subscription.updated", second, t + 2, no_period=True, status="canceled") is False
    assert await db.fetchval("SELECT state_at FROM subscriptions WHERE subscription_id = $1", second) == _at(t + 2)
    assert await _notices(bclient, address) == [("subscription_canceled", _day(period)),
                                                ("subscription_canceled", "now")]


async def test_invoices_move_each_status_as_stripe_does_and_mail_the_grace_day(bclient, db):  # noqa: F811
    """billing.webhooks._invoice_event per status of the subscription, and past_due_since kept from
    the first failure (mutants of the status lists, the grace sum and the clock's start survived)."""
    grace, t0 = 3 * 86400, time.time() - 10 * 86400

    async def subscribed(status: str) -> tuple[str, str, str]:
        customer, address = await _payer(db)
        sub_id = f"sub_{uuid.uuid4().hex[:12]}"
        status_code, body = await deliver(bclient, event("customer.subscription.created",
                                                         subscription(sub_id, customer, status=status), created=t0))
        assert (status_code, body["ignored"]) == (200, False)
        return sub_id, customer, address

    async def invoice(kind: str, sub_id: str | None, customer: str, created: float) -> bool:
        obj = {"id": f"in_{uuid.uuid4().hex[:8]}", "object": "invoice", "customer": customer}
        if sub_id:
            obj["subscription"] = sub_id
        status, body = await deliver(bclient, event(kind, obj, created=created))
        assert status == 200, body
        return body["ignored"]

    async def row(sub_id: str) -> tuple:
        r = await db.fetchrow("SELECT status, past_due_since, state_at FROM subscriptions WHERE subscription_id = $1",
                              sub_id)
        return r["status"], r["past_due_since"], r["state_at"]

    lone_customer, lone_address = await _payer(db)
    for kind in ("invoice.paid", "invoice.payment_failed"):   # a one-off invoice: no subscription to change
        assert await invoice(kind, None, lone_customer, t0) is True
    assert await db.fetchval("SELECT count(*) FROM subscriptions WHERE customer_id = $1", lone_customer) == 0

    trialing = await subscribed("trialing")
    assert await invoice("invoice.payment_failed", trialing[0], trialing[1], t0 + 86400) is False
    assert await row(trialing[0]) == ("past_due", _at(t0 + 86400), _at(t0 + 86400))
    assert await _notices(bclient, trialing[2]) == [("payment_failed", _day(t0 + 86400 + grace))]

    # Past due from the start (no row before): the grace clock starts then, and later failures keep it.
    late = await subscribed("past_due")
    assert await row(late[0]) == ("past_due", _at(t0), _at(t0))
    assert await invoice("invoice.payment_failed", late[0], late[1], t0 + 2 * 86400) is False
    assert await row(late[0]) == ("past_due", _at(t0), _at(t0 + 2 * 86400))
    assert await _notices(bclient, late[2]) == [("payment_failed", _day(t0 + grace))]
    await deliver(bclient, event("customer.subscription.updated", subscription(late[0], late[1], status="past_due"),
                                 created=t0 + 3 * 86400))
    assert await row(late[0]) == ("past_due", _at(t0), _at(t0 + 3 * 86400))
    await deliver(bclient, event("customer.subscription.updated", subscription(late[0], late[1]),
                                 created=t0 + 4 * 86400))
    assert await row(late[0]) == ("active", None, _at(t0 + 4 * 86400))

    for status in ("unpaid", "incomplete"):
        sub_id, customer, _ = await subscribed(status)
        assert await invoice("invoice.paid", sub_id, customer, t0 + 86400) is False
        assert await row(sub_id) == ("active", None, _at(t0 + 86400)), status
    paying = await subscribed("active")                      # paid while active: nothing to change
    assert await invoice("invoice.paid", paying[0], paying[1], t0 + 86400) is False
    assert await row(paying[0]) == ("active", None, _at(t0))
    ended = await subscribed("canceled")
    for kind in ("invoice.paid", "invoice.payment_failed"):
        assert await invoice(kind, ended[0], ended[1], t0 + 86400) is True
    assert await row(ended[0]) == ("canceled", None, _at(t0))
    for address in (lone_address, paying[2], ended[2]):
        assert [n for n in await _notices(bclient, address) if n[0] == "payment_failed"] == []


async def test_checkout_completed_records_what_was_bought_and_never_overwrites(bclient, db):  # noqa: F811
    """billing.webhooks._checkout_completed: the row a paid, free or unpaid checkout stands for
    (plan, seats, status), the mapping of an organization's checkout, and a subscription already
    mirrored left alone (mutants of each check survived)."""
    def checkout(customer: str | None, sub_id: str, **fields) -> bytes:
        obj = {"id": f"cs_{uuid.uuid4().hex[:10]}", "object": "checkout.session", "mode": "subscription",
               "subscription": sub_id, **fields}
        if customer is not None:
            obj["customer"] = customer
        return event("checkout.session.completed", obj)

    async def row(sub_id: str) -> tuple | None:
        r = await db.fetchrow("""SELECT plan, price_id, status, quantity, current_period_end, cancel_at_period_end,
                                        past_due_since FROM subscriptions WHERE subscription_id = $1""", sub_id)
        return tuple(r) if r else None

    nobody = f"sub_{uuid.uuid4().hex[:12]}"
    assert (await deliver(bclient, checkout(None, nobody, payment_status="paid")))[1]["ignored"] is True
    assert await row(nobody) is None

    bought = {
        "free team, 7 seats": ({"payment_status": "no_payment_required", "metadata": {"plan": "team", "seats": "7"}},
                               ("team", "price_team_seat", "active", 7, None, False, None)),
        "unpaid, seats a number": ({"payment_status": "unpaid", "metadata": {"plan": "pro", "seats": 5}},
                                   ("pro", "price_pro_monthly", "incomplete", 1, None, False, None)),
        "nine digits of seats": ({"payment_status": "paid", "metadata": {"plan": "team", "seats": "123456789"}},
                                 ("team", "price_team_seat", "active", 123456789, None, False, None)),
        "ten digits of seats": ({"payment_status": "paid", "metadata": {"plan": "team", "seats": "1234567890"}},
                                ("team", "price_team_seat", "active", 1, None, False, None)),
        "no metadata": ({"payment_status": "paid"}, (None, "", "active", 1, None, False, None)),
    }
    got = {}
    for name, (fields, _) in bought.items():
        customer, sub_id = f"cus_{uuid.uuid4().hex[:10]}", f"sub_{uuid.uuid4().hex[:12]}"
        status, body = await deliver(bclient, checkout(customer, sub_id, **fields))   # no client_reference_id
        assert (status, body["ignored"]) == (200, False), (name, body)
        got[name] = await row(sub_id)
        assert await db.fetchval("SELECT count(*) FROM billing_customers WHERE customer_id = $1", customer) == 0
    assert got == {name: expected for name, (_, expected) in bought.items()}

    org = await db.fetchval("INSERT INTO organizations (name) VALUES ('Checkout Org') RETURNING id")
    for reference, mapped in ((f"o:{org}", org), ("a:" + "9" * 19, None)):
        customer = f"cus_{uuid.uuid4().hex[:10]}"
        status, _ = await deliver(bclient, checkout(customer, f"sub_{uuid.uuid4().hex[:12]}",
                                                    client_reference_id=reference, payment_status="paid"))
        assert status == 200, reference
        assert await db.fetchval("SELECT org_id FROM billing_customers WHERE customer_id = $1", customer) == mapped

    # The subscription's own events came first: the checkout does not overwrite them.
    customer, sub_id = f"cus_{uuid.uuid4().hex[:10]}", f"sub_{uuid.uuid4().hex[:12]}"
    period = int(time.time()) + 86400
    await deliver(bclient, event("customer.subscription.created", subscription(
        sub_id, customer, status="past_due", quantity=3, period_end=period, cancel_at_period_end=True)))
    before = await row(sub_id)
    assert before[:6] == ("pro", "price_pro_monthly", "past_due", 3, _at(period), True)
    status, body = await deliver(bclient, checkout(customer, sub_id, payment_status="paid",
                                                   metadata={"plan": "team", "seats": "9"}))
    assert (status, body["ignored"]) == (200, False)
    assert await row(sub_id) == before


async def test_nesting_through_lists_is_bounded_like_objects(db):
    """billing.webhooks._walk_text: a list counts one level like an object (its `depth + 1` moved
    survived: only objects were nested deeply)."""
    def nested(levels: int) -> dict:
        inner: object = "leaf"
        for _ in range(levels):
            inner = [inner]
        return {"id": f"evt_{uuid.uuid4().hex[:16]}", "type": "customer.updated", "created": 1_800_000_000,
                "data": {"object": {"id": "cus_k8", "deep": inner}}}

    catalog = Catalog({}, {})
    assert (await apply(db, nested(32 - 3), catalog, grace_seconds=1.0)).ignored
    with pytest.raises(InvalidEvent):
        await apply(db, nested(32 - 3 + 1), catalog, grace_seconds=1.0)


async def test_token_and_invitation_listings_key_by_key_and_their_retention(client, db, room_factory):
    """auth.tokens: GET /api/tokens and a room's invitations compared whole (tests read a few
    keys), every invitation status (open, accepted, revoked, expired), and the retention count."""
    csrf, account = await sign_in(client)
    room = await room_factory(owner_id=account["id"])
    resp = await client.post("/api/tokens", json={"room": room.slug, "role": "moderator", "ttl": "1h", "label": "Bot"},
                             headers={"X-CSRF-Token": csrf})
    assert resp.status == 201, await resp.text()
    minted = await resp.json()

    async def times(token_id: int) -> dict:
        row = await db.fetchrow("SELECT created_at, expires_at, used_at, revoked_at FROM api_tokens WHERE id = $1",
                                token_id)
        return {k: (v.isoformat() if v is not None else None) for k, v in row.items()}

    made = await times(minted["id"])
    listed = {"id": minted["id"], "room": room.slug, "role": "moderator", "purpose": "access", "label": "Bot",
              "created_at": made["created_at"], "expires_at": made["expires_at"], "last_used_at": None,
              "revoked_at": None, "active": True}
    assert minted == {**listed, "token": minted["token"]}
    assert re.fullmatch(r"ods_[A-Za-z0-9_-]{43}", minted["token"])   # 32 random bytes, as documented
    assert (await (await client.get("/api/tokens")).json()) == {"tokens": [listed]}
    # The shortest lifetime the API accepts (any positive ttl) mints, rather than failing in mint.
    resp = await client.post("/api/tokens", json={"room": room.slug, "role": "viewer", "ttl": 1},
                             headers={"X-CSRF-Token": csrf})
    assert resp.status == 201, await resp.text()
    short = await resp.json()
    # The person's data export lists them (tokens.export returning nothing survived: no test read it).
    exported = (await (await client.get("/api/me/export")).json())["api_tokens"]
    assert [(t["id"], t["room"], t["role"], t["purpose"], t["label"], t["revoked_at"]) for t in exported] == [
        (minted["id"], room.slug, "moderator", "access", "Bot", None),
        (short["id"], room.slug, "viewer", "access", "", None)]

    host = {"Authorization": f"Bearer {(await tokens.mint(db, room_id=room.id, role='host', ttl_seconds=600))[0]}"}
    invited = {}
    for label in ("open", "accepted", "revoked", "expired"):
        resp = await client.post(f"/api/rooms/{room.slug}/invitations", json={"label": label}, headers=host)
        assert resp.status == 201
        invited[label] = await resp.json()
    resp = await client.post("/api/invitations/accept", json={"invitation": invited["accepted"]["invitation"],
                                                               "name": "Grace"}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 201, await resp.text()
    cohost = (await resp.json())["subject"]
    resp = await client.delete(f"/api/rooms/{room.slug}/invitations/{invited['revoked']['id']}", headers=host)
    assert resp.status == 204
    await db.execute("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1",
                     invited["expired"]["id"])
    cohosts = {"accepted": {"subject": cohost, "name": "Grace", "active": True}}
    expected = [{"id": invited[label]["id"], "label": label, "status": label, **await times(invited[label]["id"]),
                 "cohost": cohosts.get(label)} for label in ("expired", "revoked", "accepted", "open")]
    resp = await client.get(f"/api/rooms/{room.slug}/invitations", headers=host)
    assert (await resp.json()) == {"invitations": expected}

    # Retention: a token expired or revoked over a week ago goes; one expired six days ago stays.
    aged = {}
    for name, change in (("expired", "expires_at = now() - interval '8 days'"),
                         ("revoked", "revoked_at = now() - interval '8 days'"),
                         ("recent", "expires_at = now() - interval '6 days'")):
        _, aged[name] = await tokens.mint(db, room_id=room.id, role="viewer", ttl_seconds=60)
        await db.execute(f"UPDATE api_tokens SET {change} WHERE id = $1", aged[name])
    assert await tokens.expire(db) == 2
    assert [r["id"] for r in await db.fetch("SELECT id FROM api_tokens WHERE id = ANY($1::bigint[])",
                                            list(aged.values()))] == [aged["recent"]]
