"""Passwordless sign-in end to end: outbox mail, links, sessions, CSRF, audit, tokens."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import re
import uuid
from email import policy
from pathlib import Path

import pytest
from aiohttp import WSMsgType

from conftest import make_config, refusal
from odsmedia.app import make_app
from odsmedia.auth.service import AUTH

LINK = re.compile(r"/auth/confirm#token=([A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+)")


def new_email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.test"


def outbox(config) -> Path:
    return config.data_dir / "outbox"


def mails_to(config, address: str) -> list[email.message.EmailMessage]:
    found = []
    directory = outbox(config)
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        if msg["To"] == address:
            found.append(msg)
    return found


async def request_link(client, address: str) -> str:
    resp = await client.post("/auth/magic-link", json={"email": address})
    assert resp.status == 202, await resp.text()
    await client.server.app[AUTH].drain()
    config = client.server.app[AUTH].config
    body = mails_to(config, address)[-1].get_content()
    match = LINK.search(body)
    assert match, body
    return match.group(1)


async def sign_in(client, address: str | None = None) -> tuple[str, dict]:
    """Signs the client's cookie jar in; returns (csrf token, account)."""
    address = address or new_email()
    token = await request_link(client, address)
    resp = await client.post("/auth/confirm", json={"token": token, "age_confirmed": True})
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    return data["csrf_token"], data["account"]


async def admit(client, slug: str, entry: str = "join", headers: dict | None = None) -> tuple[int, dict]:
    """Asks the gate through the real entry point for ``entry``; returns (HTTP status, JSON body).

    Signaling and chat answer over a WebSocket: a refusal carries the gate's status
    (signaling ``status``, chat close code 4000 + status); admission is 200 with the
    participant (signaling) or the chat post's ack.  ``publish`` joins, then publishes
    an empty offer: past the gate the SDP itself is refused (400 ``invalid_sdp``)."""
    headers = dict(headers or {})
    if entry == "play":
        resp = await client.post(f"/rooms/{slug}/whep", data="v=0\r\n",
                                 headers={**headers, "Content-Type": "application/sdp"})
        return resp.status, await resp.json()
    if entry == "replay":
        resp = await client.get(f"/rooms/{slug}/episodes", headers={**headers, "Accept": "application/json"})
        return resp.status, await resp.json()
    if entry in ("join", "publish"):
        async with client.ws_connect(f"/rooms/{slug}/ws", headers=headers) as ws:
            await ws.send_json({"type": "join", "ref": 1})
            reply = await ws.receive_json(timeout=10)
            if reply["type"] == "error":
                return reply["status"], {"error": reply["code"], **{k: v for k, v in reply.items()
                                                                     if k not in ("type", "code", "ref")}}
            assert reply["type"] == "joined", reply
            if entry == "join":
                return 200, reply["participant"]
            await ws.send_json({"type": "publish", "sdp": "v=0\r\n", "ref": 2})
            while (reply := await ws.receive_json(timeout=10)).get("ref") != 2:
                pass
            assert reply["type"] == "error", reply
            return reply["status"], {"error": reply["code"]}
    assert entry == "chat", entry
    async with client.ws_connect(f"/rooms/{slug}/chat", headers=headers) as ws:
        await ws.send_json({"type": "join"})
        first = await ws.receive(timeout=10)
        if first.type == WSMsgType.TEXT and first.json()["type"] == "error":
            body = first.json()
            closing = await ws.receive(timeout=10)
            assert closing.type == WSMsgType.CLOSE, closing    # the server's close frame and its code
            return closing.data - 4000, body
        assert first.json()["type"] == "welcome", first.data
        await ws.send_json({"type": "post", "kind": "message", "text": "admitted?", "ref": 1})
        while (reply := await ws.receive_json(timeout=10)).get("ref") != 1:
            pass
        assert reply["type"] == "ack", reply   # a post refused past the gate is not an admission outcome
        return 200, reply


