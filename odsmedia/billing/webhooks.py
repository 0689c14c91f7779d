"""Applying Stripe webhook events to the mirror in Postgres.

Each event is applied in one transaction together with its id in
``stripe_events``, so a replay (same id) changes nothing.  Events arrive in
any order: a subscription row remembers the ``created`` time of the newest
event applied to it (``state_at``) and older events are ignored; ``canceled``
is terminal (Stripe never revives a canceled subscription).  Per-subscription
advisory locks serialize concurrent deliveries for the same subscription.

Two events for one subscription with the same ``created`` second are ordered
by Stripe's own state: ``canceled`` comes last (nothing follows it), then
the later billing period wins, and within one period
the state further along the paying side of Stripe's lifecycle (active or
trialing over past_due over unpaid/paused/incomplete).  Stripe sends a
payment's ``active`` in the same second as the failure state it replaces,
never the other way round (a failure comes after days of retries).

Every field read is checked for its type and range first (``InvalidEvent``,
a ``ValueError``): a signed event with an odd field is refused whole and
writes nothing, instead of failing halfway into a 500.

``apply`` returns what changed (``Outcome``): whose entitlements to drop from
caches and which notices to mail; the caller does both after commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import asyncpg

from . import customers
from .plans import Catalog

HANDLED = (
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
)


@dataclass
class Notice:
    template: str            # payment_failed | subscription_canceled
    customer_id: str
    plan: str | None
    values: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    duplicate: bool = False
    ignored: bool = False
    customers: set[str] = field(default_factory=set)   # customers whose entitlements changed
    notices: list[Notice] = field(default_factory=list)


@dataclass(frozen=True)
class SubscriptionState:
    id: str
    customer: str
    price: str
    status: str
    quantity: int
    current_period_end: datetime | None
    cancel_at_period_end: bool


class InvalidEvent(ValueError):
    """A verified event with a field of the wrong type or out of range."""


# Stripe ids and codes are short ASCII; anything longer or with NUL is not Stripe's.
MAX_TEXT = 255
# Timestamps: seconds since the epoch up to the year 9999 (Postgres and datetime both hold it).
MAX_EPOCH = 253402300799
MAX_QUANTITY = 2**31 - 1

# Within one billing period, how far along the paying side of Stripe's lifecycle a status is
# (ties of `created` are ordered by it; see the module docstring).
STATUS_RANK = {"active": 3, "trialing": 3, "past_due": 2, "unpaid": 1, "paused": 1, "incomplete": 1,
               "incomplete_expired": 0}


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT or "\x00" in value:
        raise InvalidEvent(f"{name} must be a string of at most {MAX_TEXT} characters without NUL")
    return value


def _obj(value: Any, name: str) -> dict[str, Any]:
    """An optional nested object ({} when absent)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent(f"{name} must be an object")
    return value


