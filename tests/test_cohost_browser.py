"""Co-hosting on the shipped pages, in headless Chromium.

The host opens host.html with the token an operator printed, presses
"Invite co-host" and hands the link to a second person (another browser
context), who opens it, gives a name and joins as a co-host: they go live
with camera and screen, the host with camera.  A viewer page lays the room
out: the screen large, both cameras as picture-in-pictures labelled with
their publishers' names, every video decoding.  When the screen stops, the
two cameras sit side by side.  A used invitation link shows its reason and
leaves the page off the air.  A moderator mutes the co-host's camera from
the people list and her screen keeps playing.
"""

from __future__ import annotations

import asyncio

import pytest

from test_studio_browser import server, until  # noqa: F401  (the fixture: `odsmedia serve` with a room)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

# Each figure on the viewer's stage: who it shows, its label, whether it is a PiP, and its video's state.
FIGURES = """[...document.querySelectorAll('#videos figure')].map(f => {
    const v = f.querySelector('video'), box = f.getBoundingClientRect();
    return {screen: f.classList.contains('screen'), pip: f.classList.contains('pip'),
            hidden: f.classList.contains('pip-hidden'), label: f.querySelector('figcaption').textContent,
            width: v.videoWidth, time: v.currentTime, left: Math.round(box.left), top: Math.round(box.top),
            w: Math.round(box.width)};
})"""


