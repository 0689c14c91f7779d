"""Billing gate: a local stand-in for Stripe's API, real signed webhooks, entitlements at the gate."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web

from conftest import make_config, refusal
from odsmedia.app import make_app
from odsmedia.bus import Bus
from odsmedia.auth.service import AUTH
from odsmedia.billing.service import BILLING
from test_auth import admit, mails_to, new_email, sign_in

WEBHOOK_SECRET = "whsec_test_0123456789abcdef"
API_KEY = "sk_test_standin_key"
PLANS_TOML = """
[plans.pro]
price = "price_pro_monthly"
label = "Pro"
description = "Every paid room"

[plans.team]
price = "price_team_seat"
label = "Team"
seats = true
"""


@dataclass
class StripeStandIn:
    """The few Stripe endpoints we call, answering the way Stripe does (form-encoded in, JSON out)."""

    calls: list[tuple[str, str, dict]] = field(default_factory=list)   # (path, auth, form)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/customers", self.customers)
        app.router.add_post("/v1/checkout/sessions", self.checkout)
        app.router.add_post("/v1/billing_portal/sessions", self.portal)
        return app

    async def _record(self, request: web.Request) -> dict:
        form = dict(await request.post())
        self.calls.append((request.path, request.headers.get("Authorization", ""), form))
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            raise web.HTTPUnauthorized(text=orjson.dumps({"error": {"message": "Invalid API Key", "type":
                                                                    "invalid_request_error"}}).decode(),
                                       content_type="application/json")
        return form

    async def customers(self, request: web.Request) -> web.Response:
        form = await self._record(request)
        return web.json_response({"id": f"cus_{uuid.uuid4().hex[:14]}", "object": "customer",
                                  "email": form.get("email")})

    async def checkout(self, request: web.Request) -> web.Response:
        form = await self._record(request)
        sid = f"cs_test_{uuid.uuid4().hex[:16]}"
        return web.json_response({"id": sid, "object": "checkout.session", "mode": form.get("mode"),
                                  "customer": form.get("customer"), "url": f"https://checkout.stripe.test/c/{sid}"})

    async def portal(self, request: web.Request) -> web.Response:
        form = await self._record(request)
        return web.json_response({"id": "bps_1", "object": "billing_portal.session", "customer": form["customer"],
                                  "url": "https://billing.stripe.test/p/session/bps_1"})

    def last(self, path: str) -> dict:
        return [form for p, _, form in self.calls if p == path][-1]


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """Stripe's scheme: v1 = HMAC-SHA256(secret, "<t>.<payload>")."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(kind: str, obj: dict, created: float | None = None, event_id: str | None = None) -> bytes:
    return orjson.dumps({
        "id": event_id or f"evt_{uuid.uuid4().hex[:20]}", "object": "event", "type": kind,
        "created": int(time.time() if created is None else created), "livemode": False,
        "api_version": "2025-01-27", "data": {"object": obj},
    })


def subscription(sub_id: str, customer: str, *, status: str = "active", price: str = "price_pro_monthly",
                 quantity: int = 1, period_end: float | None = None, cancel_at_period_end: bool = False) -> dict:
    return {
        "id": sub_id, "object": "subscription", "customer": customer, "status": status,
        "cancel_at_period_end": cancel_at_period_end,
        "current_period_end": int(period_end if period_end is not None else time.time() + 30 * 86400),
        "items": {"object": "list", "data": [{"id": f"si_{sub_id}", "quantity": quantity,
                                              "price": {"id": price, "object": "price"}}]},
    }


async def deliver(client, payload: bytes, signature: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json",
               "Stripe-Signature": sign(payload) if signature is None else signature}
    if signature == "":
        del headers["Stripe-Signature"]
    resp = await client.post("/billing/webhook", data=payload, headers=headers)
    return resp.status, await resp.json()


@pytest.fixture
def stripe_api():
    return StripeStandIn()


@pytest.fixture
async def billing_env(aiohttp_server, stripe_api, service_urls, tmp_path):
    server = await aiohttp_server(stripe_api.app())
    plans = tmp_path / "plans.toml"
    plans.write_text(PLANS_TOML)
    prefix = f"{service_urls.prefix}{uuid.uuid4().hex[:8]}:"

    def config(**extra):
        env = dict(ODS_CONFIG=str(plans), STRIPE_SECRET_KEY=API_KEY, STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
                   ODS_STRIPE_API_BASE=str(server.make_url("")).rstrip("/"), ODS_REDIS_PREFIX=prefix,
                   ODS_BILLING_RECHECK_INTERVAL="0.2")
        env.update(extra)
        return make_config(service_urls, tmp_path / "data", **env)

    return config


