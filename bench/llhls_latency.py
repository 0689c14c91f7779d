"""Glass-to-glass latency: LL-HLS (hls.js on the shipped viewer page) versus WebRTC, same run.

    .venv/bin/python bench/llhls_latency.py [--seconds 20] [--warmup 8] [--segment 2] [--part 0.5]

Creates a throwaway database (dropped at the end), uses the local Redis under
a throwaway prefix, and runs the full app in this process on a loopback port
with `media.max_webrtc_viewers_per_room = 1`.  An aiortc publisher sends the
frame-counter video (testsupport.counter, 30 fps) over WHIP and notes the
wall-clock time at which it produced each frame.  Two headless Chromium pages
open the shipped viewer page: the first takes the one WebRTC seat
(real-time mode), the second is refused a seat and falls back to LL-HLS with
hls.js (lowLatencyMode).  In each page a requestVideoFrameCallback draws every
presented frame to a canvas, reads the counter back, and notes when the frame
was to be displayed (performance.timeOrigin + expectedDisplayTime).  Latency
= display time - the publisher's capture time of that counter (both on this
machine's wall clock).  Prints p50/p95/p99 per mode after a warm-up, with the
1-minute load average.  The recording (the HLS source) runs at
`--segment`/`--part` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
from aiohttp import web  # noqa: E402

from testsupport.services import ADMIN_DSN, REDIS_URL, throwaway  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--allow-loopback-in-peer-connection",
                 "--autoplay-policy=no-user-gesture-required"]

# Reads the counter off every presented frame of the page's playing video.
SAMPLER = """(selector) => {
  window.benchSamples = [];
  const BITS = 18, BLOCK = 16, W = BITS * BLOCK, H = 64;
  const canvas = document.createElement("canvas");
  canvas.width = W; canvas.height = H;
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  let video = null;
  function attach() {
    const found = [...document.querySelectorAll(selector)].find((v) => v.videoWidth > 0);
    if (!found) { setTimeout(attach, 50); return; }
    video = found;
    const onFrame = (now, meta) => {
      ctx.drawImage(video, 0, 0, video.videoWidth, video.videoHeight, 0, 0, video.videoWidth, video.videoHeight);
      const row = ctx.getImageData(0, H / 2, W, 1).data;
      let value = 0;
      for (let bit = 0; bit < BITS; bit++) value = value * 2 + (row[(bit * BLOCK + BLOCK / 2) * 4] > 128 ? 1 : 0);
      window.benchSamples.push([value, performance.timeOrigin + meta.expectedDisplayTime]);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }
  attach();
}"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def main(args: argparse.Namespace) -> None:
    async with throwaway(args.admin_dsn, args.redis_url) as services:
        await measure(args, services)


async def measure(args: argparse.Namespace, services) -> None:
    from aiortc import AudioStreamTrack, RTCSessionDescription
    from playwright.async_api import async_playwright

    from odsmedia.app import make_app
    from odsmedia.auth import tokens
    from odsmedia.rooms import directory
    from testsupport.peers import CounterVideoTrack, peer

    class StampedCounter(CounterVideoTrack):
        """The counter video, noting when each frame was produced (the "glass" at the source)."""

        def __init__(self, fps: int) -> None:
            super().__init__(fps=fps)
            self.captured: dict[int, float] = {}

        async def recv(self):
            frame = await super().recv()
            self.captured[self.index - 1] = time.time() * 1000
            return frame

    tmp = Path(tempfile.mkdtemp(prefix="ods-bench-"))
    runner = publisher = None
    try:
        pool = await asyncpg.create_pool(services.database_url, min_size=1, max_size=2)
        room = await directory.create(pool, "bench-latency", policy="public")
        host_token, _ = await tokens.mint(pool, room_id=room.id, role="host", ttl_seconds=3600)
        await pool.close()
        config = services.config(tmp / "data", ODS_RECORDING_SEGMENT_SECONDS=str(args.segment),
                                 ODS_RECORDING_PART_SECONDS=str(args.part), ODS_MEDIA_MAX_WEBRTC_VIEWERS_PER_ROOM="1")
        runner = web.AppRunner(make_app(config), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"

        publisher = peer()
        video = StampedCounter(args.fps)
        publisher.addTransceiver(video, direction="sendonly")
        publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await publisher.setLocalDescription(await publisher.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/rooms/{room.slug}/whip", data=publisher.localDescription.sdp,
                                 headers={"Authorization": f"Bearer {host_token}",
                                          "Content-Type": "application/sdp"}) as resp:
                assert resp.status == 201, await resp.text()
                answer = await resp.text()
        await publisher.setRemoteDescription(RTCSessionDescription(answer, "answer"))

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                realtime = await browser.new_page()
                await realtime.goto(f"{base}/rooms/{room.slug}?name=RealTime")
                await realtime.wait_for_function(
                    "() => [...document.querySelectorAll('#videos video')].some((v) => v.videoWidth > 0)",
                    timeout=60000)
                hls = await browser.new_page()
                await hls.goto(f"{base}/rooms/{room.slug}?name=LowLatency")
                await hls.wait_for_function("() => document.getElementById('mode').textContent === 'low-latency'",
                                            timeout=60000)
                await hls.wait_for_function(
                    "() => { const v = document.getElementById('hls-video'); return v && v.currentTime > 0.5; }",
                    timeout=60000)
                assert await realtime.evaluate("() => document.getElementById('mode').textContent") == "real-time"
                await realtime.evaluate(SAMPLER, "#videos video")
                await hls.evaluate(SAMPLER, "#hls-video")
                await asyncio.sleep(args.warmup)        # the players settle on their live edge
                await realtime.evaluate("() => { window.benchSamples.length = 0; }")
                await hls.evaluate("() => { window.benchSamples.length = 0; }")
                load = os.getloadavg()[0]
                await asyncio.sleep(args.seconds)       # the measured window
                load = max(load, os.getloadavg()[0])
                results = {}
                for name, page in (("webrtc", realtime), ("ll-hls", hls)):
                    samples = await page.evaluate("() => window.benchSamples")
                    latencies = [shown - video.captured[counter] for counter, shown in samples
                                 if counter in video.captured]
                    results[name] = (len(samples), latencies)
                live_edge = await hls.evaluate("""() => {
                    const h = window.odsViewer.hls;
                    return {latency: h.latency, target: h.targetLatency, drift: h.drift};
                }""")
            finally:
                await browser.close()
        print(f"glass-to-glass, publisher frame produced -> frame presented in Chromium; {args.fps} fps, "
              f"segments {args.segment} s, parts {args.part} s; {args.seconds:.0f} s window after {args.warmup:.0f} s "
              f"warm-up; cpu count {os.cpu_count()}; load average {load:.2f}")
        print(f"{'mode':8} {'frames':>7} {'read':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
        for name, (frames, latencies) in results.items():
            if not latencies:
                print(f"{name:8} {frames:7d} {0:6d}  (no frame read)")
                continue
            print(f"{name:8} {frames:7d} {len(latencies):6d} {statistics.median(latencies):8.0f} "
                  f"{pct(latencies, 95):8.0f} {pct(latencies, 99):8.0f}")
        print(f"hls.js at the end: latency {live_edge['latency']:.2f} s, target {live_edge['target']:.2f} s")
    finally:
        if publisher is not None:
            await publisher.close()
        if runner is not None:
            await runner.cleanup()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--segment", type=float, default=2.0)
    parser.add_argument("--part", type=float, default=0.5)
    parser.add_argument("--admin-dsn", default=ADMIN_DSN)
    parser.add_argument("--redis-url", default=REDIS_URL)
    args = parser.parse_args()
    args.seconds = max(5.0, min(args.seconds, 120.0))
    args.warmup = max(0.0, min(args.warmup, 60.0))

    async def bounded() -> None:
        await asyncio.wait_for(main(args), args.seconds + args.warmup + 180)

    asyncio.run(bounded())


if __name__ == "__main__":
    cli()
