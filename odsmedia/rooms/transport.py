"""Transports: one RTCPeerConnection each, publishing or subscribing.

A PublisherTransport answers a client's sendonly offer and turns every
m-line into a Publication fed by the receiver hook.  A SubscriberTransport
carries Subscriptions to one viewer: the server offers (WebSocket) or
answers a recvonly offer (WHEP).  No renegotiation: a viewer opens one more
subscriber transport when a publication appears.  Candidates travel in the
SDP (aiortc gathers before it answers); trickled ones are accepted too.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from functools import partial
from typing import TYPE_CHECKING, Awaitable, Callable

from aiortc import RTCPeerConnection, RTCSessionDescription, sdp
from aiortc.sdp import candidate_from_sdp

from ..channels import SOURCES
from ..media import codecs, feedback, ice, udpmux
from ..media.receiver import (frame_timestamp_origin, send_nack, send_pli, tap, tap_packets,
                              tap_sender_reports)
from ..media.sender import (connect_downstream, install_downstream, install_lean_loop, install_packer,
                            on_keyframe_request)
from .errors import SfuError
from .publication import Publication
from .subscription import Subscription

if TYPE_CHECKING:
    from ..media.forwarder import Downstream
    from .participant import Participant

log = logging.getLogger("odsmedia.sfu")

MAX_SDP = 64 * 1024
MAX_MEDIA = 8
NEGOTIATION_TIMEOUT = 10.0
CONNECT_TIMEOUT = 30.0      # a transport that never connects (no answer, ICE never works) is released

CloseCallback = Callable[["Transport"], Awaitable[None] | None]


def parse_offer(text: object, *, direction: str) -> sdp.SessionDescription:
    """Validate an SDP offer well enough to answer it; 400 with a reason otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise SfuError(400, "invalid_sdp", "SDP offer missing")
    if len(text) > MAX_SDP:
        raise SfuError(400, "invalid_sdp", f"SDP over {MAX_SDP} bytes")
    if not text.startswith("v=0"):
        raise SfuError(400, "invalid_sdp", "SDP must start with v=0")
    try:
        desc = sdp.SessionDescription.parse(text)
    except Exception as exc:
        raise SfuError(400, "invalid_sdp", f"SDP does not parse: {type(exc).__name__}: {exc}") from None
    media = [m for m in desc.media if m.kind in ("audio", "video")]
    if not media:
        raise SfuError(400, "invalid_sdp", "SDP has no audio or video m-line")
    if len(desc.media) > MAX_MEDIA:
        raise SfuError(400, "invalid_sdp", f"at most {MAX_MEDIA} m-lines")
    for m in desc.media:
        if m.kind not in ("audio", "video"):
            raise SfuError(400, "invalid_sdp", f"unsupported m-line {m.kind!r}")
        if not m.ice.usernameFragment or not m.ice.password:
            raise SfuError(400, "invalid_sdp", "SDP lacks ice-ufrag/ice-pwd")
        if not m.dtls or not m.dtls.fingerprints:
            raise SfuError(400, "invalid_sdp", "SDP lacks a DTLS fingerprint")
        if m.direction not in (direction, "sendrecv", "inactive"):
            raise SfuError(400, "invalid_sdp", f"m-line {m.rtp.muxId or m.kind} is {m.direction}, expected {direction}")
    return desc


def _ufrag(sdp_text: str) -> str:
    for line in sdp_text.splitlines():
        if line.startswith("a=ice-ufrag:"):
            return line[12:].strip()
    return ""


