"""Who may enter rooms sold by plan, answered from a per-node cache.

An account's *grants* map each plan to the moment its access ends (``inf``
while a subscription simply runs).  They are computed from the subscription
mirror (personal, and through organizations the account's address belongs
to) and cached per node.  Because a grant carries its own end, time-based
endings (period end after a cancellation, the past_due grace) need no
invalidation; state changes do: webhooks publish the affected accounts on
the bus channel ``billing:invalidate`` and every node drops them.  The cache
TTL only bounds how long a lost invalidation could matter.

Removal of people already inside: the checker remembers which plan rooms
each account was admitted to; a periodic re-check (and an immediate one
after an invalidation) publishes a ``kick`` on ``room:{slug}:control`` for
rooms whose access ended.  The SFU node holding the room applies it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from ..bus import Bus
from ..channels import BILLING_INVALIDATE, control_channel, kick_message
from ..gate import Entitlement
from ..rooms.directory import RoomRecord

log = logging.getLogger("odsmedia.billing")

# Admissions older than this are forgotten by the re-check (the person has long left, or rejoined).
ADMISSION_MEMORY = 12 * 3600.0


@dataclass(frozen=True)
class Grant:
    until: float          # epoch seconds; inf = no scheduled end
    lapsed_reason: str    # reason to give once `until` has passed


Grants = dict[str, Grant]

_GRANTS_SQL = """
    SELECT s.plan, s.status, s.current_period_end, s.cancel_at_period_end, s.past_due_since
    FROM subscriptions s JOIN billing_customers c ON c.customer_id = s.customer_id
    WHERE c.account_id = $1 AND s.plan IS NOT NULL
    UNION ALL
    SELECT s.plan, s.status, s.current_period_end, s.cancel_at_period_end, s.past_due_since
    FROM accounts a
    JOIN org_members m ON m.email = a.email
    JOIN billing_customers c ON c.org_id = m.org_id
    JOIN subscriptions s ON s.customer_id = c.customer_id
    WHERE a.id = $1 AND s.plan IS NOT NULL
"""


def grant_of(row: Any, grace_seconds: float) -> Grant:
    status = row["status"]
    period_end = row["current_period_end"].timestamp() if row["current_period_end"] else None
    if status in ("active", "trialing"):
        if row["cancel_at_period_end"] and period_end is not None:
            return Grant(period_end, "subscription_ended")
        return Grant(math.inf, "subscription_ended")
    if status == "past_due":
        since = row["past_due_since"].timestamp() if row["past_due_since"] else time.time()
        return Grant(since + grace_seconds, "payment_past_due")
    if status == "canceled":
        # Canceled: paid-for time runs to the end of the period.
        return Grant(period_end or 0.0, "subscription_ended")
    return Grant(0.0, "subscription_inactive")   # incomplete, unpaid, paused, ...


def merge(grants: list[tuple[str, Grant]]) -> Grants:
    best: Grants = {}
    for plan, grant in grants:
        if plan not in best or grant.until > best[plan].until:
            best[plan] = grant
    return best


def decide(grants: Grants, plans: tuple[str, ...], now: float) -> Entitlement:
    reason = "plan_required"
    for plan in plans:
        grant = grants.get(plan)
        if grant is None:
            continue
        if now < grant.until:
            return Entitlement(True)
        reason = grant.lapsed_reason
    return Entitlement(False, reason, plans)


class Entitlements:
    """The gate's entitlement checker (``app[GATE].entitlements``)."""

    def __init__(self, db: asyncpg.Pool, bus: Bus, *, grace_seconds: float, cache_ttl: float) -> None:
        self.db = db
        self.bus = bus
        self.grace_seconds = grace_seconds
        self.cache_ttl = cache_ttl
        self._cache: dict[int, tuple[float, Grants]] = {}
        # account id -> {room slug: (plans, admitted at)}
        self._admitted: dict[int, dict[str, tuple[tuple[str, ...], float]]] = {}
        self._tasks: set[asyncio.Task] = set()
        self.kicks = 0

    async def grants(self, account_id: int) -> Grants:
        cached = self._cache.get(account_id)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.cache_ttl:
            return cached[1]
        rows = await self.db.fetch(_GRANTS_SQL, account_id)
        grants = merge([(r["plan"], grant_of(r, self.grace_seconds)) for r in rows])
        self._cache[account_id] = (now, grants)
        return grants

    async def __call__(self, account_id: int, room: RoomRecord) -> Entitlement:
        decision = decide(await self.grants(account_id), room.access_plans, time.time())
        if decision.allowed:
            self._admitted.setdefault(account_id, {})[room.slug] = (room.access_plans, time.monotonic())
        return decision

    # ---- invalidation across nodes ----

    async def publish_invalidation(self, account_ids: list[int]) -> None:
        self.drop(account_ids)   # this node at once, even if Redis is slow
        await self.bus.publish(BILLING_INVALIDATE, {"accounts": account_ids, "origin": self.bus.node_id})

    def drop(self, account_ids: list[int]) -> None:
        for account_id in account_ids:
            self._cache.pop(account_id, None)
        self._spawn(self.recheck([a for a in account_ids if a in self._admitted]))

    async def on_message(self, message: dict) -> None:
        if message.get("origin") == self.bus.node_id:
            return   # dropped locally when published
        accounts = message.get("accounts")
        if isinstance(accounts, list):
            self.drop([a for a in accounts if isinstance(a, int)])

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- removing people whose access ended ----

    async def recheck(self, account_ids: list[int] | None = None) -> int:
        """Kick admitted accounts from plan rooms they are no longer entitled to; returns kicks sent."""
        now_mono, now = time.monotonic(), time.time()
        sent = 0
        for account_id in list(self._admitted if account_ids is None else account_ids):
            rooms = self._admitted.get(account_id)
            if not rooms:
                continue
            grants = await self.grants(account_id)
            for slug, (plans, admitted_at) in list(rooms.items()):
                if now_mono - admitted_at > ADMISSION_MEMORY:
                    rooms.pop(slug, None)
                    continue
                decision = decide(grants, plans, now)
                if decision.allowed:
                    continue
                rooms.pop(slug, None)
                await self.bus.publish(control_channel(slug), kick_message(
                    f"a:{account_id}", by="billing", reason="entitlement_ended", detail=decision.reason))
                sent += 1
            if not rooms:
                self._admitted.pop(account_id, None)
        self.kicks += sent
        return sent

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.recheck()
            except Exception:  # Postgres or Redis away: the next round retries
                log.warning("entitlement re-check failed; will retry", exc_info=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
