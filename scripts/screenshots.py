"""Screenshots of every page at desktop (1280x800) and phone (390x844) size, for docs/screenshots/.

Starts `odsmedia dev` (embedded services under a temporary data dir unless
DATABASE_URL/REDIS_URL are set), goes live from the host page with Chromium's
fake camera, chats as host, guest and moderator, invites a co-host who
shares a screen (the viewer page with two cameras + screen), records a short episode,
then photographs the pages as people see them, each video once it shows decoded,
advancing frames (not the black box before the first frame):

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream",
                 "--use-fake-ui-for-media-stream", "--allow-loopback-in-peer-connection"]


def start_dev(env: dict[str, str]) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen([sys.executable, "-m", "odsmedia", "dev"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    base = host_url = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not host_url:
        line = proc.stdout.readline()
        if not line:
            break
        if m := re.search(r"listening on (\S+)", line):
            base = m.group(1)
        if m := re.search(r"host page:\s+(\S+)", line):
            host_url = m.group(1)
    if not host_url:
        proc.kill()
        raise SystemExit("odsmedia dev did not start")
    return proc, base, host_url


async def until(page, expression: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(expression)
        await asyncio.sleep(0.1)


# Every shown <video> (display:none PiPs aside) has a decoded picture and its clock moves: what a
# person sees once playback has started, not the black box before the first frame is decoded.
PLAYING = """(async (selector) => {
  const videos = [...document.querySelectorAll(selector)].filter((v) => v.offsetParent !== null);
  if (!videos.length) return false;
  const before = videos.map((v) => v.currentTime);
  await new Promise((resolve) => setTimeout(resolve, 250));
  return videos.every((v, i) => v.videoWidth > 0 && v.currentTime > before[i]);
})"""


async def playing(page, selector: str = "video", timeout: float = 30.0) -> None:
    """Wait until every visible video matching `selector` shows decoded frames that advance."""
    await until(page, PLAYING + f"({json.dumps(selector)})", timeout)


async def post(page, text: str, kind: str = "message") -> None:
    """Post from the page's own form and wait until the item is on the page."""
    before = await page.evaluate("document.querySelectorAll('.chat-list li').length")
    await page.select_option(".chat-kind", kind)
    await page.fill(".chat-input", text)
    await page.press(".chat-input", "Enter")
    await until(page, f"document.querySelectorAll('.chat-list li').length > {before}")


async def shoot(browser, url: str, out: Path, name: str, ready: str, setup=None, videos: str | None = None) -> None:
    for size, (width, height) in SIZES.items():
        context = await browser.new_context(viewport={"width": width, "height": height},
                                            is_mobile=size == "phone", has_touch=size == "phone")
        page = await context.new_page()
        await page.goto(url)
        await page.wait_for_selector(ready, timeout=30000)
        if setup is not None:
            await setup(page)
        if videos is not None:
            await playing(page, videos)
        await page.evaluate("document.fonts.ready.then(() => true)")
        await page.screenshot(path=str(out / f"{name}-{size}.png"))
        await context.close()


