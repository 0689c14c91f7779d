"""Room: the live state of one room on this node.

Participants join and leave; publishers' transports add Publications;
viewers' subscriber transports carry Subscriptions.  Every change is pushed
to everyone in the room as an event, and observers (the recorder) hear about
publications coming and going.  All methods run on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Iterable

from .errors import SfuError
from .participant import Participant
from .publication import Publication
from .transport import PublisherTransport, SubscriberTransport, Transport

if TYPE_CHECKING:
    from ..rooms.directory import RoomRecord
    from .sfu import Sfu

log = logging.getLogger("odsmedia.sfu")

MAX_PARTICIPANT_TRANSPORTS = 16


class Room:
    def __init__(self, sfu: "Sfu", record: "RoomRecord") -> None:
        self.sfu = sfu
        self.record = record
        self.slug = record.slug
        self.participants: dict[str, Participant] = {}
        self.publications: dict[str, Publication] = {}
        # (subject, source) a moderator muted: held for the person while the room is live
        # here, so a host who republishes (reconnect, new camera) comes back still muted.
        self.moderator_mutes: set[tuple[str, str]] = set()
        self.unsubscribe_control = None  # set by the Sfu while the room is live here

    # --- participants -----------------------------------------------------------------------

    def join(self, participant: Participant) -> None:
        self.participants[participant.id] = participant
        self.broadcast({"type": "participant_joined", "participant": participant.describe()}, skip=participant)
        self.sfu.audience_changed(self)

    async def leave(self, participant: Participant, *, reason: str = "left") -> None:
        if self.participants.pop(participant.id, None) is None:
            return
        participant.stop()
        hooks, participant.on_leave = participant.on_leave, []
        for hook in hooks:
            hook()
        for transport in list(participant.transports.values()):
            await transport.close()
        self.broadcast({"type": "participant_left", "participant": participant.id, "reason": reason})
        self.sfu.audience_changed(self)
        if not self.participants:
            await self.sfu.room_empty(self)

    def snapshot(self) -> dict[str, Any]:
        return {
            "participants": [p.describe() for p in self.participants.values()],
            "publications": [p.describe() for p in self.publications.values()],
        }

    def broadcast(self, message: dict[str, Any], *, skip: Participant | None = None) -> None:
        for participant in self.participants.values():
            if participant is not skip:
                participant.notify(message)
        relays = self.sfu.relays
        if relays is not None:
            relays.room_event(self, message)

    def viewers(self) -> int:
        """Participants other than hosts: the room's audience on this node."""
        return sum(1 for p in self.participants.values() if p.role != "host")

    def of_subject(self, subject: str) -> list[Participant]:
        return [p for p in self.participants.values() if p.subject == subject]

    # --- transports -------------------------------------------------------------------------

    def _check_capacity(self, participant: Participant) -> None:
        if participant.id not in self.participants:
            raise SfuError(409, "not_joined", "join the room first")
        if len(participant.transports) >= MAX_PARTICIPANT_TRANSPORTS:
            raise SfuError(429, "too_many_transports",
                           f"at most {MAX_PARTICIPANT_TRANSPORTS} transports per participant")

    async def publish(self, participant: Participant, offer: object,
                      sources: dict[str, str] | None = None) -> PublisherTransport:
        """The edge has admitted ``participant`` for ``Entry.PUBLISH`` (the gate decides who publishes)."""
        self._check_capacity(participant)
        config = self.sfu.config
        transport = PublisherTransport(participant, pli_interval=config["media.pli_interval"],
                                       announced=config["ice.announced_address"], on_close=self._transport_closed,
                                       connect_timeout=self.sfu.connect_timeout,
                                       packet=config["media.forwarding"] == "packet")
        try:
            await transport.answer(offer, sources)
        except BaseException:
            await transport.close()
            raise
        if participant.left:
            await transport.close()
            raise SfuError(409, "not_joined", "left the room during negotiation")
        participant.transports[transport.id] = transport
        # Operators watch rooms go live and stop in the log (`odsmedia dev` prints it).
        log.info("live", extra={"room": self.slug, "participant": participant.name,
                                "tracks": ",".join(p.kind for p in transport.publications)})
        for publication in transport.publications:
            if (participant.subject, publication.source) in self.moderator_mutes:
                publication.moderator_muted = True
            self.publications[publication.id] = publication
            self.broadcast({"type": "track_published", "publication": publication.describe()})
            self.sfu.publication_added(self, publication)
        return transport

    def _check_viewer_cap(self, participant: Participant, cap: int) -> None:
        """A viewer (subscribing, not publishing) past the room's WebRTC cap is refused;
        the viewer page then plays the live LL-HLS playlist instead."""
        def viewing(p: Participant) -> bool:
            kinds = [type(t) for t in p.transports.values()]
            return SubscriberTransport in kinds and PublisherTransport not in kinds
        if any(isinstance(t, PublisherTransport) for t in participant.transports.values()) or viewing(participant):
            return
        if sum(1 for p in self.participants.values() if viewing(p)) >= cap:
            raise SfuError(429, "webrtc_viewer_cap", "this room's WebRTC viewers are full; watch over LL-HLS")

    async def subscribe(self, participant: Participant, publication_ids: Iterable[str] | None = None,
                        *, offer: object = None) -> SubscriberTransport:
        """A subscriber transport for these publications (all live ones when None).

        Without ``offer`` the server offers (signaling); with one it answers (WHEP)."""
        self._check_capacity(participant)
        if publication_ids is None:
            chosen = [p for p in self.publications.values() if p.participant is not participant]
        else:
            chosen = []
            for pid in publication_ids:
                publication = self.publications.get(pid) if isinstance(pid, str) else None
                if publication is None:
                    raise SfuError(404, "unknown_publication", f"no live publication {pid!r}")
                if publication not in chosen:
                    chosen.append(publication)
        if not chosen:
            raise SfuError(409, "nothing_published", "nothing is published in this room")
        config = self.sfu.config
        self._check_viewer_cap(participant, config["media.max_webrtc_viewers_per_room"])
        transport = SubscriberTransport(participant, chosen, queue_size=config["media.subscriber_queue"],
                                        announced=config["ice.announced_address"], on_close=self._transport_closed,
                                        connect_timeout=self.sfu.connect_timeout,
                                        packet=config["media.forwarding"] == "packet")
        try:
            if offer is None:
                await transport.offer()
            else:
                await transport.answer(offer)
        except BaseException:
            await transport.close()
            raise
        if participant.left or any(p.ended for p in chosen):
            await transport.close()
            raise SfuError(409, "publication_ended", "a requested publication ended during negotiation")
        participant.transports[transport.id] = transport
        return transport

    def transport_of(self, participant: Participant, transport_id: object) -> Transport:
        transport = participant.transports.get(transport_id) if isinstance(transport_id, str) else None
        if transport is None:
            raise SfuError(404, "unknown_transport", f"no transport {transport_id!r} of yours")
        return transport

    async def _transport_closed(self, transport: Transport) -> None:
        transport.participant.transports.pop(transport.id, None)
        if isinstance(transport, PublisherTransport):
            if transport.publications:
                log.info("stopped", extra={"room": self.slug, "participant": transport.participant.name})
            await self._publications_ended(transport.publications)
        participant = transport.participant
        if participant.via != "ws" and not participant.transports and participant.id in self.participants:
            # A WHIP/WHEP session is its one transport.
            await self.leave(participant, reason="session_ended")

    async def _publications_ended(self, publications: Iterable[Publication]) -> None:
        for publication in publications:
            publication.end()
            if self.publications.pop(publication.id, None) is not None:
                self.broadcast({"type": "track_unpublished", "publication": publication.id})
                self.sfu.publication_removed(self, publication)
        # Viewers' transports that carried only these publications have nothing left to do.
        for participant in list(self.participants.values()):
            for other in list(participant.transports.values()):
                if isinstance(other, SubscriberTransport) and other.ended():
                    await other.close()

    # --- mute -------------------------------------------------------------------------------

    def set_muted(self, publication: Publication, muted: bool, *, by: str) -> None:
        if by == "moderator":
            if publication.moderator_muted == muted:
                return
            publication.moderator_muted = muted
        else:
            if muted is False and publication.moderator_muted:
                raise SfuError(403, "muted_by_moderator", "a moderator muted this track")
            if publication.muted == muted:
                return
            publication.muted = muted
        if publication.forwarding:
            # Resume at a keyframe: viewers' decoders missed everything while muted.
            for sink in publication.sinks:
                sink.restart_at_keyframe()
            publication.request_keyframe("unmuted")
        self.broadcast({"type": "track_muted" if muted else "track_unmuted",
                        "publication": publication.id, "by": by})

    def own_publication(self, participant: Participant, publication_id: object) -> Publication:
        publication = self.publications.get(publication_id) if isinstance(publication_id, str) else None
        if publication is None or publication.participant is not participant:
            raise SfuError(404, "unknown_publication", f"no publication {publication_id!r} of yours")
        return publication

    # --- moderation from the bus ------------------------------------------------------------

    async def apply_control(self, message: dict[str, Any]) -> None:
        action = message.get("action")
        target = message.get("target")
        if not isinstance(target, str) or target == "none":
            return      # "none" is every unidentified visitor, never one person
        targets = self.of_subject(target)
        if action in ("mute", "unmute"):
            source = message.get("source")
            if not isinstance(source, str):
                return
            if action == "mute":
                self.moderator_mutes.add((target, source))
            else:
                self.moderator_mutes.discard((target, source))
            for participant in targets:
                for publication in list(self.publications.values()):
                    if publication.participant is participant and publication.source == source:
                        self.set_muted(publication, action == "mute", by="moderator")
        elif action == "role":
            role = message.get("role")
            if role not in ("moderator", "viewer"):
                return
            for participant in targets:
                if participant.role != "host":
                    participant.role = role
                    # Everyone's people list shows the new badge at once, not after a rejoin.
                    self.broadcast({"type": "role", "participant": participant.id, "role": role})
        elif action in ("kick", "ban"):
            reason = message.get("reason") if isinstance(message.get("reason"), str) else ""
            for participant in targets:
                await self.kick(participant, reason=reason[:200], banned=action == "ban")

    async def kick(self, participant: Participant, *, reason: str = "", banned: bool = False) -> None:
        participant.notify({"type": "kicked", "reason": reason, "banned": banned})
        await participant.flush_and_stop()
        if participant.close_socket is not None:
            participant.close_socket(4001)
        await self.leave(participant, reason="kicked")

    async def close(self, *, code: str = "server_shutdown", message: str = "the server is stopping",
                    close_code: int = 1001, reason: str = "shutdown") -> None:
        """Every participant is told (an ``error`` event with ``code``), its socket closed, and leaves."""
        for participant in list(self.participants.values()):
            participant.notify({"type": "error", "code": code, "message": message, "ref": None})
            await participant.flush_and_stop(timeout=0.2)
            if participant.close_socket is not None:
                participant.close_socket(close_code)
            await self.leave(participant, reason=reason)
        await asyncio.sleep(0)
