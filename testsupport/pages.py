"""What browser tests read from the shipped viewer page (``window.odsViewer``)."""

from __future__ import annotations

import asyncio
import time


async def frames_grow(viewer, by: int, within: float) -> int:
    """How many video frames the viewer page decoded while waiting (up to ``within`` s) for ``by`` more."""
    start = await viewer.evaluate("window.odsViewer.framesDecoded()")
    deadline = time.monotonic() + within
    now = start
    while now < start + by and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = await viewer.evaluate("window.odsViewer.framesDecoded()")
    return now - start


async def go_live(host, url: str, *, ready_ms: int = 20000, connected_ms: int = 30000) -> None:
    """Open the shipped host page at ``url`` (with its host token) and go live; returns once its
    publish transport is connected."""
    await host.goto(url)
    await host.wait_for_selector("body[data-ready='1']", timeout=ready_ms)
    await host.click("#golive")
    await host.wait_for_selector("body[data-connection='connected']", timeout=connected_ms)
