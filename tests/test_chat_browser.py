"""chat.js on the shipped pages in headless Chromium: text stays text, live updates,
moderation, resuming after a drop, replay in sync with the episode's video."""

from __future__ import annotations

import asyncio

import pytest

from test_chat_support import ChatSocket
from test_replay_browser import app_client, record  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser

PAYLOADS = [
    '<img src=x onerror="window.__xss = 1">',
    "<script>window.__xss = 2</script>",
    "<b>not bold</b> &amp; &lt;tags&gt;",
]


async def until(page, expression: str, timeout: float = 10.0) -> None:
    """Poll a JS condition with a deadline (page.wait_for_function evals strings, which the CSP forbids)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await page.evaluate(expression):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def site(client):
    return client


async def test_chat_text_renders_as_text_never_markup(site, browser, room_factory, token_factory):
    client = site
    room = await room_factory()
    viewer_token = await token_factory(room, "viewer")
    host = await ChatSocket.open(client, f"/rooms/{room.slug}/chat", token=await token_factory(room, "host"))
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(str(client.make_url(f"/rooms/{room.slug}?token={viewer_token}")))
        await page.wait_for_selector('section#chat[data-state="connected"]', timeout=10000)
        # Typed into the page's own form by the viewer...
        for text in PAYLOADS[:2]:
            await page.fill(".chat-input", text)
            await page.click(".chat-send")
            await host.wait(lambda e, t=text: e["type"] == "item" and e["item"]["text"] == t)
        # ... and arriving from someone else over the socket.
        await host.post(PAYLOADS[2])
        await until(page, "document.querySelectorAll('.chat-list li').length === 3")
        texts = await page.eval_on_selector_all(".chat-list .chat-text", "els => els.map(e => e.textContent)")
        assert texts == PAYLOADS
        markup = await page.eval_on_selector_all(".chat-list img, .chat-list script, .chat-list b", "els => els.length")
        assert markup == 0
        assert await page.evaluate("window.__xss === undefined")
        # A moderator's deletion disappears from the page.
        first_id = int(await page.get_attribute(".chat-list li", "data-id"))
        assert (await host.request({"type": "delete", "id": first_id}))["type"] == "ack"
        await until(page, "document.querySelectorAll('.chat-list li').length === 2")
        assert errors == []
    finally:
        await page.close()
        await host.close()


async def test_moderator_controls_show_for_moderators_and_act(site, browser, room_factory, token_factory):
    client = site
    room = await room_factory()
    mod_token = await token_factory(room, "moderator")
    viewer = await ChatSocket.open(client, f"/rooms/{room.slug}/chat", token=await token_factory(room, "viewer"))
    await viewer.post("<i>hello</i> mods")
    page = await browser.new_page()
    try:
        await page.goto(str(client.make_url(f"/rooms/{room.slug}?token={mod_token}")))
        await page.wait_for_selector(".chat-list li .chat-actions", timeout=10000)
        assert await page.is_visible(".chat-modbar")
        await page.click(".chat-list li button[title='Time out for 10 minutes']")
        notice = await viewer.wait(lambda e: e["type"] == "sanction")
        assert notice["target"] == viewer.welcome["you"]["subject"]
        assert (await viewer.post("can I talk?"))["error"] == "timed_out"
        await page.click(".chat-modbar button[title='Running timeouts and bans']")
        target = viewer.welcome["you"]["subject"]
        # Listed by the name they chat under, not by their subject id.
        spoke_as = await page.text_content(".chat-list li .chat-name")
        await page.wait_for_selector(f".chat-sanctions li[data-target='{target}']", timeout=15000)
        assert await page.text_content(f".chat-sanctions li[data-target='{target}'] .chat-name") == spoke_as != target
        await page.click(f".chat-sanctions li[data-target='{target}'] button")
        lifted = await viewer.wait(lambda e: e["type"] == "sanction_lifted")
        assert lifted["target"] == target and lifted["sanction"] == "timeout"
        assert (await viewer.post("thanks"))["type"] == "ack"
        await page.select_option(".chat-slow", "30")
        assert (await viewer.wait(lambda e: e["type"] == "settings"))["slow_mode"] == 30
    finally:
        await page.close()
        await viewer.close()


async def test_a_timed_out_viewer_is_told_until_when_and_the_notice_goes_when_lifted(site, browser, room_factory,
                                                                                     token_factory):
    client = site
    room = await room_factory()
    mod = await ChatSocket.open(client, f"/rooms/{room.slug}/chat", token=await token_factory(room, "moderator"))
    page = await browser.new_page()
    try:
        await page.goto(str(client.make_url(f"/rooms/{room.slug}?token={await token_factory(room, 'viewer')}")))
        await page.wait_for_selector('section#chat[data-state="connected"]', timeout=10000)
        target = await page.evaluate("document.querySelector('section#chat').odsChat.you.subject")
        reply = await mod.request({"type": "timeout", "target": target, "minutes": 10})
        until_local = await page.evaluate(
            f"new Date({reply['until']!r}).toLocaleTimeString([], {{hour: '2-digit', minute: '2-digit'}})")
        expected = f"You are timed out until {until_local}."
        await until(page, f"document.querySelector('.chat-status').textContent === {expected!r}")
        # Posting anyway gets the same sentence (the server's refusal carries the time, not its text).
        await page.evaluate("document.querySelector('.chat-status').textContent = ''")
        await page.fill(".chat-input", "can I talk?")
        await page.press(".chat-input", "Enter")
        await until(page, f"document.querySelector('.chat-status').textContent === {expected!r}")
        assert await page.input_value(".chat-input") == "can I talk?"
        assert (await mod.request({"type": "end_timeout", "target": target}))["type"] == "ack"
        await until(page, "document.querySelector('.chat-status').textContent === ''")
    finally:
        await page.close()
        await mod.close()


async def test_replay_shows_chat_in_sync_with_the_video_and_jumps_to_highlights(
        app_client, browser, room_factory, db):
    room = await room_factory()
    episode = await record(app_client.app, room, 20.0)
    for n, (offset, kind, text) in enumerate([(3.0, "message", "<b>first</b>"), (5.0, "message", "second"),
                                              (8.0, "highlight", "the fix"), (11.0, "highlight", "")], start=1):
        await db.execute(
            "INSERT INTO chat_items (room_id, id, changed_seq, kind, author, author_name, body, episode_id, "
            "episode_offset) VALUES ($1, $2, $2, $3, 'v:x', 'X', $4, $5, $6)", room.id, n, kind, text, episode, offset)
    page = await browser.new_page()
    try:
        await page.goto(str(app_client.make_url(f"/episodes/{episode}/watch")))
        await page.wait_for_selector('section#chat[data-state="loaded"]', timeout=10000)
        await until(page, "document.querySelector('#video').readyState >= 1")
        await page.evaluate("(() => { const v = document.querySelector('#video'); v.pause(); v.currentTime = 0; })()")
        assert await page.eval_on_selector_all(".chat-jump .chat-text", "els => els.map(e => e.textContent)") == [
            "the fix", "(highlight)"]
        await until(page, "document.querySelector('section#chat').dataset.shown === '0'")   # at 0 s nothing yet
        await page.click(".chat-jump:first-child button")  # jump to 8 s
        await until(page, "document.querySelector('section#chat').dataset.shown === '3'")
        assert await page.evaluate("Math.round(document.querySelector('#video').currentTime)") == 8
        texts = await page.eval_on_selector_all(".chat-list .chat-text", "els => els.map(e => e.textContent)")
        assert texts == ["<b>first</b>", "second", "the fix"]
        await page.evaluate("document.querySelector('#video').currentTime = 4")
        await until(page, "document.querySelector('section#chat').dataset.shown === '1'")
        await page.evaluate("document.querySelector('#video').currentTime = 11.5")
        await until(page, "document.querySelector('section#chat').dataset.shown === '4'")
        # Searching the room's chat opens the episode at the moment the message was posted.
        await page.goto(str(app_client.make_url(f"/rooms/{room.slug}/episodes")))
        await page.fill("#search-q", "second")
        await page.click("#search button")
        await page.click("#search-results li[data-item='2'] a")
        await page.wait_for_url(f"**/episodes/{episode}/watch?t=5")
        await until(page, "Math.round(document.querySelector('#video').currentTime) >= 5")
        await until(page, "Number(document.querySelector('section#chat').dataset.shown) >= 2")
    finally:
        await page.close()


async def test_the_viewer_page_mounts_chat_and_a_guest_posts_as_text(site, browser, room_factory, token_factory):
    client = site
    room = await room_factory()
    host = await ChatSocket.open(client, f"/rooms/{room.slug}/chat", token=await token_factory(room, "host"))
    page = await browser.new_page()
    try:
        await page.goto(str(client.make_url(f"/rooms/{room.slug}")))
        await page.wait_for_selector('section#chat[data-state="connected"]', timeout=15000)
        assert await page.get_attribute("section#chat", "data-room") == room.slug
        payload = "<svg onload=alert(1)> hi from a guest"
        await page.fill(".chat-input", payload)
        await page.click(".chat-send")
        event = await host.wait(lambda e: e["type"] == "item" and e["item"]["text"] == payload)
        assert event["item"]["author"].startswith("v:")  # the page's anonymous cookie identified the guest
        await page.wait_for_selector(".chat-list li .chat-text", timeout=10000)
        assert await page.text_content(".chat-list li .chat-text") == payload
        assert await page.eval_on_selector_all(".chat-list svg", "els => els.length") == 0
    finally:
        await page.close()
        await host.close()


async def test_the_replay_page_mounts_chat_in_replay_mode_with_jump_points(site, browser, room_factory, db):
    client = site
    room = await room_factory()
    episode = await db.fetchval(
        "INSERT INTO episodes (room_id, storage_key, status) VALUES ($1, 'k', 'ready') RETURNING id", room.id)
    await db.execute(
        "INSERT INTO chat_items (room_id, id, changed_seq, kind, author, author_name, body, episode_id, "
        "episode_offset) VALUES ($1, 1, 1, 'highlight', 'v:x', 'X', '<i>the fix</i>', $2, 12.5)", room.id, episode)
    page = await browser.new_page()
    try:
        await page.goto(str(client.make_url(f"/episodes/{episode}/watch")))
        await page.wait_for_selector('section#chat[data-state="loaded"]', timeout=15000)
        assert await page.get_attribute("section#chat", "data-episode") == str(episode)
        assert await page.text_content(".chat-jump .chat-text") == "<i>the fix</i>"
        assert await page.eval_on_selector_all(".chat-jump i", "els => els.length") == 0
    finally:
        await page.close()


async def test_the_page_reconnects_and_resumes_without_gaps_or_duplicates(site, browser, room_factory,
                                                                          token_factory):
    from odsmedia.chat.feature import CHAT

    client = site
    room = await room_factory()
    viewer_token = await token_factory(room, "viewer")
    host = await ChatSocket.open(client, f"/rooms/{room.slug}/chat", token=await token_factory(room, "host"))
    first = await host.post("before the drop")
    page = await browser.new_page()
    try:
        await page.goto(str(client.make_url(f"/rooms/{room.slug}?token={viewer_token}")))
        await page.wait_for_selector('section#chat[data-state="connected"]', timeout=10000)
        hub = client.server.app[CHAT].hub
        browser_client = next(c for c in hub.rooms[room.slug].clients if c.role == "viewer")
        # The server drops the page's socket (as a restart would); posts go on at once,
        # well inside the page's first reconnect delay (>= 125 ms).
        browser_client.close(1012, None)
        missed = [await host.post(f"while away {i}") for i in range(3)]
        assert (await host.request({"type": "delete", "id": first["id"]}))["type"] == "ack"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not any(c.role == "viewer" and c is not browser_client for c in hub.rooms[room.slug].clients):
            assert loop.time() < deadline, "the page did not reconnect"
            await asyncio.sleep(0.05)
        await until(page, "document.querySelectorAll('.chat-list li').length === 3")
        ids = await page.eval_on_selector_all(".chat-list li", "els => els.map(e => Number(e.dataset.id))")
        assert ids == [m["id"] for m in missed]
        live = await host.post("after the resume")
        await until(page, "document.querySelectorAll('.chat-list li').length === 4")
        texts = await page.eval_on_selector_all(".chat-list .chat-text", "els => els.map(e => e.textContent)")
        assert texts == ["while away 0", "while away 1", "while away 2", "after the resume"]
        assert live["id"] > missed[-1]["id"]
    finally:
        await page.close()
        await host.close()


async def test_the_host_page_sorts_questions_by_votes_and_marks_one_answered(site, browser, room_factory,
                                                                              token_factory):
    client = site
    room = await room_factory()
    url = f"/rooms/{room.slug}/chat"
    askers = [await ChatSocket.open(client, url, token=await token_factory(room, "viewer")) for _ in range(3)]
    try:
        ids = [(await a.post(f"question {n}", "question"))["id"] for n, a in enumerate(askers)]
        # question 2 gets two votes, question 1 one: the order is 2, 1, 0.
        for voter, item in ((askers[0], ids[2]), (askers[1], ids[2]), (askers[0], ids[1])):
            assert (await voter.request({"type": "upvote", "id": item}))["type"] == "ack"
        page = await browser.new_page()
        try:
            await page.goto(str(client.make_url(f"/rooms/{room.slug}/host?token={await token_factory(room, 'host')}")))
            await page.wait_for_selector("section#chat[data-role='host']", timeout=15000)
            # Keyboard only: the selected tab takes focus, an arrow key moves to Questions.
            await page.focus(".chat-tabs button[data-filter='all']")
            await page.keyboard.press("ArrowRight")
            assert await page.get_attribute(".chat-tabs button[data-filter='question']", "aria-selected") == "true"
            assert await page.evaluate("document.activeElement.dataset.filter") == "question"
            assert await page.text_content(".chat-tabs button[data-filter='question']") == "Questions (3)"
            texts = "[...document.querySelectorAll('.chat-list .chat-text')].map(e => e.textContent)"
            assert await page.evaluate(texts) == ["question 2", "question 1", "question 0"]
            await page.click(f".chat-list li[data-id='{ids[2]}'] button[aria-label='Mark answered']")
            await askers[0].wait(lambda e: e["type"] == "item" and e["item"]["id"] == ids[2] and e["item"]["answered"])
            await until(page, f"{texts}.join() === 'question 1,question 0,question 2'")
            assert await page.text_content(f".chat-list li[data-id='{ids[2]}'] .chat-answered") == "answered"
            assert await page.text_content(".chat-tabs button[data-filter='question']") == "Questions (2)"
        finally:
            await page.close()
    finally:
        for a in askers:
            await a.close()
