"""Every real entry point asks the gate: a signed-in person without the plan is refused at each,
and let in once Stripe says they paid."""

from __future__ import annotations

import time
import uuid

import orjson

from odsmedia.app import make_app
from test_auth import sign_in
from test_billing import billing_env, deliver, event, stripe_api, subscription  # noqa: F401 (fixtures)


async def outcome(resp) -> tuple[int, str | None]:
    """(status, machine-readable reason); None for a success body that carries none."""
    if resp.content_type == "application/json":
        return resp.status, (await resp.json()).get("error")
    return resp.status, None


async def entry_statuses(client, slug: str, episode_id: int, csrf: str, viewer_token: str) -> dict[str, object]:
    got: dict[str, object] = {}
    got["participants"] = await outcome(await client.get(f"/api/rooms/{slug}/participants"))
    got["episode list"] = await outcome(await client.get(f"/rooms/{slug}/episodes",
                                                         headers={"Accept": "application/json"}))
    got["playlist"] = await outcome(await client.get(f"/episodes/{episode_id}/index.m3u8"))
    got["segment"] = await outcome(await client.get(f"/episodes/{episode_id}/00000-0.m4s"))
    got["whep"] = await outcome(await client.post(f"/rooms/{slug}/whep", data="v=0\r\n",
                                                  headers={"Content-Type": "application/sdp", "X-CSRF-Token": csrf}))
    got["whip (viewer token)"] = await outcome(await client.post(
        f"/rooms/{slug}/whip", data="v=0\r\n",
        headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {viewer_token}"}))
    async with client.ws_connect(f"/rooms/{slug}/ws") as ws:
        await ws.send_str(orjson.dumps({"type": "join", "ref": 1}).decode())
        reply = orjson.loads((await ws.receive(timeout=10)).data)
        got["signaling join"] = (reply.get("status"), reply.get("code")) if reply["type"] == "error" else reply["type"]
    async with client.ws_connect(f"/rooms/{slug}/chat") as ws:
        await ws.send_str(orjson.dumps({"type": "join"}).decode())
        reply = orjson.loads((await ws.receive(timeout=10)).data)
        got["chat join"] = reply.get("error") or reply["type"]
    return got


async def test_each_entry_point_refuses_then_admits(aiohttp_client, billing_env, room_factory, token_factory, db):  # noqa: F811
    client = await aiohttp_client(make_app(billing_env()))
    csrf, account = await sign_in(client)
    room = await room_factory("plans", plans=("pro",))
    episode_id = await db.fetchval(
        "INSERT INTO episodes (room_id, status, storage_key) VALUES ($1, 'ready', $2) RETURNING id",
        room.id, f"test/{uuid.uuid4().hex}")
    viewer_token = await token_factory(room, role="viewer", account_id=account["id"])

    refused = await entry_statuses(client, room.slug, episode_id, csrf, viewer_token)
    plan = (402, "plan_required")
    assert refused == {
        "participants": plan, "episode list": plan, "playlist": plan, "segment": plan, "whep": plan,
        "whip (viewer token)": (403, "not_a_publisher"), "signaling join": plan, "chat join": "plan_required",
    }

    customer = f"cus_{uuid.uuid4().hex[:10]}"
    await db.execute("INSERT INTO billing_customers (customer_id, account_id) VALUES ($1, $2)",
                     customer, account["id"])
    status, _ = await deliver(client, event("customer.subscription.created",
                                            subscription(f"sub_{uuid.uuid4().hex[:12]}", customer),
                                            created=time.time()))
    assert status == 200
    admitted = await entry_statuses(client, room.slug, episode_id, csrf, viewer_token)
    # Past the gate each endpoint does its own work, and says exactly why it has
    # nothing to give: the episode row has no files, nothing is live.
    assert admitted == {
        "participants": (200, None), "episode list": (200, None),
        "playlist": (404, "playlist_not_ready"), "segment": (404, "segment_not_found"),
        "whep": (409, "nothing_published"), "whip (viewer token)": (403, "not_a_publisher"),
        "signaling join": "joined", "chat join": "welcome",
    }


async def test_participant_is_removed_when_access_ends(aiohttp_client, billing_env, room_factory, db):  # noqa: F811
    client = await aiohttp_client(make_app(billing_env()))
    _, account = await sign_in(client)
    room = await room_factory("plans", plans=("pro",))
    customer = f"cus_{uuid.uuid4().hex[:10]}"
    await db.execute("INSERT INTO billing_customers (customer_id, account_id) VALUES ($1, $2)",
                     customer, account["id"])
    sub_id = f"sub_{uuid.uuid4().hex[:12]}"
    t = time.time()
    await deliver(client, event("customer.subscription.created", subscription(sub_id, customer), created=t - 5))
    async with client.ws_connect(f"/rooms/{room.slug}/ws") as ws:
        await ws.send_str(orjson.dumps({"type": "join", "ref": 1}).decode())
        assert orjson.loads((await ws.receive(timeout=5)).data)["type"] == "joined"
        # Canceled immediately (the period ended already): the SFU must drop this socket.
        status, _ = await deliver(client, event("customer.subscription.deleted", subscription(
            sub_id, customer, status="canceled", period_end=t - 1), created=t))
        assert status == 200
        seen = []
        while (msg := await ws.receive(timeout=15)).type.name not in ("CLOSE", "CLOSED", "CLOSING"):
            seen.append(orjson.loads(msg.data))
        kicked = [m for m in seen if m["type"] == "kicked"]
        assert kicked == [{"type": "kicked", "reason": "entitlement_ended", "banned": False}], seen
        # The code of the server's close frame (ws.close_code is the client's own view: 1006 when
        # its close reply meets a connection the server has already closed).
        assert (msg.type.name, msg.data) == ("CLOSE", 4001)


async def test_a_lapsed_subscription_is_refused_at_the_signaling_join_with_its_reason(
        aiohttp_client, billing_env, room_factory, db):  # noqa: F811
    """Each way a subscription stops paying has its own 402 reason on a real join; the socket then closes."""
    client = await aiohttp_client(make_app(billing_env()))
    room = await room_factory("plans", plans=("pro",))
    day, now = 86400, time.time()
    lapses = {
        # Payment failed 4 days ago: the 3-day grace is over.
        "payment_past_due": [("customer.subscription.created", {}, now - 10 * day),
                             ("customer.subscription.updated", {"status": "past_due"}, now - 4 * day)],
        # Canceled, and the paid period is over.
        "subscription_ended": [("customer.subscription.deleted", {"status": "canceled", "period_end": now - day},
                                now - day)],
        # Never paid.
        "subscription_inactive": [("customer.subscription.created", {"status": "unpaid"}, now - day)],
    }
    for reason, events in lapses.items():
        _, account = await sign_in(client)
        customer = f"cus_{uuid.uuid4().hex[:10]}"
        await db.execute("INSERT INTO billing_customers (customer_id, account_id) VALUES ($1, $2)",
                         customer, account["id"])
        sub_id = f"sub_{uuid.uuid4().hex[:12]}"
        for kind, fields, created in events:
            assert (await deliver(client, event(kind, subscription(sub_id, customer, **fields), created=created)))[0] \
                == 200
        async with client.ws_connect(f"/rooms/{room.slug}/ws") as ws:
            await ws.send_str(orjson.dumps({"type": "join", "ref": 1}).decode())
            reply = orjson.loads((await ws.receive(timeout=10)).data)
            assert (reply["type"], reply["status"], reply["code"], reply["plans"]) == ("error", 402, reason, ["pro"])
            closing = await ws.receive(timeout=10)
            assert (closing.type.name, closing.data) == ("CLOSE", 1000)   # a refused join ends the socket