async def figures_playing(page, count: int, timeout: float = 60.0) -> list[dict]:
    """Poll until `count` figures each decode (videoWidth > 0) and advance (currentTime grows)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    first: list[dict] | None = None
    while True:
        figures = await page.evaluate(FIGURES)
        if len(figures) == count and all(f["width"] > 0 for f in figures):
            if first is None or [f["label"] for f in first] != [f["label"] for f in figures]:
                first = figures
            elif all(now["time"] > then["time"] for now, then in zip(figures, first)):
                return figures
        if loop.time() > deadline:
            raise AssertionError(f"figures not all playing: {figures} (first seen {first})")
        await asyncio.sleep(0.25)


async def go_live(page) -> None:
    await page.click("#golive")
    await page.wait_for_selector("body[data-connection='connected']", timeout=45000)


async def test_a_host_invites_a_co_host_and_viewers_see_the_screen_and_both_cameras(server, browser):  # noqa: F811
    errors: list[str] = []
    host_ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    cohost_ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    viewer_ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    contexts = [viewer_ctx, cohost_ctx, host_ctx]
    try:
        host = await host_ctx.new_page()
        host.on("pageerror", lambda exc: errors.append(f"host: {exc}"))
        await host.goto(f"{server.base}/rooms/{server.slug}/host?token={server.token('host')}&name=Ada")
        await host.wait_for_selector("body[data-ready='1']", timeout=15000)
        await host.click("#invite-cohost")
        await until(host, "document.getElementById('invite-link').value.includes('#invite=')")
        link = await host.input_value("#invite-link")
        assert link.startswith(f"{server.base}/rooms/{server.slug}/host#invite=ods_")
        await host.wait_for_selector("#invitations li[data-status='open']", timeout=10000)

        cohost = await cohost_ctx.new_page()
        cohost.on("pageerror", lambda exc: errors.append(f"co-host: {exc}"))
        await cohost.goto(link)
        await cohost.wait_for_selector("#invitation:not([hidden])", timeout=15000)
        await cohost.wait_for_selector("section#chat[data-state='connected']", timeout=15000)
        # Not in the room yet: the page counts nobody rather than claim "0 watching".
        assert await cohost.text_content("#viewer-count") == ""
        await cohost.fill("#cohost-name", "Grace")
        await cohost.click("#accept-invite")
        # The page reloads holding its own host token: the same host studio, as a host of this room.
        await cohost.wait_for_selector("body[data-ready='1']", timeout=15000)
        assert "#invite" not in cohost.url
        assert await cohost.evaluate("window.odsHost.me.role") == "host"
        assert await cohost.evaluate("window.odsHost.me.name") == "Grace"
        await go_live(cohost)
        await cohost.click("#share-screen")
        await until(cohost, "window.odsHost.screen.pc && window.odsHost.screen.pc.connectionState === 'connected'", 45)
        await go_live(host)
        # The host's list shows who came in through the invitation.
        await host.wait_for_selector("#invitations li[data-status='accepted']", timeout=10000)
        assert "Grace (co-host)" in await host.text_content("#invitations li[data-status='accepted']")
        # The spent link is no longer on show.
        await until(host, "document.getElementById('invite-link').hidden")
        assert await host.text_content("#invite-status") == "Grace joined as co-host."

        viewer = await viewer_ctx.new_page()
        viewer.on("pageerror", lambda exc: errors.append(f"viewer: {exc}"))
        await viewer.goto(f"{server.base}/rooms/{server.slug}")
        await viewer.wait_for_selector("body[data-ready='1']", timeout=15000)
        figures = await figures_playing(viewer, 3)
        [screen] = [f for f in figures if f["screen"]]
        cameras = sorted((f for f in figures if not f["screen"]), key=lambda f: f["label"])
        assert (screen["label"], screen["pip"]) == ("Grace · screen", False)
        assert [(c["label"], c["pip"], c["hidden"]) for c in cameras] == [("Ada", True, False), ("Grace", True, False)]
        # The screen is large; the two PiPs are small and do not cover each other.
        assert all(c["w"] < screen["w"] / 3 for c in cameras)
        assert cameras[0]["top"] != cameras[1]["top"]
        frames = await viewer.evaluate("window.odsViewer.framesBySource()")
        assert frames.get("camera", 0) > 0 and frames.get("screen", 0) > 0, frames

        # Swap a camera onto the stage with its own button, then back with the stage's Swap button.
        await viewer.click("#videos figure[data-participant].pip >> nth=0 >> .pip-swap")
        await viewer.wait_for_selector("#videos figure.screen.pip", timeout=15000)
        assert await viewer.locator("#videos figure.pip").count() == 2
        await viewer.click("#swap")
        await viewer.click("#swap")
        await viewer.wait_for_selector("#videos figure.screen.large", timeout=15000)
        # Hide one PiP by its own button; "Show picture-in-picture" brings it back.
        await viewer.click("#videos figure[data-participant].pip >> nth=0 >> .pip-hide")
        assert await viewer.locator("#videos figure.pip-hidden").count() == 1
        assert await viewer.text_content("#hide-pip") == "Show picture-in-picture"
        await viewer.click("#hide-pip")
        assert await viewer.locator("#videos figure.pip-hidden").count() == 0
        await viewer.screenshot(path=str(server.log_path.parent / "viewer-cohost.png"))

        # A moderator mutes Grace's camera from the people list: her screen keeps playing.
        mod_ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(mod_ctx)
        mod = await mod_ctx.new_page()
        mod.on("pageerror", lambda exc: errors.append(f"moderator: {exc}"))
        await mod.goto(f"{server.base}/rooms/{server.slug}?token={server.token('moderator')}")
        await mod.wait_for_selector("section#chat[data-role='moderator']", timeout=15000)
        grace_row = "#people li:has(.person-name:text-is('Grace'))"
        await mod.wait_for_selector(f"{grace_row} button:has-text('Mute screen')", timeout=15000)
        await mod.click(f"{grace_row} button:has-text('Mute camera')")
        grace_camera = "#videos figure[data-participant]:has(figcaption:text-is('Grace'))"
        await viewer.wait_for_selector(f"{grace_camera}[data-camera-off='1']", timeout=10000)
        await until(cohost, "document.getElementById('status').textContent.includes('moderator turned your camera off')")
        before = await viewer.evaluate("window.odsViewer.framesBySource()")
        await until(viewer, f"window.odsViewer.framesBySource().then(f => f.screen > {before['screen'] + 20})", 30)
        assert await viewer.get_attribute("#videos figure.screen", "data-camera-off") == "0"
        await mod.click(f"{grace_row} button:has-text('Unmute camera')")
        await viewer.wait_for_selector(f"{grace_camera}[data-camera-off='0']", timeout=10000)

        # The co-host stops sharing: no screen, the two cameras side by side.
        await cohost.click("#stop-screen")
        await viewer.wait_for_selector("#videos:not(.has-screen)[data-cameras='2']", timeout=15000)
        figures = await figures_playing(viewer, 2)
        assert not any(f["pip"] for f in figures)
        left, right = sorted(figures, key=lambda f: f["left"])
        assert left["top"] == right["top"] and right["left"] >= left["left"] + left["w"]

        # The invitation link is spent: opening it again says why and changes nothing.
        again = await viewer_ctx.new_page()
        await again.goto(link)
        await again.wait_for_selector("#invitation:not([hidden])", timeout=15000)
        await again.fill("#cohost-name", "Mallory")
        await again.click("#accept-invite")
        await again.wait_for_selector("#invitation[data-code='invitation_used']", timeout=10000)
        assert "already used" in await again.text_content("#invitation-status")
        assert await again.is_hidden("section.stage")
        assert errors == []
    finally:
        for context in reversed(contexts):
            await context.close()