def _id(value: Any, name: str = "id") -> str | None:
    """A Stripe reference that may be expanded into an object."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("id")
        if value is None:
            return None
    return _text(value, name) or None


def _ts(value: Any, name: str = "timestamp") -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_EPOCH:
        raise InvalidEvent(f"{name} must be seconds since the epoch")
    return datetime.fromtimestamp(value, timezone.utc)


def _quantity(value: Any) -> int:
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUANTITY:
        raise InvalidEvent(f"quantity must be an integer from 0 to {MAX_QUANTITY}")
    return value


def parse_subscription(obj: dict[str, Any]) -> SubscriptionState:
    items = _obj(obj.get("items"), "items").get("data") or []
    if not isinstance(items, list):
        raise InvalidEvent("items.data must be a list")
    item = _obj(items[0], "items.data[0]") if items else {}
    price = _id(item.get("price"), "price") or _id(obj.get("plan"), "plan") or ""
    quantity = _quantity(item.get("quantity", obj.get("quantity")))
    # Newer API versions moved the period onto the items.
    period_end = obj.get("current_period_end") or item.get("current_period_end")
    sub_id, customer = _id(obj.get("id")), _id(obj.get("customer"), "customer")
    status = obj.get("status")
    if not sub_id or not customer or status is None:
        raise InvalidEvent("subscription object without id, customer or status")
    return SubscriptionState(
        id=sub_id,
        customer=customer,
        price=price,
        status=_text(status, "status"),
        quantity=quantity,
        current_period_end=_ts(period_end, "current_period_end"),
        cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
    )


def _invoice_subscription(obj: dict[str, Any]) -> str | None:
    found = _id(obj.get("subscription"), "subscription")
    if found:
        return found
    parent = _obj(obj.get("parent"), "parent")
    return _id(_obj(parent.get("subscription_details"), "parent.subscription_details").get("subscription"),
               "subscription")


def _walk_text(value: Any, depth: int = 0) -> None:
    """No NUL anywhere (Postgres text cannot hold it), no absurd nesting."""
    if depth > 32:
        raise InvalidEvent("nested too deeply")
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidEvent("NUL in a string")
    elif isinstance(value, dict):
        for key, inner in value.items():
            _walk_text(key, depth + 1)
            _walk_text(inner, depth + 1)
    elif isinstance(value, list):
        for inner in value:
            _walk_text(inner, depth + 1)


async def _lock(conn: asyncpg.Connection, subscription_id: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", subscription_id)


async def _upsert(conn: asyncpg.Connection, state: SubscriptionState, plan: str | None, at: datetime,
                  past_due_since: datetime | None) -> None:
    await conn.execute(
        """INSERT INTO subscriptions (subscription_id, customer_id, plan, price_id, status, quantity,
                                      current_period_end, cancel_at_period_end, past_due_since, state_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
           ON CONFLICT (subscription_id) DO UPDATE SET
               customer_id = EXCLUDED.customer_id, plan = EXCLUDED.plan, price_id = EXCLUDED.price_id,
               status = EXCLUDED.status, quantity = EXCLUDED.quantity,
               current_period_end = EXCLUDED.current_period_end,
               cancel_at_period_end = EXCLUDED.cancel_at_period_end,
               past_due_since = EXCLUDED.past_due_since, state_at = EXCLUDED.state_at, updated_at = now()""",
        state.id, state.customer, plan, state.price, state.status, state.quantity,
        state.current_period_end, state.cancel_at_period_end, past_due_since, at,
    )


def _stale(old: asyncpg.Record | None, at: datetime, new: SubscriptionState) -> bool:
    if old is None:
        return False
    if old["status"] == "canceled" and new.status != "canceled":
        return True
    if old["state_at"] != at:
        return old["state_at"] > at
    if new.status == "canceled":
        # Terminal: whatever else Stripe sent in that second came before it.
        return False
    # Same second: Stripe's own state orders them (module docstring).
    never = datetime.min.replace(tzinfo=timezone.utc)
    return (new.current_period_end or never, STATUS_RANK.get(new.status, 0)) < \
        (old["current_period_end"] or never, STATUS_RANK.get(old["status"], 0))


async def _subscription_event(conn: asyncpg.Connection, obj: dict, at: datetime, catalog: Catalog,
                              out: Outcome) -> None:
    state = parse_subscription(obj)
    await _lock(conn, state.id)
    old = await conn.fetchrow("SELECT * FROM subscriptions WHERE subscription_id = $1", state.id)
    if _stale(old, at, state):
        out.ignored = True
        return
    plan = catalog.by_price[state.price].code if state.price in catalog.by_price else None
    past_due_since = None
    if state.status == "past_due":
        past_due_since = (old["past_due_since"] if old is not None and old["past_due_since"] else at)
    await _upsert(conn, state, plan, at, past_due_since)
    out.customers.add(state.customer)
    ends = state.current_period_end.date().isoformat() if state.current_period_end else "now"
    was_canceling = old is not None and (old["cancel_at_period_end"] or old["status"] == "canceled")
    if (state.status == "canceled" or state.cancel_at_period_end) and not was_canceling:
        out.notices.append(Notice("subscription_canceled", state.customer, plan, {"ends_at": ends}))


async def _checkout_completed(conn: asyncpg.Connection, obj: dict, at: datetime, catalog: Catalog,
                              out: Outcome) -> None:
    if obj.get("mode") != "subscription":
        out.ignored = True
        return
    customer = _id(obj.get("customer"), "customer")
    if not customer:
        out.ignored = True
        return
    # The customer was mapped when the checkout started; this only repairs a lost mapping.
    reference = obj.get("client_reference_id")
    reference = _text(reference, "client_reference_id") if reference is not None else ""
    kind, _, raw_id = reference.partition(":")
    if raw_id.isascii() and raw_id.isdigit() and kind in ("a", "o") and len(raw_id) < 19:
        # An owner deleted since the checkout began is skipped rather than failing the event forever.
        await customers.link_reference(conn, customer, kind, int(raw_id))
    sub_id = _id(obj.get("subscription"), "subscription")
    if sub_id:
        await _lock(conn, sub_id)
        exists = await conn.fetchval("SELECT 1 FROM subscriptions WHERE subscription_id = $1", sub_id)
        if not exists:
            # The subscription events may come later; until then the paid checkout stands for it.
            metadata = _obj(obj.get("metadata"), "metadata")
            plan = catalog.get(metadata.get("plan")) if isinstance(metadata.get("plan"), str) else None
            paid = obj.get("payment_status") in ("paid", "no_payment_required")
            seats = metadata.get("seats", "1")
            seats = seats if isinstance(seats, str) and seats.isascii() and seats.isdigit() \
                and len(seats) <= 9 else "1"
            await _upsert(conn, SubscriptionState(
                id=sub_id, customer=customer, price=plan.price if plan else "",
                status="active" if paid else "incomplete",
                quantity=int(seats) if str(seats).isdigit() else 1,
                current_period_end=None, cancel_at_period_end=False,
            ), plan.code if plan else None, at, None)
    out.customers.add(customer)


async def _invoice_event(conn: asyncpg.Connection, obj: dict, at: datetime, kind: str, out: Outcome,
                         grace_seconds: float) -> None:
    sub_id = _invoice_subscription(obj)
    if not sub_id:
        out.ignored = True
        return
    await _lock(conn, sub_id)
    old = await conn.fetchrow("SELECT * FROM subscriptions WHERE subscription_id = $1", sub_id)
    # Unknown subscription: its own events carry the status; nothing to correct here.
    # An invoice event in the same second as the subscription's own state defers to it.
    if old is None or old["status"] == "canceled" or old["state_at"] > at \
            or (old["state_at"] == at and kind == "invoice.payment_failed"):
        out.ignored = True
        return
    if kind == "invoice.paid":
        if old["status"] in ("past_due", "unpaid", "incomplete"):
            await conn.execute(
                """UPDATE subscriptions SET status = 'active', past_due_since = NULL, state_at = $2,
                          updated_at = now() WHERE subscription_id = $1""",
                sub_id, at,
            )
            out.customers.add(old["customer_id"])
        return
    since = old["past_due_since"] or at
    if old["status"] in ("active", "trialing", "past_due"):
        await conn.execute(
            """UPDATE subscriptions SET status = 'past_due', past_due_since = $3, state_at = $2,
                      updated_at = now() WHERE subscription_id = $1""",
            sub_id, at, since,
        )
        out.customers.add(old["customer_id"])
    grace_until = datetime.fromtimestamp(since.timestamp() + grace_seconds, timezone.utc)
    out.notices.append(Notice("payment_failed", old["customer_id"], old["plan"],
                              {"grace_until": grace_until.date().isoformat()}))


async def apply(db: asyncpg.Pool, event: dict[str, Any], catalog: Catalog, *, grace_seconds: float) -> Outcome:
    """Apply one verified event. Raises ValueError for a malformed event (nothing written)."""
    _walk_text(event)
    event_id, kind = event.get("id"), event.get("type")
    created = _ts(event.get("created"), "created")
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(event_id, str) or not isinstance(kind, str) or created is None or not isinstance(obj, dict):
        raise InvalidEvent("not a Stripe event (id, type, created, data.object)")
    _text(event_id, "id")
    _text(kind, "type")
    out = Outcome()
    async with db.acquire() as conn:
        async with conn.transaction():
            inserted = await conn.fetchval(
                """INSERT INTO stripe_events (event_id, type, created) VALUES ($1, $2, $3)
                   ON CONFLICT (event_id) DO NOTHING RETURNING true""",
                event_id, kind, created,
            )
            if not inserted:
                out.duplicate = True
                return out
            if kind.startswith("customer.subscription."):
                await _subscription_event(conn, obj, created, catalog, out)
            elif kind == "checkout.session.completed":
                await _checkout_completed(conn, obj, created, catalog, out)
            elif kind in ("invoice.paid", "invoice.payment_failed"):
                await _invoice_event(conn, obj, created, kind, out, grace_seconds)
            else:
                out.ignored = True
    return out


async def accounts_of_customers(db: asyncpg.Pool | asyncpg.Connection, customers: set[str]) -> list[int]:
    """Accounts whose entitlements come from these customers: the owner, or every org member."""
    if not customers:
        return []
    rows = await db.fetch(
        """SELECT c.account_id AS id FROM billing_customers c
           WHERE c.customer_id = ANY($1::text[]) AND c.account_id IS NOT NULL
           UNION
           SELECT a.id FROM billing_customers c
           JOIN org_members m ON m.org_id = c.org_id JOIN accounts a ON a.email = m.email
           WHERE c.customer_id = ANY($1::text[])""",
        list(customers),
    )
    return [r["id"] for r in rows]


async def notice_recipients(db: asyncpg.Pool | asyncpg.Connection, customer_id: str) -> list[str]:
    """Who is told about billing trouble: the account, or the org's admins."""
    rows = await db.fetch(
        """SELECT a.email FROM billing_customers c JOIN accounts a ON a.id = c.account_id
           WHERE c.customer_id = $1
           UNION
           SELECT m.email FROM billing_customers c JOIN org_members m ON m.org_id = c.org_id
           WHERE c.customer_id = $1 AND m.role = 'admin'""",
        customer_id,
    )
    return [r["email"] for r in rows]
