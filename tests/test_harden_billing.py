"""Stripe webhooks with odd but validly signed fields, and same-second ordering (issue 11, item 7)."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from odsmedia.auth.service import AUTH
from test_auth import mails_to, sign_in
from test_billing import bclient, billing_env, deliver, event, sign, stripe_api, subscription  # noqa: F401


async def _counts(db) -> tuple[int, int, int]:
    return (await db.fetchval("SELECT count(*) FROM stripe_events"),
            await db.fetchval("SELECT count(*) FROM subscriptions"),
            await db.fetchval("SELECT count(*) FROM billing_customers"))


def _raw(body: dict) -> bytes:
    return orjson.dumps(body)


def _odd_events() -> list[tuple[str, bytes]]:
    sub = subscription("sub_odd", "cus_odd")
    now = int(time.time())

    def ev(obj: dict, **top) -> dict:
        body = {"id": f"evt_{uuid.uuid4().hex[:16]}", "object": "event", "type": "customer.subscription.updated",
                "created": now, "data": {"object": obj}}
        body.update(top)
        return body

    return [
        ("created 1e20", _raw(ev(sub, created=1e20))),
        ("created negative", _raw(ev(sub, created=-5))),
        ("period end 1e20", _raw(ev({**sub, "current_period_end": 1e20}))),
        ("quantity 2^40", _raw(ev({**sub, "items": {"data": [{"quantity": 2**40, "price": {"id": "price_pro_monthly"}}]}}))),
        ("items a string", _raw(ev({**sub, "items": "nope"}))),
        ("item a string", _raw(ev({**sub, "items": {"data": ["si_1"]}}))),
        ("customer a number", _raw(ev({**sub, "customer": 17}))),
        ("status an object", _raw(ev({**sub, "status": {"x": 1}}))),
        ("data a string", _raw(ev(sub, data="obj"))),
        ("NUL in the event id", _raw(ev(sub, id="evt_\x00nul"))),
        ("NUL in the status", _raw(ev({**sub, "status": "act\x00ive"}))),
        ("integer client_reference_id", _raw(ev({"id": "cs_1", "object": "checkout.session", "mode": "subscription",
                                                "customer": "cus_odd", "client_reference_id": 12,
                                                "subscription": "sub_odd2"}, type="checkout.session.completed"))),
        ("metadata a string", _raw(ev({"id": "cs_2", "object": "checkout.session", "mode": "subscription",
                                      "customer": "cus_odd", "subscription": "sub_odd3", "metadata": "plan=pro"},
                                     type="checkout.session.completed"))),
        ("invoice parent a list", _raw(ev({"id": "in_1", "object": "invoice", "parent": []},
                                          type="invoice.paid"))),
    ]


@pytest.mark.parametrize("name", [name for name, _ in _odd_events()])
async def test_odd_signed_events_are_invalid_payload_and_write_nothing(bclient, db, name):
    payload = dict(_odd_events())[name]
    before = await _counts(db)
    status, body = await deliver(bclient, payload)
    assert (status, body["error"]) == (400, "invalid_payload"), (name, body)
    assert await _counts(db) == before


async def test_same_second_unpaid_does_not_override_active(bclient, db):
    _, account = await sign_in(bclient)
    customer = f"cus_{uuid.uuid4().hex[:10]}"
    await db.execute("INSERT INTO billing_customers (customer_id, account_id) VALUES ($1, $2)", customer, account["id"])
    sub_id = f"sub_{uuid.uuid4().hex[:12]}"
    t = time.time() - 50
    period = time.time() + 86400
    active = event("customer.subscription.updated", subscription(sub_id, customer, status="active", period_end=period),
                   created=t)
    unpaid = event("customer.subscription.updated", subscription(sub_id, customer, status="unpaid", period_end=period),
                   created=t)
    assert (await deliver(bclient, active))[0] == 200
    status, body = await deliver(bclient, unpaid)
    assert status == 200 and body["ignored"] is True
    assert await db.fetchval("SELECT status FROM subscriptions WHERE subscription_id = $1", sub_id) == "active"
    # The other arrival order ends in the same state.
    sub2 = f"sub_{uuid.uuid4().hex[:12]}"
    await deliver(bclient, event("customer.subscription.updated",
                                 subscription(sub2, customer, status="unpaid", period_end=period), created=t))
    status, body = await deliver(bclient, event("customer.subscription.updated",
                                                subscription(sub2, customer, status="active", period_end=period),
                                                created=t))
    assert body["ignored"] is False
    assert await db.fetchval("SELECT status FROM subscriptions WHERE subscription_id = $1", sub2) == "active"
    # A later billing period wins a tie whatever its status.
    await deliver(bclient, event("customer.subscription.updated",
                                 subscription(sub_id, customer, status="past_due", period_end=period + 30 * 86400),
                                 created=t))
    assert await db.fetchval("SELECT status FROM subscriptions WHERE subscription_id = $1", sub_id) == "past_due"


async def test_a_cancellation_in_the_same_second_as_an_update_is_not_lost(bclient, db):
    """Found in the mutation run (docs/testing.md): a `customer.subscription.deleted` in the same
    second and period as an `active` update ranked below it and was ignored, leaving the
    subscription active for good and its owner unmailed.  Canceled is terminal: it wins the tie."""
    _, account = await sign_in(bclient)
    customer = f"cus_{uuid.uuid4().hex[:10]}"
    await db.execute("INSERT INTO billing_customers (customer_id, account_id) VALUES ($1, $2)", customer, account["id"])
    t, period = time.time() - 50, time.time() + 86400
    for first, second in (("active", "canceled"), ("canceled", "active")):   # either arrival order
        sub_id = f"sub_{uuid.uuid4().hex[:12]}"
        for status in (first, second):
            kind = "customer.subscription.deleted" if status == "canceled" else "customer.subscription.updated"
            code, body = await deliver(bclient, event(kind, subscription(sub_id, customer, status=status,
                                                                         period_end=period), created=t))
            assert (code, body["ignored"]) == (200, status == "active" and first == "canceled"), (first, status)
        assert await db.fetchval("SELECT status FROM subscriptions WHERE subscription_id = $1", sub_id) == "canceled"
    await bclient.server.app[AUTH].drain()
    assert [m["X-ODS-Template"] for m in mails_to(bclient.server.app[AUTH].config, account["email"])
            if m["X-ODS-Template"] != "magic_link"] == ["subscription_canceled"] * 2
