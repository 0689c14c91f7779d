"""Peers for tests and benchmarks: a frame-counter video source, a
signaling client, and viewers that decode (or just count) what they get.

The video source draws its frame index into each picture (``counter``), so
a viewer can check that no frame went missing on the way through the SFU.
Everything here runs on loopback with the process-wide ICE policy of
``odsmedia.media.ice``.
"""

from __future__ import annotations

import asyncio
import fractions
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp
import av
import orjson
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from odsmedia.media import ice

from .counter import HEIGHT, WIDTH, draw_counter, read_counter

__all__ = ["CounterVideoTrack", "Peers", "Publisher", "Received", "SignalingClient", "SignalingError", "Viewer", "peer",
           "cut_off", "read_counter", "whip_offer"]


class CounterVideoTrack(MediaStreamTrack):
    """Video whose frame N shows N in binary; ``fps`` frames per second, real time."""

    kind = "video"

    def __init__(self, fps: int = 15, width: int = WIDTH, height: int = HEIGHT) -> None:
        super().__init__()
        self.fps = fps
        self.width = max(width, WIDTH)
        self.height = max(height, HEIGHT)
        self.index = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + self.index / self.fps - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = draw_counter(self.index, self.width, self.height)
        frame.pts = self.index * (90000 // self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.index += 1
        return frame


def peer() -> RTCPeerConnection:
    """A client peer connection; candidates follow the process ICE policy, and a
    process without one is made loopback-only (tests and benchmarks never use
    another interface)."""
    if not ice.current().addresses:
        ice.configure(["127.0.0.1"])
    # max-bundle as browsers effectively do: aiortc's "balanced" default strands a
    # second m-line of one kind on a stopped transport (see ice.rtc_configuration).
    return RTCPeerConnection(ice.rtc_configuration(max_bundle=True))


async def whip_offer(*, fps: int = 15) -> tuple[RTCPeerConnection, str]:
    """A WHIP publisher: a peer sending counter video and silence, and its SDP offer to POST."""
    from aiortc import AudioStreamTrack

    pc = peer()
    pc.addTransceiver(CounterVideoTrack(fps=fps), direction="sendonly")
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


class _Blackhole:
    """Stands in for a socket whose network went away: sends nothing."""

    def __init__(self, real) -> None:
        self.real = real

    def sendto(self, data, addr=None) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return self.real.get_extra_info(name, default)

    def close(self) -> None:
        self.real.close()


def cut_off(pc: RTCPeerConnection) -> None:
    """This peer's network is gone: its ICE sockets neither send nor receive (aioice internals)."""
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        for protocol in connection._protocols:
            if not isinstance(protocol.transport, _Blackhole):
                protocol.transport = _Blackhole(protocol.transport)
                protocol.datagram_received = lambda data, addr: None


class SignalingError(Exception):
    def __init__(self, message: dict[str, Any]) -> None:
        super().__init__(f"{message.get('code')}: {message.get('message')}")
        self.code = message.get("code")
        self.status = message.get("status")
        self.message = message


class SignalingClient:
    """A participant over GET /rooms/{slug}/ws: requests by ref, events in a queue."""

    def __init__(self, base_url: str, slug: str, session: aiohttp.ClientSession | None = None) -> None:
        self.url = base_url.rstrip("/") + f"/rooms/{slug}/ws"
        self._own_session = session is None
        self.session = session or aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.joined: dict[str, Any] = {}
        self._refs = itertools.count(1)
        self._pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        # The code of the server's close frame (the client's ws.close_code reads 1006 when its
        # close reply meets a connection the server has already closed).
        self.close_code: int | None = None

    async def connect(self) -> None:
        self.ws = await self.session.ws_connect(self.url, timeout=aiohttp.ClientWSTimeout(ws_close=2))
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            while True:
                msg = await self.ws.receive()
                if msg.type == aiohttp.WSMsgType.CLOSE:
                    self.close_code = msg.data
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                message = msg.json()
                future = self._pending.pop(message.get("ref"), None) if message.get("ref") is not None else None
                if future is not None and not future.done():
                    future.set_result(message)
                else:
                    self.events.put_nowait(message)
        finally:
            self.closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("signaling socket closed"))

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(orjson.dumps(message).decode())

    async def request(self, message: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        ref = next(self._refs)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        await self.send({**message, "ref": ref})
        reply = await asyncio.wait_for(future, timeout)
        if reply.get("type") == "error":
            raise SignalingError(reply)
        return reply

    async def join(self, token: str | None = None, name: str | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "join"}
        if token:
            message["token"] = token
        if name:
            message["name"] = name
        self.joined = await self.request(message)
        return self.joined

    async def next_event(self, type_: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next event of this type (others seen meanwhile are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            event = await asyncio.wait_for(self.events.get(), max(0.01, deadline - time.monotonic()))
            if event.get("type") == type_:
                return event

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=2)
        if self._own_session:
            await self.session.close()


@dataclass
class Publisher:
    """An aiortc publisher over signaling: counter video (+ silence audio)."""

    client: SignalingClient
    pc: RTCPeerConnection = field(default_factory=peer)
    video: CounterVideoTrack | None = None
    transport: str = ""
    publications: list[dict[str, Any]] = field(default_factory=list)

    async def publish(self, *, fps: int = 15, audio: bool = True, codec: str | None = None,
                      width: int = WIDTH, height: int = HEIGHT, source: str | None = None) -> dict[str, Any]:
        """Publish counter video (+ silence audio); ``source`` names the video's source
        (``screen``: what a browser's screen share sends), by default the camera."""
        from aiortc import AudioStreamTrack
        from aiortc.rtcrtpsender import RTCRtpSender

        self.video = CounterVideoTrack(fps, width, height)
        transceiver = self.pc.addTransceiver(self.video, direction="sendonly")
        remember_codec(transceiver.sender)
        if codec:
            prefs = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.name in (codec, "rtx")]
            transceiver.setCodecPreferences(prefs)
        if audio:
            self.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        message: dict[str, Any] = {"type": "publish", "sdp": self.pc.localDescription.sdp}
        if source is not None:
            message["sources"] = {transceiver.mid: source}
        reply = await self.client.request(message)
        await self.pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        self.transport = reply["transport"]
        self.publications = reply["publications"]
        return reply

    async def restart_video_encoder(self) -> int:
        """What a browser does when its encoder is rebuilt: a new SSRC, new sequence
        number and timestamp bases and a fresh encoder (so a keyframe first); the
        picture counter carries on.  Returns the new SSRC."""
        sender = next(t.sender for t in self.pc.getTransceivers() if t.sender.track is self.video)
        return await restart_sender(sender)

    async def close(self) -> None:
        await self.pc.close()


def remember_codec(sender: Any) -> None:
    """Keep the codec aiortc starts the sender's RTP loop with (restart_sender needs it)."""
    run_rtp = sender._run_rtp

    def remembering(codec: Any) -> Any:
        sender.ods_codec = codec
        return run_rtp(codec)

    sender._run_rtp = remembering


async def restart_sender(sender: Any) -> int:
    from aiortc.utils import random32

    from odsmedia.media import aiortc_private as private

    track = getattr(sender, private.SENDER_TRACK)
    # Detach the track first: aiortc's loop stops its track when it ends.
    setattr(sender, private.SENDER_TRACK, None)
    getattr(sender, private.SENDER_RTP_TASK).cancel()
    await getattr(sender, private.SENDER_RTP_EXITED).wait()
    getattr(sender, private.SENDER_RTP_EXITED).clear()
    sender._ssrc = random32()
    setattr(sender, private.SENDER_TRACK, track)
    setattr(sender, private.SENDER_RTP_TASK, asyncio.ensure_future(type(sender)._run_rtp(sender, sender.ods_codec)))
    return sender._ssrc


@dataclass
class Received:
    kind: str
    frames: int = 0
    counters: list[int] = field(default_factory=list)
    first_at: float | None = None
    first_frame: asyncio.Event = field(default_factory=asyncio.Event)


class Viewer:
    """An aiortc viewer over signaling; decodes and records counters (or only counts RTP)."""

    def __init__(self, client: SignalingClient, *, decode: bool = True) -> None:
        self.client = client
        self.decode = decode
        self.pcs: list[RTCPeerConnection] = []
        self.received: dict[str, Received] = {}       # by publication id
        self._tasks: list[asyncio.Task[None]] = []

    async def subscribe(self, publication_ids: list[str] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "subscribe"}
        if publication_ids:
            message["publications"] = publication_ids
        offer = await self.client.request(message)
        pc = peer()
        self.pcs.append(pc)
        by_mid = {p["mid"]: p for p in offer["publications"]}

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            for t in pc.getTransceivers():
                if t.receiver.track is track and t.mid in by_mid:
                    info = by_mid[t.mid]
                    received = self.received.setdefault(info["publication"], Received(info["kind"]))
                    if self.decode:
                        self._tasks.append(asyncio.ensure_future(self._consume(track, received)))

        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.client.request({"type": "answer", "transport": offer["transport"],
                                   "sdp": pc.localDescription.sdp})
        return offer

    async def _consume(self, track: MediaStreamTrack, received: Received) -> None:
        try:
            while True:
                frame = await track.recv()
                received.frames += 1
                if received.first_at is None:
                    received.first_at = time.monotonic()
                    received.first_frame.set()
                if received.kind == "video":
                    received.counters.append(read_counter(frame))
        except (MediaStreamError, asyncio.CancelledError):
            pass

    def video(self) -> Received | None:
        return next((r for r in self.received.values() if r.kind == "video"), None)

    def audio(self) -> Received | None:
        return next((r for r in self.received.values() if r.kind == "audio"), None)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for pc in self.pcs:
            await pc.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)