@pytest.fixture
def config(service_urls, tmp_path):
    # Every test signs in from 127.0.0.1: give each its own Redis prefix so the
    # per-network link limit counts only that test's requests.
    return make_config(service_urls, tmp_path / "data",
                       ODS_REDIS_PREFIX=f"{service_urls.prefix}{uuid.uuid4().hex[:8]}:")


@pytest.fixture
async def gate_client(aiohttp_client, config):
    return await aiohttp_client(make_app(config))


async def test_full_flow_through_outbox(client, db, config):
    address = new_email()
    resp = await client.post("/auth/magic-link", json={"email": address.upper()})
    assert resp.status == 202
    await client.server.app[AUTH].drain()
    [msg] = mails_to(config, address)
    assert msg["X-ODS-Template"] == "magic_link"
    token = LINK.search(msg.get_content()).group(1)
    selector, verifier = token.split(".")
    assert len(verifier) >= 43  # >= 32 random bytes

    # Only hashes are stored.
    row = await db.fetchrow("SELECT * FROM magic_links WHERE email = $1", address)
    assert verifier.encode() not in row["verifier_hash"] and len(row["verifier_hash"]) == 32
    assert (row["expires_at"] - row["created_at"]).total_seconds() == pytest.approx(900, abs=2)

    # No account until the person says they are 16+; the link survives the refusal.
    resp = await client.post("/auth/confirm", json={"token": token})
    assert resp.status == 400
    assert (await resp.json())["error"] == "age_confirmation_required"
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE email = $1", address) == 0
    assert await db.fetchval("SELECT used_at FROM magic_links WHERE email = $1", address) is None

    resp = await client.post("/auth/confirm", json={"token": token, "age_confirmed": True})
    assert resp.status == 200
    data = await resp.json()
    assert data["new_account"] is True and data["account"]["email"] == address
    account = await db.fetchrow("SELECT * FROM accounts WHERE email = $1", address)
    assert account["age_confirmed_at"] is not None and account["email_verified_at"] is not None

    me = await client.get("/api/me")
    assert me.status == 200
    body = await me.json()
    assert body["email"] == address and body["subject"] == f"a:{account['id']}"

    # A second sign-in of the same person needs no age question.
    client.session.cookie_jar.clear()
    token2 = await request_link(client, address)
    resp = await client.post("/auth/confirm", json={"token": token2})
    assert resp.status == 200 and (await resp.json())["new_account"] is False


async def test_link_works_once(client, db):
    address = new_email()
    token = await request_link(client, address)
    first = await client.post("/auth/confirm", json={"token": token, "age_confirmed": True})
    assert first.status == 200
    again = await client.post("/auth/confirm", json={"token": token, "age_confirmed": True})
    assert again.status == 400 and (await again.json())["error"] == "link_used"
    account_id = await db.fetchval("SELECT id FROM accounts WHERE email = $1", address)
    kinds = [r["kind"] for r in await db.fetch(
        "SELECT kind FROM session_events WHERE account_id = $1 ORDER BY id", account_id)]
    assert kinds == ["sign_in", "link_failed"]
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE account_id = $1", account_id) == 1


async def test_expired_link_is_refused(client, db):
    address = new_email()
    token = await request_link(client, address)
    await db.execute("UPDATE magic_links SET expires_at = now() - interval '1 second' WHERE email = $1", address)
    resp = await client.post("/auth/confirm", json={"token": token, "age_confirmed": True})
    assert resp.status == 400 and (await resp.json())["error"] == "link_expired"
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE email = $1", address) == 0
    assert "ods_session" not in {c.key for c in client.session.cookie_jar}
    assert await db.fetchval(
        "SELECT count(*) FROM session_events WHERE kind = 'link_expired' AND region = 'loopback'") >= 1


