"""Stripe customers mapped to accounts and organizations (``billing_customers``).

The owner of that table: checkout maps a new customer here, a completed
checkout repairs a lost mapping here, and the privacy export and deletion
ask here what an account's own customers and subscriptions are.  The
subscription rows themselves are written only by ``webhooks`` (the mirror).
"""

from __future__ import annotations

import asyncpg

Db = asyncpg.Pool | asyncpg.Connection


async def customer_for(db: Db, *, account_id: int | None = None, org_id: int | None = None) -> str | None:
    if org_id is None:
        return await db.fetchval("SELECT customer_id FROM billing_customers WHERE account_id = $1", account_id)
    return await db.fetchval("SELECT customer_id FROM billing_customers WHERE org_id = $1", org_id)


async def link(db: Db, customer: str, *, account_id: int | None = None, org_id: int | None = None) -> None:
    """Map a customer to its owner; two checkouts racing: the first mapping wins."""
    column = "org_id" if org_id is not None else "account_id"
    await db.execute(
        f"INSERT INTO billing_customers (customer_id, {column}) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        customer, org_id if org_id is not None else account_id,
    )


async def link_reference(conn: asyncpg.Connection, customer: str, kind: str, owner_id: int) -> None:
    """Map a customer to ``a`` (account) or ``o`` (organization) ``owner_id``, skipped when
    that owner is gone (deleted since the checkout began) rather than failing."""
    column, table = ("account_id", "accounts") if kind == "a" else ("org_id", "organizations")
    await conn.execute(
        f"""INSERT INTO billing_customers (customer_id, {column})
            SELECT $1, id FROM {table} WHERE id = $2
            ON CONFLICT DO NOTHING""",
        customer, owner_id,
    )


async def subscribed(db: Db, account_id: int, plan: str) -> bool:
    """The account itself holds ``plan``, active or trialing, not set to cancel."""
    return bool(await db.fetchval(
        """SELECT 1 FROM billing_customers c JOIN subscriptions s ON s.customer_id = c.customer_id
           WHERE c.account_id = $1 AND s.plan = $2 AND s.status IN ('active', 'trialing')
             AND NOT s.cancel_at_period_end""",
        account_id, plan))


async def latest_subscription(db: Db, account_id: int) -> asyncpg.Record | None:
    """The account's own most recently changed subscription (plan, status, quantity, period end)."""
    return await db.fetchrow(
        """SELECT s.plan, s.status, s.quantity, s.current_period_end, s.cancel_at_period_end
           FROM billing_customers c JOIN subscriptions s ON s.customer_id = c.customer_id
           WHERE c.account_id = $1 ORDER BY s.state_at DESC LIMIT 1""",
        account_id)


async def running(db: Db, account_id: int, statuses: tuple[str, ...]) -> int:
    """The account's own subscriptions in one of ``statuses`` that are not set to cancel."""
    return await db.fetchval(
        "SELECT count(*) FROM subscriptions s JOIN billing_customers c ON c.customer_id = s.customer_id "
        "WHERE c.account_id = $1 AND s.status = ANY($2::text[]) AND NOT s.cancel_at_period_end",
        account_id, list(statuses))


async def export(db: Db, account_id: int) -> dict[str, list[dict]]:
    return {
        "customers": [dict(r) for r in await db.fetch(
            "SELECT customer_id, created_at FROM billing_customers WHERE account_id = $1", account_id)],
        "subscriptions": [dict(r) for r in await db.fetch(
            "SELECT s.subscription_id, s.plan, s.status, s.quantity, s.current_period_end, "
            "s.cancel_at_period_end FROM subscriptions s JOIN billing_customers c "
            "ON c.customer_id = s.customer_id WHERE c.account_id = $1", account_id)],
    }
