import asyncio, gc, psutil, pytest, time
from odsmedia.keys import FEATURES
from odsmedia.media.testing import Publisher, SignalingClient, Viewer

pytestmark = pytest.mark.timeout(300)

async def test_probe(client, room_factory, token_factory):
    room = await room_factory()
    base = str(client.make_url(""))
    sfu = client.server.app[FEATURES]["sfu"]
    host = SignalingClient(base, room.slug); await host.connect(); await host.join(await token_factory(room, "host"))
    publisher = Publisher(host); await publisher.publish(fps=10)
    live = sfu.get(room.slug)
    import tracemalloc
    async def cycle():
        c = SignalingClient(base, room.slug); await c.connect(); await c.join()
        viewer = Viewer(c, decode=False); offer = await viewer.subscribe()
        me = next(p for p in live.participants.values() if offer["transport"] in p.transports)
        await asyncio.wait_for(me.transports[offer["transport"]].connected.wait(), 10)
        await c.request({"type": "leave"}); await asyncio.wait_for(c.closed.wait(), 5)
        await viewer.close(); await c.close()
    for _ in range(10): await cycle()
    tracemalloc.start(10)
    gc.collect(); s1 = tracemalloc.take_snapshot()
    for i in range(6):
        for _ in range(25): await cycle()
        gc.collect(); print(i, psutil.Process().memory_info().rss // 1024, tracemalloc.get_traced_memory())
    s2 = tracemalloc.take_snapshot()
    for stat in s2.compare_to(s1, "traceback")[:6]:
        print(stat); print("\n".join(stat.traceback.format()[-6:]))