async def test_tampered_and_unknown_links(client, db):
    address = new_email()
    token = await request_link(client, address)
    selector, verifier = token.split(".")
    flipped = verifier[:-2] + ("A" if verifier[-2] != "A" else "B") + verifier[-1]
    before = await db.fetchval("SELECT count(*) FROM session_events WHERE kind = 'link_failed'")
    for bad in (f"{selector}.{flipped}", f"{flipped[:22]}.{verifier}", "garbage", "a.b", "", None, 42,
                token + "x"):
        resp = await client.post("/auth/confirm", json={"token": bad, "age_confirmed": True})
        assert resp.status == 400, bad
        assert (await resp.json())["error"] == "invalid_link", bad
    assert await db.fetchval("SELECT count(*) FROM session_events WHERE kind = 'link_failed'") == before + 8
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE email = $1", address) == 0
    # None of that consumed the genuine link.
    resp = await client.post("/auth/confirm", json={"token": token, "age_confirmed": True})
    assert resp.status == 200


async def test_same_answer_whether_or_not_account_exists(client, db):
    known = new_email()
    await sign_in(client, known)
    client.session.cookie_jar.clear()
    unknown = new_email()
    answers = []
    for address in (known, unknown):
        resp = await client.post("/auth/magic-link", json={"email": address})
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in ("date", "x-request-id")}
        answers.append((resp.status, await resp.read(), headers))
    assert answers[0] == answers[1]
    await client.server.app[AUTH].drain()
    config = client.server.app[AUTH].config
    # Both addresses get the same mail; nothing about the account shows.
    known_mail, unknown_mail = mails_to(config, known)[-1], mails_to(config, unknown)[-1]
    assert known_mail["Subject"] == unknown_mail["Subject"]
    assert LINK.sub("", known_mail.get_content()) == LINK.sub("", unknown_mail.get_content())


async def test_bad_addresses_are_refused(client, db):
    before = await db.fetchval("SELECT count(*) FROM magic_links")
    for bad in ("", "no-at-sign", "a@b", "x@" + "y" * 300 + ".test", 5, None, "a b@example.test"):
        resp = await client.post("/auth/magic-link", json={"email": bad})
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_email", bad
    resp = await client.post("/auth/magic-link", data=b"{not json")
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_json"
    assert await db.fetchval("SELECT count(*) FROM magic_links") == before


async def test_rate_limit_per_address(aiohttp_client, service_urls, tmp_path):
    config = make_config(service_urls, tmp_path / "data", ODS_AUTH_LINK_RATE_PER_ADDRESS="2")
    client = await aiohttp_client(make_app(config))
    address = new_email()
    for _ in range(2):
        assert (await client.post("/auth/magic-link", json={"email": address})).status == 202
    resp = await client.post("/auth/magic-link", json={"email": address})
    assert resp.status == 429
    assert (await resp.json())["error"] == "rate_limited"
    assert 0 < int(resp.headers["Retry-After"]) <= 900
    # Case does not dodge it; another address is unaffected.
    assert await refusal(client.post("/auth/magic-link", json={"email": address.upper()})) == (429, "rate_limited")
    assert (await client.post("/auth/magic-link", json={"email": new_email()})).status == 202
    await client.server.app[AUTH].drain()
    assert len(mails_to(config, address)) == 2


async def test_rate_limit_per_network_holds_across_nodes(aiohttp_client, service_urls, tmp_path):
    # Two apps (two "nodes") sharing Redis share the counter; the key prefix is per run.
    prefix = f"{service_urls.prefix}{uuid.uuid4().hex[:6]}:"
    config = make_config(service_urls, tmp_path / "data", ODS_AUTH_LINK_RATE_PER_NETWORK="3",
                         ODS_REDIS_PREFIX=prefix)
    node_a = await aiohttp_client(make_app(config))
    node_b = await aiohttp_client(make_app(config))
    statuses = []
    for i in range(4):
        node = node_a if i % 2 == 0 else node_b
        statuses.append((await node.post("/auth/magic-link", json={"email": new_email()})).status)
    assert statuses == [202, 202, 202, 429]


