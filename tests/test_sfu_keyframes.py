"""Keyframe gating, PLI rate limiting, slow subscribers, late joiners."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from aiortc import RTCRtpCodecParameters
from aiortc.mediastreams import MediaStreamError

from odsmedia.media.frame import MediaFrame, h264_is_keyframe, is_keyframe
from odsmedia.rooms.participant import Participant
from odsmedia.rooms.publication import Publication
from odsmedia.rooms.sfu import SFU
from odsmedia.rooms.subscription import Subscription

H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102,
                             parameters={"packetization-mode": "1", "profile-level-id": "42e01f",
                                         "level-asymmetry-allowed": "1"})
log = logging.getLogger("test")


@pytest.fixture
def config(service_urls, tmp_path):
    from conftest import make_config

    # The recorder asks for keyframes on its own cadence; these tests count the
    # SFU's requests, so nothing else may make any.
    return make_config(service_urls, tmp_path / "data", ODS_RECORDING_ENABLED="false")


def frame(n: int, key: bool) -> MediaFrame:
    return MediaFrame("video", "H264", b"\x00\x00\x00\x01" + bytes([0x65 if key else 0x41]) + bytes([n % 256]),
                      n * 3000, 90000, key, time.monotonic())


def test_keyframe_detection():
    sps_pps_idr = b"\x00\x00\x00\x01\x67\x42" + b"\x00\x00\x00\x01\x68\xce" + b"\x00\x00\x01\x65\x88"
    assert h264_is_keyframe(sps_pps_idr)
    assert not h264_is_keyframe(b"\x00\x00\x00\x01\x41\x9a")
    assert not h264_is_keyframe(b"")
    assert is_keyframe("VP8", bytes([0x10, 0x02]))        # bit 0 clear: key frame
    assert not is_keyframe("VP8", bytes([0x11, 0x02]))
    assert is_keyframe("opus", b"\x01")


async def test_pli_rate_limited_with_one_trailing_request():
    sent = []
    pub = Publication(Participant("t:1", "host", "host"), "video", H264, source="camera", pli_interval=0.2,
                      request_pli=lambda: sent.append(time.monotonic()))
    for _ in range(5):
        pub.request_keyframe("viewer_pli")
    assert len(sent) == 1
    deadline = time.monotonic() + 10
    while len(sent) < 2:                      # the folded trailing request, after the interval
        assert time.monotonic() < deadline, "no trailing keyframe request"
        await asyncio.sleep(0.01)
    assert len(sent) == 2
    assert sent[1] - sent[0] >= 0.19
    pub.end()


async def test_subscription_starts_at_keyframe_and_slow_one_resyncs_without_holding_others():
    requests = []
    pub = Publication(Participant("t:1", "host", "host"), "video", H264, source="camera", pli_interval=0.0,
                      request_pli=lambda: requests.append(1))
    viewer = Participant("v:x", "v", "viewer")
    fast = Subscription(pub, viewer, queue_size=4)
    slow = Subscription(pub, viewer, queue_size=4)
    fast.start()
    slow.start()
    assert len(requests) == 2                 # each new subscription asks for a keyframe

    pub.deliver(frame(0, False))              # before any keyframe: nothing forwarded
    assert fast.lag == slow.lag == 0
    pub.deliver(frame(1, True))
    received = []
    for n in range(2, 12):
        pub.deliver(frame(n, False))
        received.append(await fast.recv())    # the fast viewer keeps up
    received.append(await fast.recv())
    assert [f.timestamp // 3000 for f in received] == list(range(1, 12))
    # The slow viewer never read: its backlog was dropped and it waits for the next keyframe.
    assert slow.resyncs >= 1 and slow.lag == 0
    assert len(requests) >= 3
    pub.deliver(frame(12, False))
    assert slow.lag == 0
    pub.deliver(frame(13, True))
    assert (await slow.recv()).timestamp == 13 * 3000
    pub.end()
    # Ending the publication ends the subscription at once (not a hang ended by the timeout).
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(fast.recv(), 10)


async def test_late_joiner_gets_a_frame_quickly(client, peers, room_factory):
    room = await room_factory()
    publisher = await peers.host(client, room)
    reply = await publisher.publish(fps=15, audio=False)
    # The point of the test: join far into the stream, past the first keyframe's GOP.  Awaited
    # on what the server received (40 pictures), not a fixed time a loaded machine may stretch.
    publication = client.server.app[SFU].get(room.slug).publications[reply["publications"][0]["id"]]
    deadline = time.monotonic() + 30
    while publication.frames < 40:
        assert time.monotonic() < deadline, publication.frames
        await asyncio.sleep(0.05)
    viewer = await peers.viewer(client, room)
    started = time.monotonic()
    await viewer.subscribe()
    video = None
    deadline = time.monotonic() + 10
    while video is None and time.monotonic() < deadline:
        video = viewer.video()
        await asyncio.sleep(0.02)
    assert video is not None
    await asyncio.wait_for(video.first_frame.wait(), 10)
    log.warning("late joiner: first decoded frame %.0f ms after subscribe", (video.first_at - started) * 1000)
    # It started on the keyframe requested for it, far into the stream.
    assert video.counters[0] > 30


class KeyframeCounter:
    """A sink (the public sink API) that counts keyframes arriving from the publisher."""

    def __init__(self) -> None:
        self.keyframes: list[float] = []

    def on_frame(self, frame: MediaFrame) -> None:
        if frame.keyframe:
            self.keyframes.append(time.monotonic())

    def on_end(self) -> None:
        pass

    def restart_at_keyframe(self) -> None:
        pass


async def test_viewer_pli_reaches_the_publisher_rate_limited(client, peers, room_factory):
    from odsmedia.rooms.sfu import SFU

    room = await room_factory()
    publisher = await peers.host(client, room)
    reply = await publisher.publish(fps=15, audio=False)
    viewer = await peers.viewer(client, room)
    await viewer.subscribe()
    deadline = time.monotonic() + 15
    while not (viewer.video() and viewer.video().frames >= 5) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    publication = client.server.app[SFU].get(room.slug).publications[reply["publications"][0]["id"]]
    counter = KeyframeCounter()
    publication.add_sink(counter)
    await asyncio.sleep(publication._pli_interval)        # let the join's request age out
    before = publication.keyframes_requested
    receiver = viewer.pcs[0].getTransceivers()[0].receiver
    ssrc = receiver.getSynchronizationSources()[0].source
    for _ in range(5):                                      # a burst of viewer PLIs ...
        await receiver._send_rtcp_pli(ssrc)
    deadline = time.monotonic() + 5
    while publication.keyframes_requested < before + 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    # The rate limit is the feature: one whole interval more, in which a third request would show.
    await asyncio.sleep(publication._pli_interval)
    # ... becomes one request now and one trailing request, not five.
    assert before + 1 <= publication.keyframes_requested <= before + 2
    deadline = time.monotonic() + 5
    while not counter.keyframes and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert counter.keyframes, "the publisher sent no keyframe after the PLI"
