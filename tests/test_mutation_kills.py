"""Assertions that kill mutants the mutation run (docs/testing.md) found surviving."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import pytest

from odsmedia import metrics
from odsmedia.auth import accounts
from odsmedia.billing.plans import Catalog
from odsmedia.billing.webhooks import (MAX_EPOCH, MAX_QUANTITY, MAX_TEXT, InvalidEvent, _invoice_subscription,
                                       apply, parse_subscription)
from odsmedia.chat import store as chat_store
from odsmedia.chat.items import ChatError
from odsmedia.errors import ApiError
from odsmedia.gate import Admission, Entitlement, Entry, Gate, Identity, TokenGrant
from odsmedia.rooms import directory
from odsmedia.rooms.directory import RoomRecord
from test_billing import bclient, billing_env, deliver, event, stripe_api, subscription  # noqa: F401
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