@pytest.fixture
async def bclient(aiohttp_client, billing_env):
    return await aiohttp_client(make_app(billing_env()))


async def customer_of(db, account_id: int) -> str:
    return await db.fetchval("SELECT customer_id FROM billing_customers WHERE account_id = $1", account_id)


async def control_listener(client, slug: str) -> tuple[asyncio.Queue, callable]:
    bus: Bus = client.server.app[BILLING].entitlements.bus
    queue: asyncio.Queue = asyncio.Queue()
    unsubscribe = await bus.subscribe(f"room:{slug}:control", queue.put_nowait)
    return queue, unsubscribe


async def wait_for_status(client, slug: str, status: int, timeout: float = 10.0) -> dict:
    """Poll the gate until it answers `status` (the condition is time passing, there is no event)."""
    deadline = time.monotonic() + timeout
    while True:
        got, body = await admit(client, slug)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"gate still answers {got} {body}"
        await asyncio.sleep(0.1)


async def test_journey_checkout_webhook_room_opens_and_closes_at_period_end(bclient, stripe_api, room_factory, db):
    csrf, account = await sign_in(bclient)
    room = await room_factory("plans", plans=("pro",))
    status, body = await admit(bclient, room.slug)
    assert status == 402 and body["error"] == "plan_required" and body["plans"] == ["pro"]

    resp = await bclient.post("/billing/checkout", json={"plan": "pro"}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["url"].startswith("https://checkout.stripe.test/c/cs_test_")
    customer_call = stripe_api.last("/v1/customers")
    assert customer_call["email"] == account["email"]
    session = stripe_api.last("/v1/checkout/sessions")
    customer = await customer_of(db, account["id"])
    assert session["mode"] == "subscription" and session["customer"] == customer
    assert session["line_items[0][price]"] == "price_pro_monthly" and session["line_items[0][quantity]"] == "1"
    assert session["client_reference_id"] == f"a:{account['id']}"
    assert all(auth == f"Bearer {API_KEY}" for _, auth, _ in stripe_api.calls)

    # Stripe's word: checkout completed, subscription created.
    t0 = time.time()
    sub_id = f"sub_{uuid.uuid4().hex[:12]}"
    status, _ = await deliver(bclient, event("checkout.session.completed", {
        "id": "cs_1", "object": "checkout.session", "mode": "subscription", "customer": customer,
        "subscription": sub_id, "client_reference_id": f"a:{account['id']}", "payment_status": "paid",
        "metadata": {"plan": "pro"}}, created=t0))
    assert status == 200
    status, _ = await deliver(bclient, event("customer.subscription.created", subscription(sub_id, customer),
                                             created=t0 + 1))
    assert status == 200
    assert (await admit(bclient, room.slug))[0] == 200
    me = await (await bclient.get("/api/me")).json()
    assert me["billing"]["subscription"]["status"] == "active" and me["billing"]["entitled_plans"] == ["pro"]
    row = await db.fetchrow("SELECT * FROM subscriptions WHERE subscription_id = $1", sub_id)
    assert (row["plan"], row["status"], row["quantity"], row["customer_id"]) == ("pro", "active", 1, customer)

    # The person cancels in the portal: access runs to the period end, then the room closes.
    queue, unsubscribe = await control_listener(bclient, room.slug)
    try:
        # Stripe timestamps are whole seconds.  The period must outlast one webhook and one
        # admission on a loaded machine (2 s did not, once); the wait below is until it ends.
        period_end = int(time.time()) + 5
        status, _ = await deliver(bclient, event("customer.subscription.updated", subscription(
            sub_id, customer, period_end=period_end, cancel_at_period_end=True), created=t0 + 2))
        assert status == 200
        asked_at = time.time()
        assert (await admit(bclient, room.slug))[0] == 200   # still paid for
        assert asked_at < period_end, "the check above ran after the period ended: it proved nothing"
        body = await wait_for_status(bclient, room.slug, 402)
        assert time.time() >= period_end
        assert body["error"] == "subscription_ended" and body["plans"] == ["pro"]
        kick = await asyncio.wait_for(queue.get(), 10)
        assert kick == {"action": "kick", "target": account["subject"], "by": "billing",
                        "reason": "entitlement_ended", "detail": "subscription_ended"}
    finally:
        await unsubscribe()
    await bclient.server.app[AUTH].drain()
    notices = [m for m in mails_to(bclient.server.app[AUTH].config, account["email"])
               if m["X-ODS-Template"] == "subscription_canceled"]
    assert len(notices) == 1 and "Pro" in notices[0]["Subject"]
    status, _ = await deliver(bclient, event("customer.subscription.deleted", subscription(
        sub_id, customer, status="canceled", period_end=period_end), created=t0 + 3))
    assert status == 200
    assert (await admit(bclient, room.slug))[0] == 402


async def test_bad_signatures_change_nothing(bclient, db):
    before = await db.fetchval("SELECT count(*) FROM stripe_events")
    sub_id = f"sub_{uuid.uuid4().hex[:12]}"
    payload = event("customer.subscription.created", subscription(sub_id, "cus_nobody"))
    other = event("customer.subscription.created", subscription(sub_id, "cus_other"))
    cases = {
        "unsigned": "",
        "wrong secret": sign(payload, "whsec_wrong"),
        "stale": sign(payload, timestamp=int(time.time()) - 3600),
        "signed other body": sign(other),
        "garbage header": "t=abc,v1=zz",
    }
    for name, header in cases.items():
        status, body = await deliver(bclient, payload, header)
        assert status == 400 and body["error"] == "invalid_signature", name
    assert await db.fetchval("SELECT count(*) FROM stripe_events") == before
    assert await db.fetchval("SELECT count(*) FROM subscriptions WHERE subscription_id = $1", sub_id) == 0
    # Signed but not an event.
    for bad in (b"[1, 2]", b"{\"id\": \"evt_x\"}", b"not json"):
        status, body = await deliver(bclient, bad, sign(bad))
        assert status == 400 and body["error"] == "invalid_payload", bad
    assert await db.fetchval("SELECT count(*) FROM stripe_events") == before


async def test_duplicates_and_out_of_order_events(bclient, db):
    _, account = await sign_in(bclient)
    customer = f"cus_{uuid.uuid4().hex[:10]}"
    await db.execute("INSERT INTO billing_customers (customer_id, account_id) VALUES ($1, $2)", customer, account["id"])
    sub_id = f"sub_{uuid.uuid4().hex[:12]}"
    t = time.time() - 100
    # The update (newer) arrives before the creation (older).
    newer = event("customer.subscription.updated", subscription(sub_id, customer, status="active", quantity=3),
                  created=t + 10)
    older = event("customer.subscription.created", subscription(sub_id, customer, status="incomplete"),
                  created=t)
    assert (await deliver(bclient, newer))[1] == {"received": True, "duplicate": False, "ignored": False}
    assert (await deliver(bclient, older))[1]["ignored"] is True
    row = await db.fetchrow("SELECT status, quantity FROM subscriptions WHERE subscription_id = $1", sub_id)
    assert (row["status"], row["quantity"]) == ("active", 3)

    # A replayed event id is acknowledged and changes nothing, even with a different body.
    replay_id = f"evt_{uuid.uuid4().hex[:16]}"
    first = event("customer.subscription.updated", subscription(sub_id, customer, quantity=4), created=t + 20,
                  event_id=replay_id)
    assert (await deliver(bclient, first))[1]["duplicate"] is False
    again = event("customer.subscription.updated", subscription(sub_id, customer, quantity=9), created=t + 30,
                  event_id=replay_id)
    status, body = await deliver(bclient, again)
    assert status == 200 and body["duplicate"] is True
    assert await db.fetchval("SELECT quantity FROM subscriptions WHERE subscription_id = $1", sub_id) == 4

    # Canceled is final: a late "active" update from before the deletion does not revive it.
    await deliver(bclient, event("customer.subscription.deleted", subscription(
        sub_id, customer, status="canceled", period_end=time.time() - 1), created=t + 40))
    await deliver(bclient, event("customer.subscription.updated", subscription(sub_id, customer), created=t + 40))
    await deliver(bclient, event("invoice.paid", {"id": "in_1", "object": "invoice", "subscription": sub_id,
                                                  "customer": customer}, created=t + 50))
    assert await db.fetchval("SELECT status FROM subscriptions WHERE subscription_id = $1", sub_id) == "canceled"


async def test_past_due_grace_then_paid(bclient, room_factory, db):
    csrf, account = await sign_in(bclient)
    room = await room_factory("plans", plans=("pro",))
    customer = f"cus_{uuid.uuid4().hex[:10]}"
    await db.execute("INSERT INTO billing_customers (customer_id, account_id) VALUES ($1, $2)", customer, account["id"])
    sub_id = f"sub_{uuid.uuid4().hex[:12]}"
    day = 86400
    now = time.time()
    await deliver(bclient, event("customer.subscription.created", subscription(sub_id, customer),
                                 created=now - 10 * day))
    assert (await admit(bclient, room.slug))[0] == 200
    # Payment failed 1 day ago: inside the 3-day grace.
    await deliver(bclient, event("invoice.payment_failed", {
        "id": "in_f1", "object": "invoice", "customer": customer,
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": sub_id}}},
        created=now - 1 * day))
    assert await db.fetchval("SELECT status FROM subscriptions WHERE subscription_id = $1", sub_id) == "past_due"
    assert (await admit(bclient, room.slug))[0] == 200
    await bclient.server.app[AUTH].drain()
    failed = [m for m in mails_to(bclient.server.app[AUTH].config, account["email"])
              if m["X-ODS-Template"] == "payment_failed"]
    assert len(failed) == 1

    # Same subscription, but the failure had been 4 days ago: grace is over.
    sub2 = f"sub_{uuid.uuid4().hex[:12]}"
    await db.execute("DELETE FROM subscriptions WHERE subscription_id = $1", sub_id)
    await deliver(bclient, event("customer.subscription.created", subscription(sub2, customer),
                                 created=now - 10 * day))
    await deliver(bclient, event("customer.subscription.updated", subscription(sub2, customer, status="past_due"),
                                 created=now - 4 * day))
    status, body = await admit(bclient, room.slug)
    assert status == 402 and body["error"] == "payment_past_due"
    await deliver(bclient, event("invoice.paid", {"id": "in_p", "object": "invoice", "customer": customer,
                                                  "subscription": sub2}, created=now))
    assert (await admit(bclient, room.slug))[0] == 200


async def test_enterprise_seats(bclient, aiohttp_client, stripe_api, room_factory, db):
    admin_csrf, admin = await sign_in(bclient)
    h = {"X-CSRF-Token": admin_csrf}
    resp = await bclient.post("/api/orgs", json={"name": "Acme"}, headers=h)
    assert resp.status == 201
    org = await resp.json()
    assert org["seats"] == 0 and org["used"] == 1 and org["members"][0]["role"] == "admin"

    resp = await bclient.post("/billing/checkout", json={"plan": "team"}, headers=h)
    assert resp.status == 400 and (await resp.json())["error"] == "org_required"
    resp = await bclient.post("/billing/checkout", json={"plan": "team", "org_id": org["id"], "seats": 2},
                              headers=h)
    assert resp.status == 200
    assert stripe_api.last("/v1/checkout/sessions")["line_items[0][quantity]"] == "2"
    customer = await db.fetchval("SELECT customer_id FROM billing_customers WHERE org_id = $1", org["id"])
    member_email = new_email()
    # No subscription yet: no seats to give.
    resp = await bclient.post(f"/api/orgs/{org['id']}/members", json={"email": member_email}, headers=h)
    assert resp.status == 409 and (await resp.json())["error"] == "seats_exhausted"

    sub_id = f"sub_{uuid.uuid4().hex[:12]}"
    await deliver(bclient, event("customer.subscription.created",
                                 subscription(sub_id, customer, price="price_team_seat", quantity=2)))
    resp = await bclient.post(f"/api/orgs/{org['id']}/members", json={"email": member_email.upper()}, headers=h)
    assert resp.status == 201, await resp.text()
    detail = await resp.json()
    assert detail["seats"] == 2 and detail["used"] == 2
    resp = await bclient.post(f"/api/orgs/{org['id']}/members", json={"email": new_email()}, headers=h)
    body = await resp.json()
    assert resp.status == 409 and body["error"] == "seats_exhausted" and (body["seats"], body["used"]) == (2, 2)
    assert await db.fetchval("SELECT count(*) FROM org_members WHERE org_id = $1", org["id"]) == 2

    # The member signs in (a new account) and is entitled by the org's plan.
    room = await room_factory("plans", plans=("team",))
    member = await aiohttp_client(bclient.server)
    m_csrf, m_account = await sign_in(member, member_email)
    assert (await admit(member, room.slug))[0] == 200
    # Only admins manage seats.
    resp = await member.post(f"/api/orgs/{org['id']}/members", json={"email": new_email()},
                             headers={"X-CSRF-Token": m_csrf})
    assert resp.status == 403 and (await resp.json())["error"] == "not_org_admin"

    # Removing the member ends access and removes them from the room.
    queue, unsubscribe = await control_listener(bclient, room.slug)
    try:
        resp = await bclient.delete(f"/api/orgs/{org['id']}/members/{member_email}", headers=h)
        assert resp.status == 204
        status, body = await admit(member, room.slug)
        assert status == 402 and body["error"] == "plan_required"
        kick = await asyncio.wait_for(queue.get(), 10)
        assert kick["target"] == m_account["subject"] and kick["reason"] == "entitlement_ended"
    finally:
        await unsubscribe()
    resp = await bclient.delete(f"/api/orgs/{org['id']}/members/{admin['email']}", headers=h)
    assert resp.status == 409 and (await resp.json())["error"] == "last_admin"


async def test_every_entry_refuses_the_unentitled(bclient, aiohttp_client, room_factory, token_factory):
    csrf, account = await sign_in(bclient)
    room = await room_factory("plans", plans=("pro",))
    h = {"X-CSRF-Token": csrf}   # chat posting is a cookie-authenticated write
    for entry in ("join", "play", "replay", "chat"):
        status, body = await admit(bclient, room.slug, entry, headers=h)
        assert status == 402 and body["error"] == "plan_required" and body["plans"] == ["pro"], entry
    # Publishing starts with a join, which the plan refuses first.
    status, body = await admit(bclient, room.slug, "publish")
    assert (status, body["error"]) == (402, "plan_required")
    # Anonymous: sign in first.
    anon = await aiohttp_client(bclient.server)
    for entry in ("join", "play", "replay", "chat"):
        status, body = await admit(anon, room.slug, entry)
        assert status == 401 and body["error"] == "sign_in_required", entry
    # A viewer token minted by the unentitled account does not get around the plan.
    viewer = await token_factory(room, role="viewer", account_id=account["id"])
    status, body = await admit(anon, room.slug, "join", headers={"Authorization": f"Bearer {viewer}"})
    assert (status, body["error"]) == (402, "plan_required")
    # The room's host is always admitted.
    owned = await room_factory("plans", plans=("pro",), owner_id=account["id"])
    # Past the gate each entry point does its own work: nothing is live (WHEP), the
    # offer is empty (publish), the episode list is empty, the post is acked.
    expected = {"join": 200, "play": 409, "replay": 200, "chat": 200, "publish": 400}
    got = {entry: (await admit(bclient, owned.slug, entry, headers=h))[0] for entry in expected}
    assert got == expected


async def test_checkout_and_portal_refusals(bclient, aiohttp_client, billing_env, db):
    resp = await bclient.post("/billing/checkout", json={"plan": "pro"})
    assert (resp.status, (await resp.json())["error"]) == (401, "not_signed_in")
    csrf, account = await sign_in(bclient)
    h = {"X-CSRF-Token": csrf}
    assert await refusal(bclient.post("/billing/checkout", json={"plan": "pro"})) == (403, "csrf_failed")   # no CSRF token
    resp = await bclient.post("/billing/checkout", json={"plan": "gold"}, headers=h)
    assert resp.status == 400 and (await resp.json())["error"] == "unknown_plan"
    resp = await bclient.post("/billing/portal", headers=h)
    assert resp.status == 404 and (await resp.json())["error"] == "no_billing_account"
    assert (await bclient.post("/billing/checkout", json={"plan": "pro"}, headers=h)).status == 200
    resp = await bclient.post("/billing/portal", headers=h)
    assert resp.status == 200 and (await resp.json())["url"] == "https://billing.stripe.test/p/session/bps_1"
    plans = await (await bclient.get("/api/plans")).json()
    assert [p["code"] for p in plans["plans"]] == ["pro", "team"] and plans["checkout"] is True

    unconfigured = make_app(billing_env(STRIPE_SECRET_KEY="", STRIPE_WEBHOOK_SECRET=""))
    other = await aiohttp_client(unconfigured)
    o_csrf, _ = await sign_in(other)
    resp = await other.post("/billing/checkout", json={"plan": "pro"}, headers={"X-CSRF-Token": o_csrf})
    assert resp.status == 503 and (await resp.json())["error"] == "billing_unavailable"
    assert (await (await other.get("/api/plans")).json())["checkout"] is False     # and the plans page says so
    payload = event("invoice.paid", {"id": "in_x", "subscription": "sub_x"})
    assert (await deliver(other, payload))[0] == 503


async def test_webhook_invalidates_cache_on_every_node(bclient, aiohttp_client, billing_env, room_factory, db):
    node_b = make_app(billing_env())
    other = await aiohttp_client(node_b)
    address = new_email()
    _, account = await sign_in(bclient, address)
    # The same person on node B (its own session; the account is shared).
    await sign_in(other, address)
    room = await room_factory("plans", plans=("pro",))
    assert (await admit(other, room.slug))[0] == 402    # node B caches "no grants"
    customer = f"cus_{uuid.uuid4().hex[:10]}"
    await db.execute("INSERT INTO billing_customers (customer_id, account_id) VALUES ($1, $2)", customer, account["id"])
    await deliver(bclient, event("customer.subscription.created",
                                 subscription(f"sub_{uuid.uuid4().hex[:12]}", customer)))   # lands on node A
    await wait_for_status(other, room.slug, 200, timeout=5)


async def test_checkout_completed_maps_customer_and_tolerates_unknown_owner(bclient, room_factory, db):
    _, account = await sign_in(bclient)
    room = await room_factory("plans", plans=("pro",))
    customer = f"cus_{uuid.uuid4().hex[:10]}"   # a mapping lost (or never stored) on our side
    sub_id = f"sub_{uuid.uuid4().hex[:12]}"
    status, body = await deliver(bclient, event("checkout.session.completed", {
        "id": "cs_2", "object": "checkout.session", "mode": "subscription", "customer": customer,
        "subscription": sub_id, "client_reference_id": f"a:{account['id']}", "payment_status": "paid",
        "metadata": {"plan": "pro"}}))
    assert status == 200 and not body["ignored"]
    assert await db.fetchval("SELECT account_id FROM billing_customers WHERE customer_id = $1", customer) == \
        account["id"]
    # The paid checkout alone opens the room until the subscription events arrive.
    assert (await admit(bclient, room.slug))[0] == 200
    for reference in ("a:999999999999", "o:999999999999", "x:1", "a:", "garbage"):
        status, body = await deliver(bclient, event("checkout.session.completed", {
            "id": "cs_3", "object": "checkout.session", "mode": "subscription",
            "customer": f"cus_{uuid.uuid4().hex[:10]}", "client_reference_id": reference}))
        assert status == 200, reference
    status, body = await deliver(bclient, event("checkout.session.completed", {
        "id": "cs_4", "object": "checkout.session", "mode": "payment", "customer": customer}))
    assert status == 200 and body["ignored"] is True


async def test_concurrent_adds_cannot_both_take_the_last_seat(bclient, db):
    csrf, admin = await sign_in(bclient)
    h = {"X-CSRF-Token": csrf}
    org = await (await bclient.post("/api/orgs", json={"name": "Race Inc"}, headers=h)).json()
    customer = f"cus_{uuid.uuid4().hex[:10]}"
    await db.execute("INSERT INTO billing_customers (customer_id, org_id) VALUES ($1, $2)", customer, org["id"])
    await deliver(bclient, event("customer.subscription.created", subscription(
        f"sub_{uuid.uuid4().hex[:12]}", customer, price="price_team_seat", quantity=2)))
    results = await asyncio.gather(*(
        bclient.post(f"/api/orgs/{org['id']}/members", json={"email": new_email()}, headers=h) for _ in range(4)))
    assert sorted(r.status for r in results) == [201, 409, 409, 409]
    assert await db.fetchval("SELECT count(*) FROM org_members WHERE org_id = $1", org["id"]) == 2
    for bad, reason in (({"email": "nope"}, "invalid_email"), ({"email": admin["email"]}, "already_member")):
        resp = await bclient.post(f"/api/orgs/{org['id']}/members", json=bad, headers=h)
        assert (await resp.json())["error"] == reason
    assert await refusal(bclient.get("/api/orgs/999999999")) == (404, "org_not_found")
