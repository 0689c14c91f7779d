"""The privacy policy as the operator publishes it, and the promises around it.

- ``odsmedia policy publish FILE [--version V] [--material]`` stores a version
  (the operator's file, kept in Postgres so every node serves the same one).
  ``/privacy`` serves the newest; ``/privacy?version=V`` an older one.  Before
  anything is published the policy bundled with the package is served.
- A *material* version: every account that existed when it was published gets
  one e-mail through the configured mail backend (``policy_mailings`` makes it
  one, whichever node or retry sends it), and signed-in people see a notice
  on every page until they acknowledge it; acknowledgements are recorded with
  the version (policy section 10).
- ``/.well-known/security.txt`` (RFC 9116) names the security contact from
  the configuration (policy section 6).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from html import escape
from pathlib import Path

import asyncpg
from aiohttp import web

from ..errors import STORAGE_ERRORS, ApiError, json_response, read_json
from ..keys import CONFIG, DB, GATE
from ..mail import Mailer, MailError, render
from .pages import html_response, layout

log = logging.getLogger("odsmedia.policy")

BUNDLED = Path(__file__).resolve().parent.parent / "privacy" / "policy.txt"
MAX_POLICY = 256 * 1024
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LAST_UPDATED = re.compile(r"^\s*Last updated:\s*(\d{4}-\d{2}-\d{2})\s*$", re.M)


@dataclass(frozen=True)
class PolicyVersion:
    version: str
    body: str
    material: bool
    published_at: datetime | None     # None: the bundled text, never published


class PolicyError(ValueError):
    pass


def version_of(body: str, explicit: str = "") -> str:
    """``explicit``, else the text's "Last updated:" date, else a digest of the text."""
    if explicit:
        if not _VERSION.match(explicit):
            raise PolicyError("a version is 1-64 letters, digits, '.', '_' or '-'")
        return explicit
    match = _LAST_UPDATED.search(body)
    return match.group(1) if match else "sha-" + hashlib.sha256(body.encode()).hexdigest()[:12]


async def publish(db: asyncpg.Pool, body: str, *, version: str = "", material: bool) -> PolicyVersion:
    if not body.strip():
        raise PolicyError("the policy file is empty")
    if len(body.encode()) > MAX_POLICY:
        raise PolicyError(f"the policy file is over {MAX_POLICY // 1024} KiB")
    version = version_of(body, version)
    async with db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO policy_versions (version, body, material) VALUES ($1, $2, $3) "
            "ON CONFLICT (version) DO NOTHING RETURNING published_at", version, body, material)
        if row is None:
            raise PolicyError(f"version {version!r} is already published; give the new text a new version")
        if material:
            await conn.execute(
                "INSERT INTO policy_mailings (account_id, version) SELECT id, $1 FROM accounts", version)
    return PolicyVersion(version, body, material, row["published_at"])


async def current(db: asyncpg.Pool, version: str | None = None) -> PolicyVersion | None:
    if version:
        row = await db.fetchrow("SELECT * FROM policy_versions WHERE version = $1", version)
    else:
        row = await db.fetchrow("SELECT * FROM policy_versions ORDER BY published_at DESC, version DESC LIMIT 1")
    if row is None:
        if version:
            return None
        return PolicyVersion("bundled", BUNDLED.read_text(), False, None)
    return PolicyVersion(row["version"], row["body"], row["material"], row["published_at"])


async def pending_notice(db: asyncpg.Pool, account_id: int) -> dict | None:
    """The newest material version this account has not acknowledged (published after it signed up)."""
    row = await db.fetchrow(
        """SELECT v.version, v.published_at FROM policy_versions v, accounts a
           WHERE a.id = $1 AND v.material AND v.published_at > a.created_at
             AND NOT EXISTS (SELECT 1 FROM policy_acknowledgements k
                             WHERE k.account_id = a.id AND k.version = v.version)
           ORDER BY v.published_at DESC LIMIT 1""", account_id)
    return {"version": row["version"], "published_at": row["published_at"].isoformat()} if row else None


async def acknowledge(db: asyncpg.Pool, account_id: int, version: str) -> None:
    status = await db.execute(
        "INSERT INTO policy_acknowledgements (account_id, version) SELECT $1, version FROM policy_versions "
        "WHERE version = $2 ON CONFLICT DO NOTHING", account_id, version)
    if status.split()[-1] == "0" and not await db.fetchval(
            "SELECT 1 FROM policy_acknowledgements WHERE account_id = $1 AND version = $2", account_id, version):
        raise ApiError(404, "unknown_version", "no such policy version")


async def export(conn: asyncpg.Connection, account_id: int) -> dict[str, list[dict]]:
    """The account's acknowledgements and notice e-mails (for the data export)."""
    acks = await conn.fetch("SELECT version, acknowledged_at FROM policy_acknowledgements WHERE account_id = $1 "
                            "ORDER BY acknowledged_at", account_id)
    mails = await conn.fetch("SELECT version, sent_at FROM policy_mailings WHERE account_id = $1 ORDER BY version",
                             account_id)
    return {"acknowledgements": [dict(r) for r in acks], "notice_emails": [dict(r) for r in mails]}


