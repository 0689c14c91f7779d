"""The rights the privacy policy grants (section 7): access, portability, deletion.

GET /api/me/export  everything held about the signed-in account, as JSON
DELETE /api/me      deletes the account and what is personal to it

Deletion keeps what the policy says is kept: the Stripe mirror (accounting
minimums; it holds Stripe ids, not the e-mail) and the moderation audit
(pseudonymous subject ids). The account's chat contributions become
tombstones, like a moderator's delete, so every client and the replay lose
their text. An account with a subscription still running must cancel it
first (Customer Portal), so deletion never leaves a paying customer with no
account behind them.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from ..auth.service import AUTH
from ..auth.sessions_web import clear_session_cookies, require_session
from ..chat import store as chat_store
from ..errors import ApiError, json_response, read_json
from ..keys import CONFIG, DB

RUNNING = ("active", "trialing", "past_due", "unpaid", "incomplete")


def _rows(records: list[asyncpg.Record]) -> list[dict[str, Any]]:
    return [dict(r) for r in records]


async def export_account(db: asyncpg.Pool, account_id: int) -> dict[str, Any]:
    subject = f"a:{account_id}"
    async with db.acquire() as conn:
        account = await conn.fetchrow(
            "SELECT id, email, display_name, email_verified_at, age_confirmed_at, created_at "
            "FROM accounts WHERE id = $1", account_id)
        if account is None:
            raise ApiError(404, "account_not_found", "no such account")
        email = account["email"]
        return {
            "account": dict(account),
            "subject": subject,
            "sessions": _rows(await conn.fetch(
                "SELECT id, created_at, last_seen_at, expires_at, revoked_at, region FROM sessions "
                "WHERE account_id = $1 ORDER BY created_at", account_id)),
            "session_events": _rows(await conn.fetch(
                "SELECT at, kind, session_id, region FROM session_events WHERE account_id = $1 ORDER BY at",
                account_id)),
            "api_tokens": _rows(await conn.fetch(
                "SELECT t.id, r.slug AS room, t.role, t.label, t.created_at, t.expires_at, t.revoked_at, "
                "t.last_used_at FROM api_tokens t JOIN rooms r ON r.id = t.room_id "
                "WHERE t.account_id = $1 ORDER BY t.created_at", account_id)),
            "rooms_owned": _rows(await conn.fetch(
                "SELECT slug, title, access_policy, access_plans, created_at FROM rooms WHERE owner_id = $1",
                account_id)),
            "room_roles": _rows(await conn.fetch(
                "SELECT r.slug AS room, m.role, m.granted_at FROM room_members m JOIN rooms r ON r.id = m.room_id "
                "WHERE m.account_id = $1", account_id)),
            "chat_items": _rows(await conn.fetch(
                "SELECT r.slug AS room, c.id, c.kind, c.body, c.author_name, c.created_at, c.episode_id, "
                "c.episode_offset, c.votes, c.answered_at, c.deleted_at FROM chat_items c "
                "JOIN rooms r ON r.id = c.room_id WHERE c.author = $1 ORDER BY c.created_at", subject)),
            "chat_votes": _rows(await conn.fetch(
                "SELECT r.slug AS room, v.item_id, v.created_at FROM chat_votes v JOIN rooms r ON r.id = v.room_id "
                "WHERE v.subject = $1", subject)),
            "chat_sanctions": _rows(await conn.fetch(
                "SELECT r.slug AS room, s.kind, s.until, s.reason, s.created_at FROM chat_sanctions s "
                "JOIN rooms r ON r.id = s.room_id WHERE s.subject = $1", subject)),
            "billing": {
                "customers": _rows(await conn.fetch(
                    "SELECT customer_id, created_at FROM billing_customers WHERE account_id = $1", account_id)),
                "subscriptions": _rows(await conn.fetch(
                    "SELECT s.subscription_id, s.plan, s.status, s.quantity, s.current_period_end, "
                    "s.cancel_at_period_end FROM subscriptions s JOIN billing_customers c "
                    "ON c.customer_id = s.customer_id WHERE c.account_id = $1", account_id)),
            },
            "organizations": _rows(await conn.fetch(
                "SELECT o.id, o.name, m.role, m.added_at FROM org_members m JOIN organizations o ON o.id = m.org_id "
                "WHERE m.email = $1", email)),
            "request_logs": _rows(await conn.fetch(
                "SELECT at, method, route, status, region FROM request_logs WHERE subject = $1 ORDER BY at",
                subject)),
        }


async def delete_account(db: asyncpg.Pool, account_id: int) -> dict[str, int]:
    """Deletes the account in one transaction; returns counts of what went."""
    subject = f"a:{account_id}"
    counts: dict[str, int] = {}
    async with db.acquire() as conn, conn.transaction():
        email = await conn.fetchval("SELECT email FROM accounts WHERE id = $1 FOR UPDATE", account_id)
        if email is None:
            raise ApiError(404, "account_not_found", "no such account")
        running = await conn.fetchval(
            "SELECT count(*) FROM subscriptions s JOIN billing_customers c ON c.customer_id = s.customer_id "
            "WHERE c.account_id = $1 AND s.status = ANY($2::text[]) AND NOT s.cancel_at_period_end",
            account_id, list(RUNNING))
        if running:
            raise ApiError(409, "active_subscription",
                           "cancel your subscription in the billing portal before deleting the account")
        counts["chat_items"], counts["chat_votes"] = await chat_store.forget_author(conn, subject)
        await conn.execute("UPDATE request_logs SET subject = NULL WHERE subject = $1", subject)
        await conn.execute("DELETE FROM magic_links WHERE email = $1", email)
        counts["org_seats"] = int((await conn.execute("DELETE FROM org_members WHERE email = $1", email)).split()[-1])
        # Cascades: sessions, session events, API tokens, room roles, the customer mapping.
        await conn.execute("DELETE FROM accounts WHERE id = $1", account_id)
        counts["account"] = 1
    return counts


async def export_handler(request: web.Request) -> web.Response:
    session = await require_session(request)
    data = await export_account(request.app[DB], session.account_id)
    return json_response(data, headers={"Content-Disposition": 'attachment; filename="odsmedia-export.json"',
                                        "Cache-Control": "no-store"})


async def delete_handler(request: web.Request) -> web.Response:
    session = await require_session(request)
    body = await read_json(request)
    email = await request.app[DB].fetchval("SELECT email FROM accounts WHERE id = $1", session.account_id)
    if not isinstance(body.get("confirm_email"), str) or body["confirm_email"].strip().lower() != email:
        raise ApiError(400, "confirmation_required", "send {\"confirm_email\": <your e-mail>} to delete the account")
    counts = await delete_account(request.app[DB], session.account_id)
    await request.app[AUTH].forget(account_ids=[session.account_id])
    response = json_response({"deleted": True, "removed": counts})
    clear_session_cookies(response, request.app[CONFIG])
    return response


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/me/export", export_handler)
    app.router.add_delete("/api/me", delete_handler)
