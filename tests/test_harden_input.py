"""Malformed input is a 4xx with a reason, never a 500 or a retryable `unavailable`
(issue 11, items 5, 6, 9 and 12)."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest

from conftest import make_config
from odsmedia.app import make_app
from test_auth import new_email, sign_in
from test_chat_support import ChatSocket
from test_replay_routes import app_client, record  # noqa: F401


@pytest.fixture
def config(service_urls, tmp_path):
    return make_config(service_urls, tmp_path / "data", ODS_REDIS_PREFIX=f"{service_urls.prefix}{uuid.uuid4().hex[:8]}:")


async def raw_request(client, head: bytes) -> tuple[int, bytes]:
    """Send bytes the aiohttp client would refuse to (headers that are not UTF-8)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data


async def test_range_with_a_huge_number_and_foreign_digits(app_client, room_factory):
    room = await room_factory()
    episode_id = await record(app_client.app, room, 2.0)
    url = f"/episodes/{episode_id}/00001-0.m4s"
    whole = await (await app_client.get(url)).read()
    huge = "9" * 5000
    resp = await app_client.get(url, headers={"Range": f"bytes={huge}-"})
    assert resp.status == 416 and (await resp.json())["error"] == "range_not_satisfiable"
    resp = await app_client.get(url, headers={"Range": f"bytes=0-{huge}"})
    assert resp.status == 206 and await resp.read() == whole
    resp = await app_client.get(url, headers={"Range": f"bytes=-{huge}"})
    assert resp.status == 206 and await resp.read() == whole
    # Arabic-Indic digits are no byte positions: the header is malformed and ignored (RFC 9110).
    resp = await app_client.get(url, headers={"Range": "bytes=\u0661-\u0662"})
    assert resp.status == 200 and await resp.read() == whole
    refusals = {}
    for query in ("limit=%C2%B2", "limit=%D9%A1", "before=%D9%A1", "before=99999999999999999999", "limit=1%00"):
        resp = await app_client.get(f"/rooms/{room.slug}/episodes?{query}", headers={"Accept": "application/json"})
        refusals[query] = (resp.status, (await resp.json())["error"])
    for path in (f"/episodes/%D9%A1{episode_id}", "/episodes/99999999999999999999",
                 f"/episodes/{episode_id}/chat?from=%D9%A1"):
        resp = await app_client.get(path)
        refusals[path] = (resp.status, (await resp.json())["error"])
    assert refusals == {
        "limit=%C2%B2": (400, "invalid_limit"), "limit=%D9%A1": (400, "invalid_limit"),
        "before=%D9%A1": (400, "invalid_before"), "before=99999999999999999999": (400, "invalid_before"),
        "limit=1%00": (400, "invalid_limit"),
        f"/episodes/%D9%A1{episode_id}": (404, "not_found"), "/episodes/99999999999999999999": (404, "episode_not_found"),
        f"/episodes/{episode_id}/chat?from=%D9%A1": (400, "invalid_from"),
    }


async def test_foreign_digits_in_a_path_id_revoke_nothing(client, db):
    csrf, account = await sign_in(client)
    session_id = await db.fetchval("SELECT max(id) FROM sessions WHERE account_id = $1", account["id"])
    digits = "".join(chr(0x0660 + int(d)) for d in str(session_id))      # Arabic-Indic
    encoded = "".join(f"%{b:02X}" for b in digits.encode())
    for path in (f"/api/sessions/{encoded}", "/api/sessions/99999999999999999999", "/api/tokens/%C2%B2"):
        resp = await client.delete(path, headers={"X-CSRF-Token": csrf})
        assert resp.status == 404 and (await resp.json())["error"] == "not_found", path
    assert await db.fetchval("SELECT revoked_at FROM sessions WHERE id = $1", session_id) is None
    assert (await client.get("/api/me")).status == 200


async def test_nul_is_refused_in_every_text_field(client, db, room_factory, token_factory):
    room = await room_factory()
    csrf, account = await sign_in(client)
    resp = await client.get(f"/rooms/{room.slug}/chat/search", params={"q": "a\x00b"})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_query"
    resp = await client.get(f"/rooms/{room.slug}/chat/search", params={"q": "x", "limit": "\u00b2"})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_limit"
    resp = await client.post("/auth/magic-link", json={"email": "a\x00b@example.test"})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_email"
    before = await db.fetchval("SELECT count(*) FROM api_tokens")
    resp = await client.post("/api/tokens", json={"room": room.slug, "role": "viewer", "label": "x\x00y"},
                             headers={"X-CSRF-Token": csrf})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_label"
    assert await db.fetchval("SELECT count(*) FROM api_tokens") == before
    host = await ChatSocket.open(client.session, str(client.make_url(f"/rooms/{room.slug}/chat")),
                                 token=await token_factory(room, "host"))
    viewer = await ChatSocket.open(client.session, str(client.make_url(f"/rooms/{room.slug}/chat")),
                                   token=await token_factory(room, "viewer"))
    target = viewer.welcome["you"]["subject"]
    reply = await host.request({"type": "ban", "target": target, "reason": "spam\x00"})
    assert reply["type"] == "error" and reply["error"] == "invalid_reason"
    for i, raw in enumerate(('{"type": "upvote", "id": 18446744073709551615, "ref": "big0"}',
                             '{"type": "upvote", "id": 1180591620717411303424, "ref": "big1"}',
                             '{"type": "delete", "id": 9223372036854775808, "ref": "big2"}',
                             '{"type": "answer", "id": 9223372036854775808, "ref": "big3"}',
                             '{"type": "timeout", "target": "%s", "minutes": 18446744073709551615, "ref": "big4"}'
                             % target)):
        await host.ws.send_str(raw)
        reply = await host.wait(lambda e, ref=f"big{i}": e.get("ref") == ref)
        assert reply["type"] == "error" and reply["error"].startswith("invalid_"), (raw, reply)
    assert await db.fetchval("SELECT count(*) FROM chat_sanctions WHERE room_id = $1", room.id) == 0
    await host.close()
    await viewer.close()
    # A resume cursor beyond int64 is a typed refusal, not a dropped socket.
    ws = await client.session.ws_connect(str(client.make_url(f"/rooms/{room.slug}/chat")))
    await ws.send_str('{"type": "join", "after": 18446744073709551615}')
    error = await ws.receive_json(timeout=5)
    assert error["error"] == "invalid_after"
    await ws.close()