Mint = Callable[..., Awaitable[str]]


class Peers:
    """The signaling participants one test makes, closed together by ``close()``.

    ``mint(room, role)`` makes an API token (the ``token_factory`` fixture);
    ``server`` is anything with ``make_url`` (an aiohttp ``TestClient``)."""

    def __init__(self, mint: Mint) -> None:
        self.mint = mint
        self._closers: list[Callable[[], Awaitable[None]]] = []

    async def client(self, server: Any, room: Any, *, role: str | None = None, name: str | None = None,
                     join: bool = True) -> SignalingClient:
        """A connected signaling client, joined (with a ``role`` token, or the page's way) unless told not to."""
        client = SignalingClient(str(server.make_url("")), room.slug)
        self._closers.append(client.close)
        await client.connect()
        if join:
            await client.join(await self.mint(room, role) if role else None, name=name)
        return client

    async def host(self, server: Any, room: Any, *, name: str | None = None) -> Publisher:
        """A publisher joined with a host token, not yet publishing."""
        publisher = Publisher(await self.client(server, room, role="host", name=name))
        self._closers.append(publisher.close)
        return publisher

    async def viewer(self, server: Any, room: Any, *, decode: bool = True, name: str | None = None,
                     role: str | None = None, join: bool = True) -> Viewer:
        """A viewer joined (the page's way unless a ``role`` token is asked for), not yet subscribed."""
        viewer = Viewer(await self.client(server, room, role=role, name=name, join=join), decode=decode)
        self._closers.append(viewer.close)
        return viewer

    async def close(self) -> None:
        # Newest first: a viewer's peers before its socket, a publisher's before its host's.
        while self._closers:
            await self._closers.pop()()
