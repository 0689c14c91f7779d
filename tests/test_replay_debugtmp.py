import asyncio, io, av
import pytest
from test_replay_browser import app_client  # noqa
from odsmedia.keys import FEATURES
from recorder import episodes

async def test_dbg(app_client, room_factory, token_factory, browser):
    room = await room_factory(title="Browser episode")
    token = await token_factory(room, "host")
    recorder = app_client.app[FEATURES]["recorder"]
    host_ctx = await browser.new_context()
    host = await host_ctx.new_page()
    await host.goto(str(app_client.make_url(f"/rooms/{room.slug}/host?token={token}")))
    await host.wait_for_selector("body[data-ready='1']", timeout=10000)
    await host.click("#golive")
    await host.wait_for_selector("body[data-connection='connected']", timeout=20000)
    for i in range(6):
        await asyncio.sleep(2)
        st = await host.evaluate("""async () => { const s = window.odsHost; const out = [];
            for (const pc of Object.values(s).filter(v => v && v.getStats)) {
              (await pc.getStats()).forEach(r => { if (r.type === 'outbound-rtp' && r.kind === 'video') out.push([r.pliCount, r.firCount, r.keyFramesEncoded, r.framesEncoded, r.frameWidth, r.encoderImplementation, r.qualityLimitationReason]); });
            }
            return [Object.keys(s), out]; }""")
        print("STATS", st)
    live = app_client.app[FEATURES]["sfu"].get(room.slug)
    for p in live.publications.values():
        print("PUB", p.kind, p.codec_name, p.frames, p.keyframes_requested)
    recording = recorder.recordings.get(room.slug)
    await host.click("#stop")
    await asyncio.wait_for(recording.done.wait(), 30)
    await host_ctx.close()
    rows = await episodes.segments(recorder.db, recording.episode_id)
    for r in rows:
        init = recorder.storage.read(f"{recording.storage_key}/{r.init_name}")
        data = recorder.storage.read(f"{recording.storage_key}/{r.name}")
        with av.open(io.BytesIO(init+data)) as c:
            ks=[round(float(p.pts*p.stream.time_base),2) for p in c.demux(video=0) if p.is_keyframe]
        print("SEG", r.name, r.duration, ks)