async def test_cookie_flags(client, service_urls, tmp_path, aiohttp_client):
    token = await request_link(client, new_email())
    resp = await client.post("/auth/confirm", json={"token": token, "age_confirmed": True})
    cookies = {c.key: c for c in resp.cookies.values()}
    session = cookies["ods_session"]
    assert session["httponly"] and session["samesite"] == "Lax" and session["path"] == "/"
    assert not session["secure"]  # dev serves plain http on loopback
    assert int(session["max-age"]) == 30 * 86400
    assert not cookies["ods_csrf"]["httponly"]  # scripts echo it back
    # Outside dev the cookies are Secure.
    prod = dataclasses.replace(make_config(service_urls, tmp_path / "prod"), dev=False)
    prod_client = await aiohttp_client(make_app(prod))
    token = await request_link(prod_client, new_email())
    resp = await prod_client.post("/auth/confirm", json={"token": token, "age_confirmed": True})
    assert resp.status == 200
    raw = [v for k, v in resp.raw_headers if k == b"Set-Cookie"]
    assert raw and all(b"Secure" in v and b"HttpOnly" in v or b"ods_csrf" in v for v in raw)
    assert all(b"Secure" in v and b"SameSite=Lax" in v for v in raw)


async def test_csrf_rejection(client, db):
    csrf, account = await sign_in(client)
    before = await db.fetchval("SELECT display_name FROM accounts WHERE id = $1", account["id"])
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}):
        resp = await client.patch("/api/me", json={"display_name": "Mallory"}, headers=headers)
        assert resp.status == 403 and (await resp.json())["error"] == "csrf_failed", headers
        resp = await client.post("/auth/sign-out", headers=headers)
        assert (resp.status, (await resp.json())["error"]) == (403, "csrf_failed")
    assert await db.fetchval("SELECT display_name FROM accounts WHERE id = $1", account["id"]) == before
    assert (await client.get("/api/me")).status == 200  # still signed in
    resp = await client.patch("/api/me", json={"display_name": "Alice"}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 200 and (await resp.json())["display_name"] == "Alice"
    # Sign-in endpoints refuse other sites (login CSRF).
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        resp = await client.post("/auth/magic-link", json={"email": new_email()}, headers=headers)
        assert resp.status == 403 and (await resp.json())["error"] == "cross_origin"
        resp = await client.post("/auth/confirm", json={"token": "x.y"}, headers=headers)
        assert (resp.status, (await resp.json())["error"]) == (403, "cross_origin")


async def test_me_requires_session_and_validates(client):
    resp = await client.get("/api/me")
    assert resp.status == 401 and (await resp.json())["error"] == "not_signed_in"
    csrf, _ = await sign_in(client)
    h = {"X-CSRF-Token": csrf}
    for bad in ("", " ", "x" * 81, "bad\nname", 7):
        resp = await client.patch("/api/me", json={"display_name": bad}, headers=h)
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_display_name"
    resp = await client.patch("/api/me", json={"email": "x@y.test"}, headers=h)
    assert resp.status == 400 and (await resp.json())["error"] == "unknown_field"
    resp = await client.patch("/api/me", json={"display_name": "  Zoë  "}, headers=h)
    assert (await resp.json())["display_name"] == "Zoë"


async def test_session_idle_and_absolute_expiry(aiohttp_client, service_urls, tmp_path, db):
    # No per-node session reuse here: the test moves the clock by editing rows underneath the node.
    client = await aiohttp_client(make_app(make_config(
        service_urls, tmp_path / "data", ODS_AUTH_SESSION_CACHE_TTL="0",
        ODS_REDIS_PREFIX=f"{service_urls.prefix}{uuid.uuid4().hex[:8]}:")))
    csrf, account = await sign_in(client)
    assert (await client.get("/api/me")).status == 200
    await db.execute("UPDATE sessions SET last_seen_at = now() - interval '15 days' WHERE account_id = $1",
                     account["id"])
    resp = await client.get("/api/me")
    assert (resp.status, (await resp.json())["error"]) == (401, "not_signed_in")
    await sign_in(client, account["email"])
    assert (await client.get("/api/me")).status == 200
    await db.execute("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE account_id = $1",
                     account["id"])
    assert await refusal(client.get("/api/me")) == (401, "not_signed_in")


async def test_sign_out_and_revocation(client, aiohttp_client, db):
    address = new_email()
    csrf, account = await sign_in(client, address)
    other = await aiohttp_client(client.server)
    other_csrf, _ = await sign_in(other, address)
    listed = (await (await client.get("/api/sessions")).json())["sessions"]
    assert len(listed) == 2 and sum(s["current"] for s in listed) == 1
    stolen = client.session.cookie_jar.filter_cookies(client.make_url("/"))["ods_session"].value

    # Revoke the other device's session from this one.
    other_id = next(s["id"] for s in listed if not s["current"])
    resp = await client.delete(f"/api/sessions/{other_id}", headers={"X-CSRF-Token": csrf})
    assert resp.status == 204
    assert await refusal(other.get("/api/me")) == (401, "not_signed_in")
    assert await refusal(client.delete(f"/api/sessions/{other_id}", headers={"X-CSRF-Token": csrf})) == (404, "session_not_found")

    resp = await client.post("/auth/sign-out", headers={"X-CSRF-Token": csrf})
    assert resp.status == 200
    assert await refusal(client.get("/api/me")) == (401, "not_signed_in")
    # Replaying the old cookie value does not bring the session back.
    replay = await client.get("/api/me", cookies={"ods_session": stolen})
    assert (replay.status, (await replay.json())["error"]) == (401, "not_signed_in")
    rows = await db.fetch("SELECT kind, region FROM session_events WHERE account_id = $1 ORDER BY id",
                          account["id"])
    assert [r["kind"] for r in rows] == ["sign_in", "sign_in", "revoked", "sign_out"]
    assert {r["region"] for r in rows} == {"loopback"}


async def test_audit_and_sessions_keep_no_address(client, db):
    await sign_in(client)
    await client.post("/auth/confirm", json={"token": "garbage"})
    for table in ("session_events", "sessions", "magic_links"):
        rows = await db.fetch(f"SELECT * FROM {table}")
        dumped = " ".join(str(v) for r in rows for v in r.values())
        assert "127.0.0.1" not in dumped and "::1" not in dumped
    columns = {r["column_name"] for r in await db.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name IN ('session_events', 'sessions')")}
    assert not columns & {"ip", "ip_address", "address", "remote_addr"}
    resp = await client.get("/api/me/events")
    assert [e["kind"] for e in (await resp.json())["events"]] == ["sign_in"]


async def test_anonymous_viewer_cookie(gate_client, room_factory):
    room = await room_factory("public")
    page = await gate_client.get(f"/rooms/{room.slug}")
    cookie = page.cookies["ods_anon"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"
    status, first = await admit(gate_client, room.slug)
    anon_id = cookie.value.split(".")[0]
    assert status == 200 and first["subject"] == f"v:{anon_id}" and first["role"] == "viewer"
    # Stable across joins.
    assert (await admit(gate_client, room.slug))[1]["subject"] == first["subject"]
    # A forged cookie is not believed: the join gets no identity of its own choosing.
    gate_client.session.cookie_jar.clear()
    forged = f"{anon_id}x.{cookie.value.split('.')[1]}"
    status, other = await admit(gate_client, room.slug, headers={"Cookie": f"ods_anon={forged}"})
    assert status == 200 and other["subject"] not in (first["subject"], f"v:{anon_id}x")
    # Chat needs a stable author: a cookieless chat handshake is given a fresh
    # guest id on its 101 response, and the post is that guest's.
    gate_client.session.cookie_jar.clear()
    async with gate_client.ws_connect(f"/rooms/{room.slug}/chat") as ws:
        minted = gate_client.session.cookie_jar.filter_cookies(gate_client.make_url("/"))["ods_anon"].value
        await ws.send_json({"type": "join"})
        welcome = await ws.receive_json(timeout=10)
        assert welcome["type"] == "welcome" and welcome["you"]["can_post"] is True
        assert welcome["you"]["subject"] == f"v:{minted.split('.')[0]}" != first["subject"]


async def test_session_identity_at_the_gate(gate_client, room_factory):
    room = await room_factory("signed-in")
    status, body = await admit(gate_client, room.slug)
    assert (status, body["error"], body["plans"]) == (401, "sign_in_required", [])
    status, body = await admit(gate_client, room.slug, "chat")
    assert (status, body["error"]) == (401, "sign_in_required")
    _, account = await sign_in(gate_client)
    status, joined = await admit(gate_client, room.slug)
    assert status == 200 and joined["subject"] == account["subject"]
    # A WebSocket handshake from another site does not carry the session: the
    # real signaling and chat sockets both refuse it as anonymous.
    evil = {"Origin": "http://evil.example"}
    status, body = await admit(gate_client, room.slug, headers=evil)
    assert (status, body["error"]) == (401, "sign_in_required")
    status, body = await admit(gate_client, room.slug, "chat", headers=evil)
    assert (status, body["error"]) == (401, "sign_in_required")
    # The same-site handshake still carries it.
    status, body = await admit(gate_client, room.slug, "chat", headers={"Origin": str(gate_client.make_url("")).rstrip("/")})
    assert status == 200 and body["type"] == "ack"


async def test_api_tokens_listed_and_revoked_by_owner(gate_client, aiohttp_client, room_factory, db):
    csrf, account = await sign_in(gate_client)
    h = {"X-CSRF-Token": csrf}
    owned = await room_factory("public", owner_id=account["id"])
    resp = await gate_client.post("/api/tokens", json={"room": owned.slug, "role": "host", "ttl": "2h",
                                                       "label": "OBS"}, headers=h)
    assert resp.status == 201, await resp.text()
    minted = await resp.json()
    assert minted["token"].startswith("ods_") and minted["role"] == "host" and minted["label"] == "OBS"
    listed = (await (await gate_client.get("/api/tokens")).json())["tokens"]
    assert [t["id"] for t in listed] == [minted["id"]] and "token" not in listed[0] and listed[0]["active"]

    bearer = {"Authorization": f"Bearer {minted['token']}"}
    status, joined = await admit(gate_client, owned.slug, headers=bearer)
    assert status == 200 and joined["role"] == "host"
    assert await admit(gate_client, owned.slug, "publish", headers=bearer) == (400, {"error": "invalid_sdp"})

    # Not the owner: cannot revoke it.
    stranger = await aiohttp_client(gate_client.server)
    s_csrf, _ = await sign_in(stranger)
    resp = await stranger.delete(f"/api/tokens/{minted['id']}", headers={"X-CSRF-Token": s_csrf})
    assert (resp.status, (await resp.json())["error"]) == (404, "token_not_found")
    # A viewer of someone else's room cannot mint a host token for it.
    resp = await stranger.post("/api/tokens", json={"room": owned.slug, "role": "host"},
                               headers={"X-CSRF-Token": s_csrf})
    assert resp.status == 403 and (await resp.json())["error"] == "role_too_high"
    resp = await stranger.post("/api/tokens", json={"room": owned.slug, "role": "viewer"},
                               headers={"X-CSRF-Token": s_csrf})
    assert resp.status == 201

    resp = await gate_client.delete(f"/api/tokens/{minted['id']}", headers=h)
    assert resp.status == 204
    status, body = await admit(gate_client, owned.slug, headers=bearer)
    assert (status, body["error"]) == (401, "invalid_token")
    listed = (await (await gate_client.get("/api/tokens")).json())["tokens"]
    assert listed[0]["revoked_at"] is not None and not listed[0]["active"]

    for bad, reason in (({"room": owned.slug, "role": "god"}, "invalid_role"),
                        ({"room": owned.slug, "role": "host", "ttl": "0"}, "invalid_ttl"),
                        ({"room": owned.slug, "role": "host", "ttl": "400d"}, "invalid_ttl"),
                        ({"room": owned.slug, "role": "host", "ttl": "soon"}, "invalid_ttl"),
                        ({"room": "no-such-room-x", "role": "viewer"}, "room_not_found")):
        resp = await gate_client.post("/api/tokens", json=bad, headers=h)
        assert (await resp.json())["error"] == reason, bad
    count = await db.fetchval("SELECT count(*) FROM api_tokens WHERE account_id = $1", account["id"])
    assert count == 1


async def test_cached_sessions_are_dropped_on_every_node(aiohttp_client, config, db):
    # Two nodes; the browser's cookie is presented to both.
    node_a = await aiohttp_client(make_app(config))
    node_b = await aiohttp_client(make_app(config))
    csrf, account = await sign_in(node_a)
    cookie = node_a.session.cookie_jar.filter_cookies(node_a.make_url("/"))["ods_session"].value
    me_b = await node_b.get("/api/me", cookies={"ods_session": cookie})
    assert me_b.status == 200   # node B now holds it in its cache
    assert node_b.server.app[AUTH].sessions.get(cookie) is not None

    # A rename on node A reaches node B's cached identity.
    resp = await node_a.patch("/api/me", json={"display_name": "Renamed"}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 200
    deadline = asyncio.get_running_loop().time() + 5
    while node_b.server.app[AUTH].sessions.get(cookie) is not None:
        assert asyncio.get_running_loop().time() < deadline, "node B kept the stale session"
        await asyncio.sleep(0.02)
    assert (await (await node_b.get("/api/me", cookies={"ods_session": cookie})).json())["display_name"] == "Renamed"

    # Sign-out on node A: node B refuses the cookie well before its cache would expire.
    assert (await node_a.post("/auth/sign-out", headers={"X-CSRF-Token": csrf})).status == 200
    deadline = asyncio.get_running_loop().time() + 2   # cache TTL is 5 s
    while (await node_b.get("/api/me", cookies={"ods_session": cookie})).status != 401:
        assert asyncio.get_running_loop().time() < deadline, "revoked session still accepted on node B"
        await asyncio.sleep(0.02)


async def test_two_clicks_racing_on_one_link_sign_in_once(client, aiohttp_client, db):
    address = new_email()
    token = await request_link(client, address)
    other = await aiohttp_client(client.server)
    results = await asyncio.gather(
        client.post("/auth/confirm", json={"token": token, "age_confirmed": True}),
        other.post("/auth/confirm", json={"token": token, "age_confirmed": True}),
    )
    assert sorted(r.status for r in results) == [200, 400]
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE email = $1", address) == 1
    assert await db.fetchval(
        "SELECT count(*) FROM sessions s JOIN accounts a ON a.id = s.account_id WHERE a.email = $1", address) == 1


async def test_cors_stays_closed_on_account_endpoints(client):
    csrf, _ = await sign_in(client)
    evil = {"Origin": "http://evil.example"}
    for method, path in (("GET", "/api/me"), ("GET", "/api/tokens"), ("OPTIONS", "/api/me"),
                         ("OPTIONS", "/auth/magic-link"), ("OPTIONS", "/api/tokens")):
        resp = await client.request(method, path, headers={**evil, "Access-Control-Request-Method": "PATCH"})
        assert "Access-Control-Allow-Origin" not in resp.headers, (method, path)
        assert "Access-Control-Allow-Credentials" not in resp.headers, (method, path)


async def test_room_page_gives_a_viewer_the_id_later_joins_use(gate_client, room_factory):
    room = await room_factory("public")
    page = await gate_client.get(f"/rooms/{room.slug}")
    assert page.status == 200 and page.content_type == "text/html"
    cookie = page.cookies["ods_anon"]
    anon_id = cookie.value.split(".")[0]
    status, joined = await admit(gate_client, room.slug)
    assert status == 200 and joined["subject"] == f"v:{anon_id}"
    # The next page load keeps it; static assets never set one.
    again = await gate_client.get(f"/rooms/{room.slug}")
    assert "ods_anon" not in again.cookies
    gate_client.session.cookie_jar.clear()
    asset = await gate_client.get("/static/style.css")
    assert "ods_anon" not in asset.cookies
