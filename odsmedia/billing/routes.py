"""HTTP side of billing: plans, checkout, portal, Stripe webhooks, organizations.

Routes
  GET    /api/plans                        the catalog (public)
  POST   /billing/checkout                 {"plan", "org_id"?, "seats"?} -> {"url"} of a Stripe Checkout Session
  POST   /billing/portal                   {"org_id"?} -> {"url"} of the Customer Portal
  POST   /billing/webhook                  Stripe events (signature-verified)
  POST   /api/orgs                         {"name"} -> a new organization, the caller its admin
  GET    /api/orgs/{id}                    seats, members, subscription (admins)
  POST   /api/orgs/{id}/members            {"email", "role"?}  (409 seats_exhausted past the seat count)
  DELETE /api/orgs/{id}/members/{email}

The entitlement checker is installed on the gate once the gate exists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

import orjson
from aiohttp import web

from ..auth import accounts
from ..auth.service import AUTH, link_base
from ..auth.sessions_web import require_session
from ..channels import BILLING_INVALIDATE
from ..errors import ApiError, header_text, json_int, json_response, path_id, read_json
from ..keys import BUS, CONFIG, DB, GATE
from ..mail import render
from . import customers, orgs, webhooks
from .entitlements import Entitlements
from .gateway import StripeGateway
from .plans import catalog as load_catalog
from .service import BILLING, BillingService

log = logging.getLogger("odsmedia.billing")

MAX_SEATS = 10_000


def service(app: web.Application) -> BillingService:
    return app[BILLING]


async def _account(request: web.Request) -> accounts.Account:
    found = await require_session(request)
    account = await accounts.get(request.app[DB], found.account_id)
    if account is None:
        raise ApiError(401, "not_signed_in", "this account no longer exists")
    return account


def _org_id(raw: object) -> int:
    if json_int(raw, low=1) is None:
        raise ApiError(400, "invalid_org", "org_id must be an organization id")
    return raw


# ---- plans, checkout, portal ------------------------------------------------------------------

async def list_plans(request: web.Request) -> web.Response:
    # ``checkout``: whether buying works here (a Stripe key is set), so the plans page can say
    # so instead of offering buttons that answer 503 billing_unavailable.
    svc = service(request.app)
    return json_response({"plans": [p.public() for p in svc.catalog.plans.values()],
                          "checkout": svc.gateway.configured})


async def checkout(request: web.Request) -> web.Response:
    account = await _account(request)
    body = await read_json(request, limit=4096)
    svc = service(request.app)
    plan = svc.catalog.get(body.get("plan"))
    if plan is None:
        raise ApiError(400, "unknown_plan", "no such plan", plans=list(svc.catalog.plans))
    db = request.app[DB]
    org_id = _org_id(body["org_id"]) if body.get("org_id") is not None else None
    seats = body.get("seats", 1)
    if json_int(seats, low=1, high=MAX_SEATS) is None:
        raise ApiError(400, "invalid_seats", f"seats must be 1-{MAX_SEATS}")
    if plan.seats and org_id is None:
        raise ApiError(400, "org_required", "this plan is bought for an organization (org_id)")
    if org_id is not None:
        org = await orgs.require_admin(db, org_id, account.email)
        reference, metadata = f"o:{org.id}", {"plan": plan.code, "org_id": str(org.id), "seats": str(seats)}
    else:
        seats = 1
        if await customers.subscribed(db, account.id, plan.code):
            raise ApiError(409, "already_subscribed", "you already have this plan; manage it in the portal")
        reference, metadata = f"a:{account.id}", {"plan": plan.code, "account_id": str(account.id)}
    owner = {"org_id": org_id} if org_id is not None else {"account_id": account.id}
    customer = await customers.customer_for(db, **owner)
    if customer is None:
        customer = await svc.gateway.create_customer(account.email, {k: v for k, v in metadata.items()
                                                                     if k in ("account_id", "org_id")})
        # Two checkouts racing: the first mapping wins and the second customer stays unused.
        await customers.link(db, customer, **owner)
        customer = await customers.customer_for(db, **owner)
    base = link_base(request)
    url = await svc.gateway.checkout(
        customer=customer, price=plan.price, quantity=seats,
        success_url=f"{base}/account?checkout=success", cancel_url=f"{base}/plans?checkout=canceled",
        reference=reference, metadata=metadata,
    )
    return json_response({"url": url})


async def portal(request: web.Request) -> web.Response:
    account = await _account(request)
    body = await read_json(request, limit=4096) if request.body_exists else {}
    org_id = _org_id(body["org_id"]) if body.get("org_id") is not None else None
    if org_id is not None:
        await orgs.require_admin(request.app[DB], org_id, account.email)
    owner = {"org_id": org_id} if org_id is not None else {"account_id": account.id}
    customer = await customers.customer_for(request.app[DB], **owner)
    if customer is None:
        raise ApiError(404, "no_billing_account", "nothing has been bought yet")
    url = await service(request.app).gateway.portal(customer=customer, return_url=f"{link_base(request)}/account")
    return json_response({"url": url})


# ---- webhooks -----------------------------------------------------------------------------------

async def webhook(request: web.Request) -> web.Response:
    svc = service(request.app)
    payload = await request.read()
    svc.gateway.verify(payload, header_text(request, "Stripe-Signature"))
    try:
        event = orjson.loads(payload)
        if not isinstance(event, dict):
            raise ValueError("not an object")
        outcome = await webhooks.apply(request.app[DB], event, svc.catalog,
                                       grace_seconds=svc.config["billing.past_due_grace"])
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise ApiError(400, "invalid_payload", f"not a usable Stripe event: {exc}") from None
    if outcome.customers and svc.entitlements is not None:
        affected = await webhooks.accounts_of_customers(request.app[DB], outcome.customers)
        try:
            await svc.entitlements.publish_invalidation(affected)
        except Exception:
            # Committed already; other nodes catch up when their cache entries expire (billing.cache_ttl).
            log.warning("entitlement invalidation not published", exc_info=True)
    for notice in outcome.notices:
        await _mail_notice(request, notice)
    return json_response({"received": True, "duplicate": outcome.duplicate, "ignored": outcome.ignored})


async def _mail_notice(request: web.Request, notice: webhooks.Notice) -> None:
    svc = service(request.app)
    plan = svc.catalog.get(notice.plan)
    base = link_base(request)
    values = {"plan": plan.label if plan else (notice.plan or "your"), "portal_url": f"{base}/account",
              "plans_url": f"{base}/plans", **notice.values}
    mailer = request.app[AUTH]
    for address in await webhooks.notice_recipients(request.app[DB], notice.customer_id):
        mailer.send_later(render(notice.template, address, **values))


# ---- organizations -----------------------------------------------------------------------------

def _path_org(request: web.Request) -> int:
    return path_id(request, "id", "org_not_found", "no such organization")


async def create_org(request: web.Request) -> web.Response:
    account = await _account(request)
    body = await read_json(request, limit=4096)
    org = await orgs.create(request.app[DB], orgs.clean_name(body.get("name")), admin_id=account.id,
                            admin_email=account.email)
    return json_response(await orgs.detail(request.app[DB], org), status=201)


async def get_org(request: web.Request) -> web.Response:
    account = await _account(request)
    org = await orgs.require_admin(request.app[DB], _path_org(request), account.email)
    return json_response(await orgs.detail(request.app[DB], org))


async def _invalidate_emails(request: web.Request, emails: list[str]) -> None:
    ent = service(request.app).entitlements
    if ent is None:
        return
    ids = await accounts.ids_of_emails(request.app[DB], emails)
    if ids:
        try:
            await ent.publish_invalidation(ids)
        except Exception:
            log.warning("entitlement invalidation not published", exc_info=True)


async def add_member(request: web.Request) -> web.Response:
    account = await _account(request)
    db = request.app[DB]
    org = await orgs.require_admin(db, _path_org(request), account.email)
    body = await read_json(request, limit=4096)
    email = accounts.normalize_email(body.get("email"))
    await orgs.add_member(db, org.id, email, body.get("role", "member"))
    await _invalidate_emails(request, [email])
    return json_response(await orgs.detail(db, org), status=201)


async def remove_member(request: web.Request) -> web.Response:
    account = await _account(request)
    db = request.app[DB]
    org = await orgs.require_admin(db, _path_org(request), account.email)
    email = accounts.normalize_email(request.match_info["email"])
    await orgs.remove_member(db, org.id, email)
    # Removing a member ends their access, on every node, and removes them from rooms.
    await _invalidate_emails(request, [email])
    return web.Response(status=204)


# ---- /api/me contribution --------------------------------------------------------------------

async def me_billing(request: web.Request, account_id: int) -> dict:
    db = request.app[DB]
    svc = service(request.app)
    sub = await customers.latest_subscription(db, account_id)
    email = await accounts.email_of(db, account_id)
    entitled: list[str] = []
    if svc.entitlements is not None:
        now = time.time()
        entitled = sorted(p for p, g in (await svc.entitlements.grants(account_id)).items() if now < g.until)
    subscription = None
    if sub is not None:
        plan = svc.catalog.get(sub["plan"])
        subscription = {
            "plan": sub["plan"], "plan_label": plan.label if plan else sub["plan"], "status": sub["status"],
            "current_period_end": sub["current_period_end"].isoformat() if sub["current_period_end"] else None,
            "cancel_at_period_end": sub["cancel_at_period_end"],
        }
    return {"billing": {"subscription": subscription, "entitled_plans": entitled,
                        "orgs": await orgs.of_account(db, email)}}


# ---- wiring ------------------------------------------------------------------------------------

def setup(app: web.Application) -> None:
    config = app[CONFIG]
    svc = BillingService(config=config, catalog=load_catalog(config), gateway=StripeGateway(config))
    app[BILLING] = svc
    auth = app.get(AUTH)
    if auth is not None:
        auth.me_extras.append(me_billing)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        ent = Entitlements(app[DB], app[BUS], grace_seconds=config["billing.past_due_grace"],
                           cache_ttl=config["billing.cache_ttl"])
        svc.entitlements = ent
        app[GATE].entitlements = ent
        unsubscribe = await app[BUS].subscribe(BILLING_INVALIDATE, ent.on_message)
        interval = config["billing.recheck_interval"]
        loop_task = asyncio.get_running_loop().create_task(ent.run(interval)) if interval > 0 else None
        yield
        if loop_task is not None:
            loop_task.cancel()
            await asyncio.gather(loop_task, return_exceptions=True)
        await unsubscribe()
        await ent.close()
        await svc.gateway.close()

    app.cleanup_ctx.append(lifecycle)
    r = app.router
    r.add_get("/api/plans", list_plans)
    r.add_post("/billing/checkout", checkout)
    r.add_post("/billing/portal", portal)
    r.add_post("/billing/webhook", webhook)
    r.add_post("/api/orgs", create_org)
    r.add_get("/api/orgs/{id}", get_org)
    r.add_post("/api/orgs/{id}/members", add_member)
    r.add_delete("/api/orgs/{id}/members/{email}", remove_member)