async def main(out: Path, env: dict[str, str]) -> None:
    from playwright.async_api import async_playwright

    out.mkdir(parents=True, exist_ok=True)
    proc, base, host_url = start_dev(env)
    try:
        mod_token = subprocess.run([sys.executable, "-m", "odsmedia", "token", "--room", "demo", "--role", "moderator"],
                                   env=env, capture_output=True, text=True, check=True, cwd=REPO).stdout.strip()
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            host_ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
            host = await host_ctx.new_page()
            await host.goto(host_url)
            await host.wait_for_selector("section#chat[data-state='connected']", timeout=30000)
            await host.click("#golive")
            await host.wait_for_selector("body[data-connection='connected']", timeout=30000)
            await post(host, "Welcome! Today: a WebRTC SFU in Python.")
            guest_ctx = await browser.new_context()
            guest = await guest_ctx.new_page()
            await guest.goto(base + "/rooms/demo?name=Grace")
            await guest.wait_for_selector("section#chat[data-state='connected']", timeout=30000)
            await post(guest, "Hi from Lisbon!")
            await post(guest, "Why forward encoded frames instead of decoding them?", "question")
            await post(host, "Keyframe gating explained", "highlight")
            await asyncio.sleep(1)

            await shoot(browser, base + "/", out, "home", "#rooms li")
            await shoot(browser, base + "/rooms/demo", out, "viewer", "body[data-connection='connected']",
                        videos="#videos video")
            await shoot(browser, f"{base}/rooms/demo?token={mod_token}", out, "moderator",
                        "section#chat[data-role='moderator']", videos="#videos video")

            async def questions(page):
                await page.click(".chat-tabs button[data-filter='question']")

            await shoot(browser, base + "/rooms/demo", out, "viewer-questions", "section#chat[data-state='connected']",
                        questions, videos="#videos video")
            # Co-hosting: the host invites Grace from the host page; she joins as co-host with camera
            # and screen, and viewers see her screen large with both cameras as labelled PiPs.
            await host.click("#invite-cohost")
            await until(host, "document.getElementById('invite-link').value.includes('#invite=')")
            link = await host.input_value("#invite-link")
            cohost_ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
            cohost = await cohost_ctx.new_page()
            await cohost.goto(link)
            await cohost.wait_for_selector("#invitation:not([hidden])", timeout=30000)
            await cohost.fill("#cohost-name", "Grace Hopper")
            await cohost.click("#accept-invite")
            await cohost.wait_for_selector("body[data-ready='1']", timeout=30000)
            await cohost.click("#golive")
            await cohost.wait_for_selector("body[data-connection='connected']", timeout=30000)
            await cohost.click("#share-screen")
            await until(cohost, "window.odsHost.screen.pc && window.odsHost.screen.pc.connectionState === 'connected'")
            await host.wait_for_selector("#invitations li[data-status='accepted']", timeout=30000)
            async def three_figures(page):
                # The screen and both cameras, not whichever subscription answered first.
                await until(page, "document.querySelectorAll('#videos figure').length === 3")

            await shoot(browser, base + "/rooms/demo", out, "viewer-cohost",
                        "#videos.has-screen figure.screen.large", three_figures, videos="#videos video")
            # A second invitation, open: what the invited person sees (the host page keeps showing the link).
            await host.click("#invite-cohost")
            await until(host, "document.getElementById('invite-link').value.includes('#invite=')")
            await shoot(browser, await host.input_value("#invite-link"), out, "cohost-invitation",
                        "#invitation:not([hidden])")
            # The host page itself, live (the one already open, at both sizes).
            for size, (width, height) in SIZES.items():
                await host.set_viewport_size({"width": width, "height": height})
                await playing(host, ".stage video")
                await host.screenshot(path=str(out / f"host-{size}.png"))
            await cohost.click("#stop")
            await cohost_ctx.close()
            await asyncio.sleep(6)
            await host.click("#stop")
            await guest_ctx.close()
            episode = None
            deadline = time.monotonic() + 60
            while episode is None and time.monotonic() < deadline:
                request = urllib.request.Request(base + "/rooms/demo/episodes", headers={"Accept": "application/json"})
                with urllib.request.urlopen(request) as resp:
                    ready = [e for e in json.loads(resp.read())["episodes"] if e["status"] == "ready"]
                episode = ready[0]["id"] if ready else None
                await asyncio.sleep(0.5)
            await host_ctx.close()
            await shoot(browser, base + "/rooms/demo/episodes", out, "episodes", "#episode-list li")
            if episode is not None:
                async def paused(page):
                    # Paused just after the last chat item, so the replayed chat shows them all.
                    await page.evaluate("""(() => {
                      const items = document.querySelector('section#chat').odsChat.items;
                      const video = document.querySelector('#video');
                      video.pause();
                      video.currentTime = items.length ? items[items.length - 1].offset + 1 : 3;
                    })()""")
                    # Both pictures (the screen and its camera PiP) decoded at that moment, past the spinner.
                    await until(page, "[...document.querySelectorAll('#videos video')].filter((v) => v.offsetParent)"
                                      ".every((v) => !v.seeking && v.readyState >= 3 && v.videoWidth > 0)")
                    # Chromium's native controls fade their loading spinner out after the seek: no event says when.
                    await asyncio.sleep(1.5)

                await shoot(browser, f"{base}/episodes/{episode}/watch", out, "replay",
                            "section#chat[data-state='loaded']", paused)
            await shoot(browser, base + "/signin", out, "signin", "form")
            await shoot(browser, base + "/plans", out, "plans", "#plans")
            await shoot(browser, base + "/no/such/page", out, "not-found", "h2")
            await browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    parser.add_argument("--port", default="0")
    args = parser.parse_args()
    env = dict(os.environ, ODS_HTTP_PORT=args.port, ODS_ICE_ADDRESSES=os.environ.get("ODS_ICE_ADDRESSES", "127.0.0.1"),
               PYTHONUNBUFFERED="1")
    env.setdefault("ODS_DATA_DIR", tempfile.mkdtemp(prefix="ods-screenshots-"))
    asyncio.run(main(Path(args.out), env))