async def send_pending(db: asyncpg.Pool, mailer: Mailer, *, public_url: str, limit: int = 200) -> int:
    """Sends notice e-mails not sent yet; each row is locked while its mail goes, so nodes never double up."""
    sent = 0
    while sent < limit:
        async with db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT m.account_id, m.version, a.email, v.published_at FROM policy_mailings m
                   JOIN accounts a ON a.id = m.account_id JOIN policy_versions v ON v.version = m.version
                   WHERE m.sent_at IS NULL ORDER BY v.published_at, m.account_id
                   LIMIT 1 FOR UPDATE OF m SKIP LOCKED""")
            if row is None:
                break
            await mailer.send(render(
                "policy_changed", row["email"], version=row["version"],
                published=row["published_at"].strftime("%Y-%m-%d"),
                policy_url=f"{public_url}/privacy?version={row['version']}", account_url=f"{public_url}/account"))
            await conn.execute("UPDATE policy_mailings SET sent_at = now() WHERE account_id = $1 AND version = $2",
                               row["account_id"], row["version"])
            sent += 1
    return sent


async def run_mailings(db: asyncpg.Pool, mailer: Mailer, *, public_url: str, interval: float = 60.0) -> None:
    while True:
        try:
            await send_pending(db, mailer, public_url=public_url)
        except STORAGE_ERRORS + (MailError,):
            log.warning("policy notice mail not sent; will retry")
        await asyncio.sleep(interval)


# --- HTTP -------------------------------------------------------------------------------------

async def privacy_page(request: web.Request) -> web.Response:
    wanted = request.query.get("version")
    policy = await current(request.app[DB], wanted)
    if policy is None:
        missing = ('<div class="refusal" role="alert">No such version of the policy. '
                   '<a href="/privacy">The current policy</a></div>')
        return html_response(layout("Privacy policy", missing), 404)
    versions = await request.app[DB].fetch(
        "SELECT version, published_at, material FROM policy_versions ORDER BY published_at DESC LIMIT 50")
    history = "".join(
        f'<li><a href="/privacy?version={escape(v["version"])}">{escape(v["version"])}</a> '
        f'<span class="muted">{v["published_at"]:%Y-%m-%d}{" · material change" if v["material"] else ""}</span></li>'
        for v in versions)
    published = f"published {policy.published_at:%Y-%m-%d}" if policy.published_at else "as shipped"
    body = (f'<h2>Privacy policy</h2><p class="muted" id="policy-version" data-version="{escape(policy.version)}">'
            f'Version {escape(policy.version)}, {published}.</p>'
            f'<article class="policy-text" id="policy-text">{escape(policy.body)}</article>'
            + (f'<h3>Versions</h3><ul id="policy-versions">{history}</ul>' if history else ""))
    return html_response(layout("Privacy policy", body))


async def _account_id(request: web.Request) -> int:
    identity = await request.app[GATE].identify(request)
    if identity.account_id is None or identity.token is not None:
        raise ApiError(401, "not_signed_in", "sign in first")
    return identity.account_id


async def notice(request: web.Request) -> web.Response:
    identity = await request.app[GATE].identify(request)
    pending = None
    if identity.account_id is not None and identity.token is None:
        pending = await pending_notice(request.app[DB], identity.account_id)
    return json_response({"notice": pending}, headers={"Cache-Control": "no-store"})


async def acknowledge_handler(request: web.Request) -> web.Response:
    account_id = await _account_id(request)
    body = await read_json(request)
    version = body.get("version")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ApiError(400, "invalid_version", "version must name a published policy version")
    await acknowledge(request.app[DB], account_id, version)
    return json_response({"acknowledged": version})


def security_txt_body(contacts: tuple[str, ...], *, canonical: str, policy_url: str, now: datetime) -> str:
    lines = [f"Contact: {c if ':' in c else 'mailto:' + c}" for c in contacts]
    # RFC 9116 2.5.5: Expires is required and should be under a year away. The file is
    # generated on every request, so it never goes stale.
    expires = (now + timedelta(days=180)).replace(hour=0, minute=0, second=0, microsecond=0)
    lines.append("Expires: " + expires.strftime("%Y-%m-%dT%H:%M:%SZ"))
    lines.append("Preferred-Languages: en")
    if canonical:
        lines.append(f"Canonical: {canonical}")
    if policy_url:
        lines.append(f"Policy: {policy_url}")
    return "\n".join(lines) + "\n"


async def security_txt(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    contacts = config["security.contact"]
    if not contacts:
        raise web.HTTPNotFound()
    canonical = f"{config['http.public_url'].rstrip('/')}/.well-known/security.txt" if config["http.public_url"] else ""
    body = security_txt_body(contacts, canonical=canonical, policy_url=config["security.policy_url"],
                             now=datetime.now(timezone.utc))
    return web.Response(text=body, content_type="text/plain", charset="utf-8",
                        headers={"Cache-Control": "max-age=3600"})


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/privacy", privacy_page)
    app.router.add_get("/api/policy/notice", notice)
    app.router.add_post("/api/policy/acknowledge", acknowledge_handler)
    app.router.add_get("/.well-known/security.txt", security_txt)
