"""What a person does first: `odsmedia dev`, the host page in one tab, the viewer page in another."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
import urllib.request

import pytest

from test_cli import _start

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


async def test_dev_host_tab_and_viewer_tab_watch_themselves(tmp_path, browser):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ODS_") and k not in ("DATABASE_URL", "REDIS_URL")}
    # Loopback only: this machine's other addresses are not ours to send to.
    env.update(ODS_DATA_DIR=str(tmp_path / "data"), ODS_HTTP_PORT="0", ODS_ICE_ADDRESSES="127.0.0.1",
               PYTHONUNBUFFERED="1")
    proc, base = _start(env, "dev")
    try:
        host_line = proc.stdout.readline()
        viewer_line = proc.stdout.readline()
        host_url = re.search(r"host page:\s+(\S+)", host_line).group(1)
        viewer_url = re.search(r"viewer page:\s+(\S+)", viewer_line).group(1)
        assert re.search(r"/rooms/demo/host\?token=ods_", host_url)

        context = await browser.new_context()
        host = await context.new_page()
        await host.goto(host_url)
        await host.wait_for_selector("body[data-ready='1']", timeout=15000)
        await host.click("#golive")
        await host.wait_for_selector("body[data-connection='connected']", timeout=30000)
        viewer = await context.new_page()
        await viewer.goto(viewer_url)
        await viewer.wait_for_selector("body[data-ready='1']", timeout=15000)
        decoded = 0
        deadline = time.monotonic() + 40
        while decoded == 0 and time.monotonic() < deadline:
            decoded = await viewer.evaluate("window.odsViewer.framesDecoded()")
            await asyncio.sleep(0.25)
        assert decoded > 0, "the viewer tab decoded no frames from the host tab"
        # The printed token is the host's identity in chat too.
        await host.wait_for_selector("section#chat[data-role='host']", timeout=10000)
        assert "token=" not in host.url
        await host.click("#stop")
        await context.close()
        # Someone asks for a sign-in link: dev says where the mail went.
        request = urllib.request.Request(base + "/auth/magic-link", data=json.dumps({"email": "ada@example.org"}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 202
        deadline = time.monotonic() + 30
        status = None
        while status != "ready" and time.monotonic() < deadline:
            with urllib.request.urlopen(urllib.request.Request(base + "/rooms/demo/episodes",
                                                               headers={"Accept": "application/json"})) as resp:
                episodes = json.loads(resp.read())["episodes"]
            status = episodes[0]["status"] if episodes else None
            await asyncio.sleep(0.2)
        assert status == "ready"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    log = proc.stderr.read()
    assert re.search(r"odsmedia\.sfu: live room=demo participant=Host tracks=", log), log[-2000:]
    assert re.search(r"odsmedia\.sfu: stopped room=demo participant=Host", log)
    assert re.search(r"odsmedia\.recorder: episode ready episode=\d+ room=demo watch=/episodes/\d+/watch", log)
    mail = re.search(r"odsmedia\.mail: mail written .*path=(\S+)", log)
    assert mail and os.path.isfile(mail.group(1))