class Transport:
    role = ""

    def __init__(self, participant: "Participant", *, announced: str = "",
                 on_close: CloseCallback | None = None, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.id = "TR" + secrets.token_hex(12)  # also the WHIP/WHEP resource capability
        self.participant = participant
        self.pc = RTCPeerConnection(ice.rtc_configuration(max_bundle=True))
        self.closed = False
        self._announced = announced
        self._on_close = on_close
        self._closing: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.pc.on("connectionstatechange", self._state_changed)
        self._watchdog: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            connect_timeout, self._connect_timed_out)

    def _connect_timed_out(self) -> None:
        self._watchdog = None
        if not self.connected.is_set() and not self.closed:
            self._closing = asyncio.ensure_future(self.close())

    def _state_changed(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self.connected.set()
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
            self.on_connected()
        elif state in ("failed", "closed") and not self.closed:
            # ICE failure or the peer vanished: release everything.
            self._closing = asyncio.ensure_future(self.close())

    def on_connected(self) -> None:
        pass

    def local_ufrag(self) -> str:
        return _ufrag(self.pc.localDescription.sdp if self.pc.localDescription else "")

    def remote_ufrag(self) -> str:
        return _ufrag(self.pc.remoteDescription.sdp if self.pc.remoteDescription else "")

    def local_sdp(self) -> str:
        return ice.announce(self.pc.localDescription.sdp, self._announced)

    async def add_candidate(self, candidate: object) -> None:
        """A trickled remote candidate ({candidate, sdpMid, sdpMLineIndex}); None ends."""
        if candidate is None:
            return
        if not isinstance(candidate, dict) or not isinstance(candidate.get("candidate"), str):
            raise SfuError(400, "invalid_candidate", "candidate must be an object with a candidate string")
        line = candidate["candidate"].strip()
        if line.startswith("a="):
            line = line[2:]
        if line.startswith("candidate:"):
            line = line[len("candidate:"):]
        if not line:
            return  # end-of-candidates marker in browsers
        try:
            parsed = candidate_from_sdp(line)
        except Exception:
            raise SfuError(400, "invalid_candidate", "candidate does not parse") from None
        parsed.sdpMid = candidate.get("sdpMid")
        index = candidate.get("sdpMLineIndex")
        parsed.sdpMLineIndex = index if isinstance(index, int) else None
        try:
            await self.pc.addIceCandidate(parsed)
        except Exception as exc:
            raise SfuError(400, "invalid_candidate", str(exc) or "candidate refused") from None

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.release()
        try:
            # Shielded: a cancelled caller must not cancel the future aiortc's own
            # concurrent close() is waiting on (it then fails setting its result).
            await asyncio.shield(self.pc.close())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("peer connection close failed")
        self.pc.remove_all_listeners()
        if self._on_close is not None:
            result = self._on_close(self)
            if result is not None:
                await result

    def release(self) -> None:
        pass

    def describe(self) -> dict:
        return {"id": self.id, "role": self.role, "state": self.pc.connectionState}


class PublisherTransport(Transport):
    role = "publish"

    def __init__(self, participant: "Participant", *, pli_interval: float, announced: str = "",
                 on_close: CloseCallback | None = None, connect_timeout: float = CONNECT_TIMEOUT,
                 packet: bool = True) -> None:
        super().__init__(participant, announced=announced, on_close=on_close, connect_timeout=connect_timeout)
        self.publications: list[Publication] = []
        self._pli_interval = pli_interval
        self._packet = packet

    async def answer(self, offer: object, sources: dict[str, str] | None = None) -> str:
        """Answer a sendonly offer; fills ``publications`` (one per m-line)."""
        desc = parse_offer(offer, direction="sendonly")
        sources = sources or {}
        plan = []
        for media in desc.media:
            try:
                codec = codecs.choose(media)
            except codecs.CodecError as exc:
                raise SfuError(400, "unsupported_codec", str(exc)) from None
            source = sources.get(str(media.rtp.muxId)) or ("camera" if media.kind == "video" else "microphone")
            if source not in SOURCES:
                raise SfuError(400, "invalid_source", f"source must be one of {', '.join(SOURCES)}")
            transceiver = self.pc.addTransceiver(media.kind, direction="recvonly")
            codecs.pin(transceiver, codec)
            plan.append((transceiver, codec, source))
        try:
            await asyncio.wait_for(self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer")),
                                   NEGOTIATION_TIMEOUT)
        except asyncio.TimeoutError:
            raise SfuError(504, "negotiation_timeout", "SDP negotiation timed out") from None
        except Exception as exc:
            raise SfuError(400, "invalid_sdp", f"SDP offer refused: {exc}") from None
        for transceiver, codec, source in plan:
            publication = Publication(self.participant, transceiver.kind, codec, source=source,
                                      pli_interval=self._pli_interval,
                                      request_pli=send_pli(transceiver.receiver))
            tap(transceiver.receiver, publication.deliver, publication.end)
            publication.frame_timestamp_origin = frame_timestamp_origin(transceiver.receiver)
            if self._packet:
                fanout = publication.fanout
                fanout.send_nack = send_nack(transceiver.receiver)
                tap_packets(transceiver.receiver, fanout.on_packet, publication.on_sender_report)
            else:
                tap_sender_reports(transceiver.receiver, publication.on_sender_report)
            self.publications.append(publication)
        try:
            with udpmux.serving():  # the node's own connection: on the shared UDP port
                await asyncio.wait_for(self.pc.setLocalDescription(await self.pc.createAnswer()), NEGOTIATION_TIMEOUT)
        except asyncio.TimeoutError:
            raise SfuError(504, "negotiation_timeout", "ICE gathering timed out") from None
        return self.local_sdp()

    def release(self) -> None:
        for publication in self.publications:
            publication.end()


# WHEP: which publication of a kind answers the offer's first, second, ... m-line of that kind.
WHEP_ORDER = {"screen": 0, "camera": 1, "microphone": 2, "screen-audio": 3}


class SubscriberTransport(Transport):
    role = "subscribe"

    def __init__(self, participant: "Participant", publications: list[Publication], *, queue_size: int,
                 announced: str = "", on_close: CloseCallback | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT, packet: bool = True) -> None:
        super().__init__(participant, announced=announced, on_close=on_close, connect_timeout=connect_timeout)
        self.subscriptions: list[Subscription] = []
        self._packet = packet
        self._publications = publications
        self._queue_size = queue_size
        self._started = False

    def _add(self, publication: Publication) -> None:
        subscription = Subscription(publication, self.participant, queue_size=self._queue_size,
                                    packet=self._packet)
        transceiver = self.pc.addTransceiver(subscription, direction="sendonly")
        codecs.pin(transceiver, publication.codec)
        if subscription.downstream is not None:
            install_downstream(transceiver.sender, subscription.downstream)
        else:
            install_packer(transceiver.sender, publication.codec_name)
            install_lean_loop(transceiver.sender)
        on_keyframe_request(transceiver.sender, lambda: publication.request_keyframe("viewer_pli"))
        self.subscriptions.append(subscription)

    async def offer(self) -> str:
        """Server-offer variant (WebSocket): one sendonly m-line per publication."""
        for publication in self._publications:
            self._add(publication)
        try:
            with udpmux.serving():  # the node's own connection: on the shared UDP port
                await asyncio.wait_for(self.pc.setLocalDescription(await self.pc.createOffer()), NEGOTIATION_TIMEOUT)
        except asyncio.TimeoutError:
            raise SfuError(504, "negotiation_timeout", "ICE gathering timed out") from None
        return self.local_sdp()

    async def accept(self, answer: object) -> None:
        if self.pc.signalingState != "have-local-offer":
            raise SfuError(409, "unexpected_answer", "this transport is not waiting for an answer")
        if not isinstance(answer, str) or not answer.startswith("v=0") or len(answer) > MAX_SDP:
            raise SfuError(400, "invalid_sdp", "SDP answer missing or malformed")
        try:
            await asyncio.wait_for(self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer")),
                                   NEGOTIATION_TIMEOUT)
        except asyncio.TimeoutError:
            raise SfuError(504, "negotiation_timeout", "SDP negotiation timed out") from None
        except Exception as exc:
            raise SfuError(400, "invalid_sdp", f"SDP answer refused: {exc}") from None

    async def answer(self, offer: object) -> str:
        """Client-offer variant (WHEP): the offer's recvonly m-lines get publications by kind."""
        desc = parse_offer(offer, direction="recvonly")
        # A player with one video m-line gets the screen when one is shared (it is what a
        # live coding session is about), the camera otherwise; a second m-line gets the next.
        waiting = sorted(self._publications, key=lambda p: WHEP_ORDER.get(p.source, len(WHEP_ORDER)))
        for media in desc.media:
            match = next((p for p in waiting if p.kind == media.kind), None)
            if match is None:
                continue
            waiting.remove(match)
            self._add(match)
        if not self.subscriptions:
            raise SfuError(400, "invalid_sdp", "the offer has no m-line for any published kind")
        try:
            await asyncio.wait_for(self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer")),
                                   NEGOTIATION_TIMEOUT)
            with udpmux.serving():  # the node's own connection: on the shared UDP port
                await asyncio.wait_for(self.pc.setLocalDescription(await self.pc.createAnswer()), NEGOTIATION_TIMEOUT)
        except asyncio.TimeoutError:
            raise SfuError(504, "negotiation_timeout", "SDP negotiation timed out") from None
        except Exception as exc:
            raise SfuError(400, "invalid_sdp", f"SDP offer refused: {exc}") from None
        return self.local_sdp()

    def on_connected(self) -> None:
        # Forward only once media can flow: the keyframe requested now is the one the viewer gets.
        if not self._started:
            self._started = True
            for subscription in self.subscriptions:
                if subscription.downstream is not None:
                    sender = self._sender_of(subscription)
                    if sender is None or not connect_downstream(sender, subscription.downstream):
                        log.warning("subscriber transport connected without SRTP or a nominated pair")
                        continue
                subscription.start()
            if self._packet and self.subscriptions:
                # The viewer's RTCP is handled as it arrives (media.feedback), not through aiortc's
                # receive task; the transport is one bundle, so any sender's DTLS transport is it.
                sender = self._sender_of(self.subscriptions[0])
                if sender is not None:
                    feedback.install(sender.transport, self._feedback_target)

    def _feedback_target(self, ssrc: int) -> "tuple[Downstream, Callable[[], None]] | None":
        for subscription in self.subscriptions:
            downstream = subscription.downstream
            if downstream is not None and downstream.ssrc == ssrc:
                return downstream, partial(subscription.publication.request_keyframe, "viewer_pli")
        return None

    def ended(self) -> bool:
        return all(s.publication.ended for s in self.subscriptions)

    def release(self) -> None:
        for subscription in self.subscriptions:
            subscription.close()

    def describe(self) -> dict:
        return {**super().describe(), "publications": [
            {"publication": s.publication.id, "kind": s.kind, "mid": self._mid_of(s)} for s in self.subscriptions]}

    def _sender_of(self, subscription: Subscription):
        for t in self.pc.getTransceivers():
            if t.sender.track is subscription:
                return t.sender
        return None

    def _mid_of(self, subscription: Subscription) -> str | None:
        for t in self.pc.getTransceivers():
            if t.sender.track is subscription:
                return t.mid
        return None
