"""Privacy promises: regions not addresses, retention."""

from datetime import datetime, timedelta, timezone


from conftest import refusal
from odsmedia.privacy.requestlog import REQUEST_LOG
from odsmedia.privacy import retention
from odsmedia.privacy.region import client_ip, region_of


def test_region_of_addresses():
    assert region_of("127.0.0.1") == "loopback"
    assert region_of("::1") == "loopback"
    assert region_of("10.1.2.3") == "private"
    assert region_of("8.8.8.8") == "US"
    assert region_of("not an ip") == "unknown"


class _Req:
    def __init__(self, remote, xff=""):
        self.remote = remote
        self.headers = {"X-Forwarded-For": xff} if xff else {}


def test_forwarded_for_only_from_trusted_proxies():
    assert client_ip(_Req("127.0.0.1", "8.8.8.8"), ()) == "127.0.0.1"
    assert client_ip(_Req("127.0.0.1", "8.8.8.8"), ("127.0.0.0/8",)) == "8.8.8.8"
    # A spoofed leftmost hop behind a real client is ignored: the first untrusted hop from the right wins.
    assert client_ip(_Req("127.0.0.1", "1.1.1.1, 8.8.8.8"), ("127.0.0.0/8",)) == "8.8.8.8"
    assert client_ip(_Req("9.9.9.9", "8.8.8.8"), ("127.0.0.0/8",)) == "9.9.9.9"


async def test_request_log_keeps_region_never_the_address(client, db):
    resp = await client.get("/api/does-not-exist")
    assert (resp.status, (await resp.json())["error"]) == (404, "not_found")
    request_log = client.app[REQUEST_LOG]
    assert await request_log.flush(db) >= 1
    rows = await db.fetch("SELECT * FROM request_logs WHERE route = 'unmatched' ORDER BY at DESC LIMIT 5")
    assert rows and rows[0]["region"] == "loopback" and rows[0]["status"] == 404
    # No column anywhere in the schema holds an address.
    cols = await db.fetch(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
    )
    assert not [c for c in cols if "ip" in c["column_name"].split("_") or c["column_name"] in ("ip", "address", "remote_addr")]


async def test_retention_folds_old_request_logs_into_daily_aggregates(db):
    old = datetime.now(timezone.utc) - timedelta(days=40)
    route = "/retention-test"
    await db.executemany(
        "INSERT INTO request_logs (at, method, route, status, duration_ms, region) VALUES ($1, 'GET', $2, $3, 1, 'GB')",
        [(old, route, 200), (old, route, 500), (datetime.now(timezone.utc), route, 200)],
    )
    removed = await retention.sweep(db, request_log_days=30, session_event_days=180)
    assert removed["request_logs"] >= 2
    left = await db.fetchval("SELECT count(*) FROM request_logs WHERE route = $1", route)
    assert left == 1
    agg = await db.fetchrow("SELECT requests, errors FROM analytics_daily WHERE route = $1 AND day = $2", route, old.date())
    assert (agg["requests"], agg["errors"]) == (2, 1)


async def test_export_and_delete_account(client, db, room_factory):
    from test_auth import sign_in

    csrf, account = await sign_in(client)
    subject = f"a:{account['id']}"
    room = await room_factory()
    # Contributions and memberships to be exported and then removed.
    await db.execute("INSERT INTO chat_rooms (room_id, last_seq) VALUES ($1, 1) ON CONFLICT DO NOTHING", room.id)
    await db.execute(
        "INSERT INTO chat_items (room_id, id, changed_seq, kind, author, author_name, body) "
        "VALUES ($1, 1, 1, 'message', $2, 'Me', 'hello from me')", room.id, subject)
    await db.execute("INSERT INTO room_members (room_id, account_id, role) VALUES ($1, $2, 'moderator')",
                     room.id, account["id"])
    # Someone else's question, upvoted by this account.
    await db.execute("UPDATE chat_rooms SET last_seq = 2 WHERE room_id = $1", room.id)
    await db.execute(
        "INSERT INTO chat_items (room_id, id, changed_seq, kind, author, author_name, body, votes) "
        "VALUES ($1, 2, 2, 'question', 'v:other', 'Other', 'why?', 1)", room.id)
    await db.execute("INSERT INTO chat_votes (room_id, item_id, subject) VALUES ($1, 2, $2)", room.id, subject)

    resp = await client.get("/api/me/export")
    assert resp.status == 200
    data = await resp.json()
    assert data["account"]["email"] == account["email"]
    assert [i["body"] for i in data["chat_items"]] == ["hello from me"]
    assert data["room_roles"] == [{"room": room.slug, "role": "moderator", "granted_at": data["room_roles"][0]["granted_at"]}]
    assert data["sessions"] and all("token_hash" not in s for s in data["sessions"])

    # Deletion needs the CSRF header and an explicit confirmation; neither half-deletes anything.
    resp = await client.delete("/api/me", json={"confirm_email": account["email"]})
    assert (resp.status, (await resp.json())["error"]) == (403, "csrf_failed")
    resp = await client.delete("/api/me", json={}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 400 and (await resp.json())["error"] == "confirmation_required"
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE id = $1", account["id"]) == 1

    resp = await client.delete("/api/me", json={"confirm_email": account["email"]}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 200, await resp.text()
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE id = $1", account["id"]) == 0
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE account_id = $1", account["id"]) == 0
    item = await db.fetchrow("SELECT * FROM chat_items WHERE room_id = $1 AND id = 1", room.id)
    assert item["body"] == "" and item["deleted_at"] is not None and item["changed_seq"] == 3
    question = await db.fetchrow("SELECT * FROM chat_items WHERE room_id = $1 AND id = 2", room.id)
    assert question["votes"] == 0 and question["changed_seq"] == 4 and question["body"] == "why?"
    assert await db.fetchval("SELECT count(*) FROM magic_links WHERE email = $1", account["email"]) == 0
    # The session is gone with it.
    assert await refusal(client.get("/api/me")) == (401, "not_signed_in")


async def test_delete_refused_while_subscription_runs(client, db):
    from test_auth import sign_in

    csrf, account = await sign_in(client)
    customer = f"cus_{account['id']}_x"
    await db.execute("INSERT INTO billing_customers (customer_id, account_id) VALUES ($1, $2)", customer, account["id"])
    await db.execute(
        "INSERT INTO subscriptions (subscription_id, customer_id, plan, status, state_at) "
        "VALUES ($1, $2, 'pro', 'active', now())", f"sub_{account['id']}_x", customer)
    resp = await client.delete("/api/me", json={"confirm_email": account["email"]}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 409 and (await resp.json())["error"] == "active_subscription"
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE id = $1", account["id"]) == 1


async def test_account_page_deletes_the_account(client, db, browser):
    from test_auth import sign_in

    _, account = await sign_in(client)
    from test_auth_browser import sign_in_page

    page = await browser.new_page()
    await sign_in_page(page, client, account["email"])
    await page.goto(str(client.make_url("/account")))
    await page.wait_for_selector("#account:not([hidden])", timeout=15000)
    assert await page.get_attribute("#export", "href") == "/api/me/export"
    await page.fill("#delete-confirm", "someone-else@example.test")
    await page.click("#delete-account")
    await page.wait_for_selector("#error:not([hidden])", timeout=15000)
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE id = $1", account["id"]) == 1
    await page.fill("#delete-confirm", account["email"])
    await page.click("#delete-account")
    await page.wait_for_url("**/?deleted=1", timeout=15000)
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE id = $1", account["id"]) == 0
