"""Session reports, the operator page, deletion on request, policy versions and notices, security.txt."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from conftest import ODSMEDIA, make_config, odsmedia_env
from odsmedia.analytics import policy
from odsmedia.analytics.events import AudienceRecorder
from odsmedia.analytics.visitors import Viewer
from odsmedia.auth.service import AUTH
from test_auth import mails_to, new_email, sign_in

CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")


@pytest.fixture
def config(service_urls, tmp_path):
    # Own Redis prefix: every test signs in from 127.0.0.1 (the per-network link limit).
    return make_config(service_urls, tmp_path / "data", ODS_ANALYTICS_SAMPLE_INTERVAL="3600",
                       ODS_REDIS_PREFIX=f"{service_urls.prefix}{uuid.uuid4().hex[:8]}:",
                       ODS_SECURITY_CONTACT="mailto:security@example.test,https://example.test/report",
                       ODS_SECURITY_POLICY_URL="https://example.test/disclosure")


class _Request:
    """What the sink reads from a request: headers and the peer (never kept)."""

    def __init__(self, headers=None) -> None:
        self.headers = {"User-Agent": CHROME, **(headers or {})}
        self.remote = "127.0.0.1"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def synthetic_session(db, room, *, length: float = 300.0) -> int:
    """An ended episode with two viewers, chat, questions, a highlight and two replay plays; returns its id."""
    t0 = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(hours=1)
    episode = await db.fetchval(
        "INSERT INTO episodes (room_id, storage_key, title, started_at, ended_at, status, duration) "
        "VALUES ($1, 'k', 'Building an SFU', $2, $3, 'live', $4) RETURNING id",
        room.id, t0, t0 + timedelta(seconds=length), length)
    clock = Clock(t0.timestamp())
    recorder = AudienceRecorder(db, node="node-a", clock=clock, live_rooms=lambda: [room.id])
    views = {}
    events = {5: ("join", "ada"), 30: ("join", "bob"), 90: ("leave", "bob"), 125: ("leave", "ada"),
              20: ("message",), 40: ("message",), 70: ("question",), 75: ("message",), 80: ("answer",)}
    for second in range(0, int(length) + 1):
        clock.now = t0.timestamp() + second
        event = events.get(second)
        if event and event[0] == "join":
            views[event[1]] = recorder.start_view(room.id, Viewer("GB", "chrome", f"v:{event[1]}"), "webrtc")
        elif event and event[0] == "leave":
            views.pop(event[1]).end()
        elif event and event[0] in ("message", "question"):
            recorder.chat_item(_Request(), room.id, event[0])
        elif event and event[0] == "answer":
            recorder.question_answered(_Request(), room.id)
        if second and second % 10 == 0:
            await recorder.tick(10)
    await db.execute("UPDATE episodes SET status = 'ready' WHERE id = $1", episode)
    await db.execute("INSERT INTO chat_rooms (room_id, last_seq) VALUES ($1, 3) ON CONFLICT DO NOTHING", room.id)
    await db.executemany(
        "INSERT INTO chat_items (room_id, id, changed_seq, kind, author, author_name, body, votes, episode_id, "
        "episode_offset, answered_at) VALUES ($1, $2, $2, $3, 'v:x', 'Ada', $4, $5, $6, $7, $8)",
        [(room.id, 1, "question", "=why not mesh?", 3, episode, 70.0, t0 + timedelta(seconds=80)),
         (room.id, 2, "question", "which codec <b>?", 5, episode, 100.0, None),
         (room.id, 3, "highlight", "first frame", 0, episode, 42.0, None)])
    recorder.replay_play(room.id, episode, Viewer("GB", "chrome", "v:ada"))
    recorder.replay_progress(room.id, episode, 30.0, [0, 1, 2])
    recorder.replay_play(room.id, episode, Viewer("FR", "firefox", "v:cy"))
    recorder.replay_progress(room.id, episode, 10.0, [0])
    await recorder.flush()
    return episode


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


async def test_the_host_reads_the_session_report_and_its_csv(client, db, room_factory):
    _, host = await sign_in(client)
    room = await room_factory(owner_id=host["id"])
    episode = await synthetic_session(db, room)
    resp = await client.get(f"/episodes/{episode}/report")
    assert resp.status == 200, await resp.text()
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    html = await resp.text()

    def stat(key: str) -> str:
        return re.search(rf'id="stat-{key}"><dt>[^<]*</dt><dd>([^<]*)</dd>', html).group(1)

    # Samples every 10 s over 300 s: 3 x 1, 6 x 2, 3 x 1, 18 x 0 viewers.
    assert (stat("peak"), stat("average"), stat("unique")) == ("2", "0.6", "2")
    assert stat("watch") == "3:00 min"                    # Ada 120 s + Bob 60 s
    assert stat("questions") == "1 (1)"
    assert stat("chat-rate") == "0.6"                     # 3 messages in 5 minutes
    assert (stat("replay-plays"), stat("replay-watch")) == ("2", "0:40 min")
    assert html.count("<svg") == 3 and 'id="chart-viewers"' in html and 'id="chart-retention"' in html
    assert 'http-equiv="refresh"' not in html       # only a live session's report reloads itself
    assert "which codec &lt;b&gt;?" in html and "<b>?" not in html

    questions = _rows(await (await client.get(f"/episodes/{episode}/report.csv?table=top_questions")).text())
    assert questions == [["question", "votes", "answered", "at"], ["which codec <b>?", "5", "no", "1:40"],
                         ["'=why not mesh?", "3", "yes", "1:10"]]
    retention = _rows(await (await client.get(f"/episodes/{episode}/report.csv?table=replay_retention")).text())
    assert retention[:5] == [["from_second", "plays", "percent"], ["0", "2", "100.0"], ["10", "1", "50.0"],
                             ["20", "1", "50.0"], ["30", "0", "0.0"]]
    assert len(retention) == 1 + 31
    minutes = _rows(await (await client.get(f"/episodes/{episode}/report.csv?table=per_minute")).text())
    assert minutes == [["minute", "messages", "questions"], ["0", "2", "0"], ["1", "1", "1"], ["2", "0", "0"],
                       ["3", "0", "0"], ["4", "0", "0"]]
    resp = await client.get(f"/episodes/{episode}/report.csv?table=nope")
    assert resp.status == 400 and (await resp.json())["error"] == "unknown_table"


async def test_reports_are_for_the_host_and_operators_only(client, db, room_factory, service_urls, tmp_path,
                                                           token_factory):
    _, owner = await sign_in(client)
    room = await room_factory(owner_id=owner["id"])
    episode = await synthetic_session(db, room, length=60)
    client.session.cookie_jar.clear()
    resp = await client.get(f"/episodes/{episode}/report")
    assert resp.status == 401 and "Sign in" in await resp.text()
    assert resp.headers["Content-Type"].startswith("text/html")
    resp = await client.get(f"/episodes/{episode}/report.csv?table=highlights")
    assert resp.status == 401 and (await resp.json())["error"] == "not_signed_in"
    # A room token for a viewer is not enough; a host token is.
    viewer = await token_factory(room, "viewer")
    resp = await client.get(f"/episodes/{episode}/report", headers={"Authorization": f"Bearer {viewer}"})
    assert resp.status == 403 and resp.headers["Content-Type"].startswith("text/html")   # the page says it
    resp = await client.get(f"/episodes/{episode}/report.csv?table=highlights",
                            headers={"Authorization": f"Bearer {viewer}"})
    assert (resp.status, (await resp.json())["error"]) == (403, "not_the_host")
    host = await token_factory(room, "host")
    resp = await client.get(f"/episodes/{episode}/report", headers={"Authorization": f"Bearer {host}"})
    assert resp.status == 200
    # Someone else signed in: refused, until the CLI makes them an operator.
    _, other = await sign_in(client)
    assert (await client.get(f"/episodes/{episode}/report")).status == 403
    assert (await client.get("/operator")).status == 403
    env = odsmedia_env(service_urls, tmp_path / "cli")
    done = subprocess.run([*ODSMEDIA, "operator", "grant", other["email"]], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (await client.get(f"/episodes/{episode}/report")).status == 200
    assert (await client.get("/operator")).status == 200
    listed = subprocess.run([*ODSMEDIA, "operator", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and other["email"] in listed.stdout
    done = subprocess.run([*ODSMEDIA, "operator", "revoke", other["email"]], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "no longer an operator" in done.stdout
    assert (await client.get("/operator")).status == 403
    done = subprocess.run([*ODSMEDIA, "operator", "grant", "nobody-" + other["email"]], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no account" in done.stderr
    assert (await client.get("/episodes/999999999/report")).status == 404


async def test_operator_page_shows_live_rooms_sessions_and_days_with_csv(client, db, room_factory):
    _, operator = await sign_in(client)
    await db.execute("INSERT INTO operators (account_id) VALUES ($1)", operator["id"])
    room = await room_factory()
    episode = await synthetic_session(db, room, length=120)
    live_room = await room_factory()
    live = await db.fetchval("INSERT INTO episodes (room_id, storage_key, node) VALUES ($1, 'k', 'node-b') "
                             "RETURNING id", live_room.id)
    now = datetime.now(timezone.utc)
    await db.execute("INSERT INTO analytics_concurrency (room_id, at, node, viewers) VALUES ($1, $2, 'node-a', 4), "
                     "($1, $2, 'node-c', 3)", live_room.id, now)
    resp = await client.get("/operator")
    assert resp.status == 200
    html = await resp.text()
    assert f'href="/episodes/{episode}/report"' in html and f'href="/episodes/{live}/report"' in html
    assert 'id="chart-days"' in html and 'id="chart-watch"' in html
    for name in ("live_rooms", "sessions", "days"):
        assert f'href="/operator.csv?table={name}"' in html
    live_rows = _rows(await (await client.get("/operator.csv?table=live_rooms")).text())
    assert live_rows[0] == ["room", "title", "episode", "started", "viewers", "nodes"]
    [mine] = [r for r in live_rows[1:] if r[0] == live_room.slug]
    assert (mine[2], mine[4], mine[5]) == (str(live), "7", "node-a node-b node-c")
    sessions = _rows(await (await client.get("/operator.csv?table=sessions")).text())
    [row] = [r for r in sessions[1:] if r[0] == str(episode)]
    assert dict(zip(sessions[0], row)) | {"started": ""} == {
        "episode": str(episode), "room": room.slug, "title": "Building an SFU", "status": "ready", "started": "",
        "minutes": "2.0", "unique_viewers": "2", "peak_viewers": "2", "watch_hours": "0.05", "replay_plays": "2"}
    days = _rows(await (await client.get("/operator.csv?table=days")).text())
    assert len(days) == 31 and days[1][0] == now.date().isoformat()     # newest first


async def test_operator_deletes_an_account_on_request_with_an_audit_row(client, db, service_urls, tmp_path):
    csrf_other, other = await sign_in(client)
    client.session.cookie_jar.clear()
    csrf, operator = await sign_in(client)
    await db.execute("INSERT INTO operators (account_id) VALUES ($1)", operator["id"])
    url = "/api/operator/accounts/delete"
    resp = await client.post(url, json={"email": other["email"], "reason": "under-16 report"})
    assert resp.status == 403 and (await resp.json())["error"] == "csrf_failed"
    headers = {"X-CSRF-Token": csrf}
    resp = await client.post(url, json={"email": other["email"]}, headers=headers)
    assert resp.status == 400 and (await resp.json())["error"] == "reason_required"
    resp = await client.post(url, json={"email": "nobody@example.test", "reason": "x"}, headers=headers)
    assert (resp.status, (await resp.json())["error"]) == (404, "account_not_found")
    resp = await client.post(url, json={"email": operator["email"], "reason": "x"}, headers=headers)
    assert resp.status == 409 and (await resp.json())["error"] == "own_account"
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE id = $1", other["id"]) == 1
    resp = await client.post(url, json={"email": other["email"].upper(), "reason": "under-16 report"}, headers=headers)
    assert resp.status == 200, await resp.text()
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE id = $1", other["id"]) == 0
    audit = await db.fetchrow("SELECT * FROM account_deletions WHERE account_id = $1", other["id"])
    assert (audit["actor"], audit["reason"], json.loads(audit["removed"])["account"]) == \
        (f"a:{operator['id']}", "under-16 report", 1)
    # The CLI takes the same path.
    third = new_email()
    await db.execute("INSERT INTO accounts (email, age_confirmed_at) VALUES ($1, now())", third)
    third_id = await db.fetchval("SELECT id FROM accounts WHERE email = $1", third)
    env = odsmedia_env(service_urls, tmp_path / "cli")
    done = subprocess.run([*ODSMEDIA, "account", "delete", third, "--reason", "mailed request"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE email = $1", third) == 0
    assert await db.fetchval("SELECT actor || ':' || reason FROM account_deletions WHERE account_id = $1",
                             third_id) == "cli:mailed request"
    done = subprocess.run([*ODSMEDIA, "account", "delete", third, "--reason", "again"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "account_not_found" in done.stderr


async def test_self_service_deletion_is_audited_too(client, db):
    csrf, account = await sign_in(client)
    resp = await client.delete("/api/me", json={"confirm_email": account["email"]}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 200
    assert await db.fetchval("SELECT actor FROM account_deletions WHERE account_id = $1", account["id"]) == "self"


async def test_a_material_policy_change_mails_once_and_asks_for_acknowledgement(client, db, config, service_urls,
                                                                                 tmp_path):
    csrf, account = await sign_in(client)
    assert (await (await client.get("/api/policy/notice")).json()) == {"notice": None}
    resp = await client.get("/privacy")
    assert resp.status == 200 and "Privacy Policy" in await resp.text()
    version = f"v-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "policy.txt"
    path.write_text("Privacy Policy\n\nLast updated: 2026-12-01\n\nWe now keep <less>.\n")
    env = odsmedia_env(service_urls, config.data_dir)
    done = subprocess.run([*ODSMEDIA, "policy", "publish", str(path), "--version", version, "--material"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"published version {version}" in done.stdout
    [mail] = [m for m in mails_to(config, account["email"]) if m["X-ODS-Template"] == "policy_changed"]
    assert f"/privacy?version={version}" in mail.get_content()
    # Nothing is left to send: every node's mailer finds no pending row, so no second e-mail.
    assert await policy.send_pending(db, client.app[AUTH].mailer, public_url="http://x") == 0
    assert len([m for m in mails_to(config, account["email"]) if m["X-ODS-Template"] == "policy_changed"]) == 1
    # Publishing the same version again is refused.
    done = subprocess.run([*ODSMEDIA, "policy", "publish", str(path), "--version", version], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "already published" in done.stderr

    html = await (await client.get("/privacy")).text()
    assert f'data-version="{version}"' in html and "We now keep &lt;less&gt;." in html
    assert (await client.get("/privacy?version=nope")).status == 404
    notice = (await (await client.get("/api/policy/notice")).json())["notice"]
    assert notice["version"] == version
    resp = await client.post("/api/policy/acknowledge", json={"version": "nope"}, headers={"X-CSRF-Token": csrf})
    assert (resp.status, (await resp.json())["error"]) == (404, "unknown_version")
    resp = await client.post("/api/policy/acknowledge", json={"version": version}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 200
    assert (await (await client.get("/api/policy/notice")).json()) == {"notice": None}
    assert await db.fetchval("SELECT version FROM policy_acknowledgements WHERE account_id = $1",
                             account["id"]) == version
    # The data export says what was acknowledged and mailed.
    exported = (await (await client.get("/api/me/export")).json())["privacy_policy"]
    assert [a["version"] for a in exported["acknowledgements"]] == [version]
    assert [m["version"] for m in exported["notice_emails"]] == [version] and exported["notice_emails"][0]["sent_at"]


def test_policy_version_comes_from_the_file_unless_named():
    assert policy.version_of("x\nLast updated: 2025-11-30\n") == "2025-11-30"
    assert policy.version_of("no date").startswith("sha-")
    assert policy.version_of("x", "2026.1") == "2026.1"
    with pytest.raises(policy.PolicyError):
        policy.version_of("x", "bad version!")


async def test_security_txt_follows_rfc_9116_from_configuration(client):
    resp = await client.get("/.well-known/security.txt")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    lines = (await resp.text()).splitlines()
    fields = [line.split(": ", 1) for line in lines]
    assert [f for f in fields if f[0] == "Contact"] == [["Contact", "mailto:security@example.test"],
                                                        ["Contact", "https://example.test/report"]]
    [expires] = [f[1] for f in fields if f[0] == "Expires"]
    left = datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)
    assert timedelta(days=170) < left < timedelta(days=366)
    assert ["Policy", "https://example.test/disclosure"] in fields


async def test_no_security_txt_without_a_contact(aiohttp_client, service_urls, tmp_path):
    from odsmedia.app import make_app

    client = await aiohttp_client(make_app(make_config(service_urls, tmp_path / "d")))
    assert (await client.get("/.well-known/security.txt")).status == 404


async def test_a_live_sessions_report_follows_it(client, db, room_factory):
    _, host = await sign_in(client)
    room = await room_factory(owner_id=host["id"])
    episode = await db.fetchval("INSERT INTO episodes (room_id, storage_key, started_at) "
                                "VALUES ($1, 'k', now() - interval '90 seconds') RETURNING id", room.id)
    html = await (await client.get(f"/episodes/{episode}/report")).text()
    assert '<meta http-equiv="refresh" content="30">' in html and "· live" in html
    assert re.search(r'id="stat-peak"><dt>[^<]*</dt><dd>0</dd>', html)