async def test_headers_that_are_not_utf8_are_refused_cleanly(client, room_factory, db):
    room = await room_factory()
    host = f"{client.server.host}:{client.server.port}".encode()
    cases = [
        (b"GET /api/me HTTP/1.1\r\nHost: " + host + b"\r\nCookie: ods_session=\xff\xfe\xfd\r\nConnection: close\r\n\r\n",
         (401, "not_signed_in")),
        (b"GET /api/rooms/" + room.slug.encode() + b"/participants HTTP/1.1\r\nHost: " + host +
         b"\r\nAuthorization: Bearer ods_\xff\xfe\r\nConnection: close\r\n\r\n", (401, "invalid_token")),
        (b"GET /api/rooms/" + room.slug.encode() + b"/participants HTTP/1.1\r\nHost: " + host +
         b"\r\nCookie: ods_anon=\xc3\x28.abc\r\nConnection: close\r\n\r\n", (200, None)),
        (b"POST /api/me HTTP/1.1\r\nHost: " + host + b"\r\nCookie: ods_session=abc\r\nX-CSRF-Token: \xff\xff\r\n"
         b"Content-Length: 0\r\nConnection: close\r\n\r\n", (403, "csrf_failed")),
        (b"POST /billing/webhook HTTP/1.1\r\nHost: " + host + b"\r\nStripe-Signature: t=1,v1=\xff\xfe\r\n"
         b"Content-Length: 2\r\nConnection: close\r\n\r\n{}", (503, "billing_unavailable")),   # no webhook secret here
    ]
    for head, expected in cases:
        status, data = await raw_request(client, head)
        reason = re.search(rb'"error": ?"([a-z_]+)"', data)
        assert (status, reason and reason.group(1).decode()) == expected, data[:400]
    assert (await client.get("/healthz")).status == 200


async def test_csrf_is_checked_when_authorization_does_not_authenticate(client, db, room_factory, token_factory):
    csrf, account = await sign_in(client)
    for header in ("x", "Bearer ods_unknown", "Basic dXNlcjpwdw==", "Bearer "):
        resp = await client.patch("/api/me", json={"display_name": "Mallory"}, headers={"Authorization": header})
        assert resp.status == 403 and (await resp.json())["error"] == "csrf_failed", header
    assert await db.fetchval("SELECT display_name FROM accounts WHERE id = $1", account["id"]) != "Mallory"
    # A token that does authenticate is not cookie-authenticated: no CSRF token needed (WHIP from the host page).
    room = await room_factory()
    token = await token_factory(room, "viewer")
    resp = await client.post(f"/rooms/{room.slug}/whep", data="v=0", headers={"Authorization": f"Bearer {token}",
                                                                              "Content-Type": "application/sdp"})
    # Past CSRF and the gate, WHEP answers for itself: nothing is live in this room.
    assert (resp.status, (await resp.json())["error"]) == (409, "nothing_published")


SPOOFS = ("\u202eevil", "ad\u200bmin", "a\u2066b\u2069", "\ufeffname", "x\u2060y", "tab\x07", "rtl\u202b")


async def test_one_display_name_rule_everywhere(client, room_factory, token_factory, db):
    from testsupport.peers import SignalingClient, SignalingError

    csrf, account = await sign_in(client)
    for name in SPOOFS:
        resp = await client.patch("/api/me", json={"display_name": name}, headers={"X-CSRF-Token": csrf})
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_display_name", repr(name)
    resp = await client.patch("/api/me", json={"display_name": "  Jose\u0301   M. "}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 200 and (await resp.json())["display_name"] == "Jos\u00e9 M."   # NFC, spaces collapsed

    room = await room_factory()
    for name in SPOOFS:
        sig = SignalingClient(str(client.make_url("")), room.slug)
        await sig.connect()
        try:
            with pytest.raises(SignalingError) as exc:
                await sig.join(name=name, token=await token_factory(room, "viewer"))
            assert exc.value.code == "invalid_message", repr(name)
        finally:
            await sig.close()
    # Chat: a guest name outside the rule is not used; text with a bidi override is refused.
    viewer = await ChatSocket.open(client.session, str(client.make_url(f"/rooms/{room.slug}/chat")),
                                   token=await token_factory(room, "viewer"), name="\u202eevil")
    assert "\u202e" not in viewer.welcome["you"]["name"]
    reply = await viewer.post("look \u202eright")
    assert reply["type"] == "error" and reply["error"] == "invalid_text"
    reply = await viewer.post("line one\nline\ttwo")
    assert reply["type"] == "ack"
    await viewer.close()
