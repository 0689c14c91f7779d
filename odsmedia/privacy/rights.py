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

from ..analytics import operators, policy
from ..auth import accounts, events, links, sessions, tokens
from ..auth.service import AUTH
from ..auth.sessions_web import clear_session_cookies, require_session
from ..billing import customers, orgs
from ..chat import store as chat_store
from ..errors import ApiError, json_response, read_json
from ..keys import CONFIG, DB
from ..rooms import directory
from . import requestlog

RUNNING = ("active", "trialing", "past_due", "unpaid", "incomplete")


async def export_account(db: asyncpg.Pool, account_id: int) -> dict[str, Any]:
    """Each table's owner exports its part, on one connection."""
    subject = f"a:{account_id}"
    async with db.acquire() as conn:
        account = await accounts.export(conn, account_id)
        if account is None:
            raise ApiError(404, "account_not_found", "no such account")
        chat = await chat_store.export(conn, subject)
        return {
            "account": account,
            "subject": subject,
            "sessions": await sessions.export(conn, account_id),
            "session_events": await events.export(conn, account_id),
            "api_tokens": await tokens.export(conn, account_id),
            "rooms_owned": await directory.export_owned(conn, account_id),
            "room_roles": await directory.export_roles(conn, account_id),
            "chat_items": chat["chat_items"],
            "chat_votes": chat["chat_votes"],
            "chat_sanctions": chat["chat_sanctions"],
            "billing": await customers.export(conn, account_id),
            "organizations": await orgs.export_memberships(conn, account["email"]),
            "request_logs": await requestlog.export(conn, subject),
            "privacy_policy": await policy.export(conn, account_id),
            "operator": await operators.export(conn, account_id),
        }


async def record_deletion(conn: asyncpg.Connection, account_id: int, *, actor: str, reason: str,
                          removed: dict[str, int]) -> None:
    """The audit row of a deletion (``account_deletions``, owned here): who, when, why, how much; no e-mail."""
    await conn.execute("INSERT INTO account_deletions (account_id, actor, reason, removed) VALUES ($1, $2, $3, $4)",
                       account_id, actor, reason[:500], removed)


async def delete_account(db: asyncpg.Pool, account_id: int, *, actor: str = "self",
                         reason: str = "") -> dict[str, int]:
    """Deletes the account in one transaction; returns counts of what went.

    The one deletion path, for the person themself (``actor`` "self") and for
    an operator acting on a request (``actor`` the operator's subject, or
    "cli"); either way an ``account_deletions`` row records who, when and why,
    without the e-mail."""
    subject = f"a:{account_id}"
    counts: dict[str, int] = {}
    async with db.acquire() as conn, conn.transaction():
        email = await accounts.lock_for_deletion(conn, account_id)
        if email is None:
            raise ApiError(404, "account_not_found", "no such account")
        if await customers.running(conn, account_id, RUNNING):
            raise ApiError(409, "active_subscription",
                           "cancel your subscription in the billing portal before deleting the account")
        counts["chat_items"], counts["chat_votes"] = await chat_store.forget_author(conn, subject)
        await requestlog.forget(conn, subject)
        await links.forget(conn, email)
        counts["org_seats"] = await orgs.forget_member(conn, email)
        # Cascades: sessions, session events, API tokens, room roles, the customer mapping,
        # operator role, policy acknowledgements.
        await accounts.delete(conn, account_id)
        counts["account"] = 1
        await record_deletion(conn, account_id, actor=actor, reason=reason, removed=counts)
    return counts


async def export_handler(request: web.Request) -> web.Response:
    session = await require_session(request)
    data = await export_account(request.app[DB], session.account_id)
    return json_response(data, headers={"Content-Disposition": 'attachment; filename="odsmedia-export.json"',
                                        "Cache-Control": "no-store"})


async def delete_handler(request: web.Request) -> web.Response:
    session = await require_session(request)
    body = await read_json(request)
    email = await accounts.email_of(request.app[DB], session.account_id)
    if not isinstance(body.get("confirm_email"), str) or body["confirm_email"].strip().lower() != email:
        raise ApiError(400, "confirmation_required", "send {\"confirm_email\": <your e-mail>} to delete the account")
    counts = await delete_account(request.app[DB], session.account_id)
    await request.app[AUTH].forget(account_ids=[session.account_id])
    response = json_response({"deleted": True, "removed": counts})
    clear_session_cookies(response, request.app[CONFIG])
    return response


async def delete_on_request(db: asyncpg.Pool, email: object, *, actor: str, reason: object) -> tuple[int, dict]:
    """An operator's deletion of someone's account (an under-16 report, a mailed request): the same
    deletion as the person's own, with the reason in the audit row.  Returns (account id, counts)."""
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 500:
        raise ApiError(400, "reason_required", "say why (1-500 characters): it goes into the audit row")
    account = await accounts.by_email(db, accounts.normalize_email(email))
    if account is None:
        raise ApiError(404, "account_not_found", "no account has this e-mail address")
    return account.id, await delete_account(db, account.id, actor=actor, reason=reason.strip())


async def operator_delete_handler(request: web.Request) -> web.Response:
    """POST /api/operator/accounts/delete {"email", "reason"} (operators only)."""
    identity = await operators.require_operator(request)
    body = await read_json(request)
    email = body.get("email")
    if isinstance(email, str) and email.strip().lower() == await accounts.email_of(request.app[DB],
                                                                                   identity.account_id):
        raise ApiError(409, "own_account", "delete your own account from the account page")
    account_id, counts = await delete_on_request(request.app[DB], email, actor=identity.subject,
                                                 reason=body.get("reason"))
    await request.app[AUTH].forget(account_ids=[account_id])
    return json_response({"deleted": True, "account_id": account_id, "removed": counts})


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/me/export", export_handler)
    app.router.add_delete("/api/me", delete_handler)
    app.router.add_post("/api/operator/accounts/delete", operator_delete_handler)
