"""Moderation by room role: what a host or moderator may do, to whom, and its audit.

Each action checks the actor's role and the target's, changes state in one
transaction together with its ``moderation_actions`` row, then tells every
node: chat-side effects on the room's chat channel, media-side ones (mute,
kick, ban) on ``room:{slug}:control`` for the node that holds the room's SFU
state (docs/architecture.md, "Moderation across nodes").
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import asyncpg

from ..bus import Bus
from ..channels import SOURCES, ControlMessage, control_channel, kick_message, mute_message, role_message
from ..errors import INT64_MAX, has_unstorable, json_int
from ..gate import ROLE_RANK, Gate
from ..rooms import directory
from ..rooms.directory import RoomRecord
from ..storage import transaction
from . import store
from .hub import ChatHub
from .items import ChatError

log = logging.getLogger("odsmedia.chat")

SUBJECT = re.compile(r"^(a:\d{1,18}|t:\d{1,18}|v:[A-Za-z0-9_-]{1,64})$")
MAX_TIMEOUT_MINUTES = 7 * 24 * 60
MAX_SLOW_MODE = 3600
REASON_MAX = 200


@dataclass(frozen=True)
class Actor:
    subject: str
    role: str

    @property
    def rank(self) -> int:
        return ROLE_RANK[self.role]


async def audit(conn: asyncpg.Connection, room: RoomRecord, actor: Actor, action: str, target: str = "",
                **detail: Any) -> None:
    await conn.execute(
        "INSERT INTO moderation_actions (room_id, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        room.id, actor.subject, action, target, detail)


def _target(raw: Any) -> str:
    if not isinstance(raw, str) or not SUBJECT.match(raw):
        raise ChatError("invalid_target", "target must be a subject such as a:12, t:3 or v:abc")
    return raw


def _reason(raw: Any) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str) or len(raw) > REASON_MAX or has_unstorable(raw) \
            or any(unicodedata.category(c) == "Cc" for c in raw):
        raise ChatError("invalid_reason", f"reason must be text of at most {REASON_MAX} characters, "
                                          "without control characters")
    return raw.strip()


def _int(raw: Any, name: str, low: int, high: int) -> int:
    if json_int(raw, low=low, high=high) is None:
        raise ChatError(f"invalid_{name}", f"{name} must be an integer from {low} to {high}")
    return raw


class Moderation:
    def __init__(self, db: asyncpg.Pool, bus: Bus, hub: ChatHub, gate: Gate) -> None:
        self.db = db
        self.bus = bus
        self.hub = hub
        self.gate = gate

    # -- checks ----------------------------------------------------------------

    @staticmethod
    def require_moderator(actor: Actor) -> None:
        if actor.rank < ROLE_RANK["moderator"]:
            raise ChatError("not_a_moderator", "only the host and moderators may do this")

    async def _outranked_target(self, room: RoomRecord, actor: Actor, raw: Any) -> str:
        """A target the actor may act on: someone of lower rank, never oneself."""
        self.require_moderator(actor)
        target = _target(raw)
        if target == actor.subject:
            raise ChatError("invalid_target", "you cannot do this to yourself")
        if ROLE_RANK[await self.gate.role_of_subject(room, target)] >= actor.rank:
            raise ChatError("target_outranks", "the target's role is not below yours")
        return target

    async def _control(self, room: RoomRecord, message: ControlMessage) -> None:
        await self.bus.publish(control_channel(room.slug), message)

    # -- items -------------------------------------------------------------------

    async def delete(self, room: RoomRecord, actor: Actor, item_id: Any) -> dict[str, Any]:
        item_id = _int(item_id, "id", 1, INT64_MAX)
        async with transaction(self.db) as conn:
            item = await store.get(conn, room.id, item_id)
            if item is None or item.deleted:
                raise ChatError("item_not_found", f"no item {item_id} in this room")
            own = item.author == actor.subject
            if not own:
                self.require_moderator(actor)
            item = await store.delete(conn, room.id, item_id, actor.subject)
            if not own:
                await audit(conn, room, actor, "delete", item.author, item_id=item_id)
        await self.hub.dispatch(room.slug, item.event())
        return {"id": item_id}

    async def answer(self, room: RoomRecord, actor: Actor, item_id: Any, answered: Any = True) -> dict[str, Any]:
        self.require_moderator(actor)
        item_id = _int(item_id, "id", 1, INT64_MAX)
        item = await store.mark_answered(self.db, room.id, item_id, answered is not False)
        await self.hub.dispatch(room.slug, item.event())
        return {"id": item_id}

    async def clear(self, room: RoomRecord, actor: Actor) -> dict[str, Any]:
        self.require_moderator(actor)
        async with transaction(self.db) as conn:
            seq, ids = await store.clear(conn, room.id, actor.subject)
            await audit(conn, room, actor, "clear", count=len(ids))
        await self.hub.dispatch(room.slug, {"type": "deleted", "seq": seq, "ids": ids, "cleared": True})
        return {"count": len(ids)}

    # -- people ----------------------------------------------------------------------

    async def timeout(self, room: RoomRecord, actor: Actor, target: Any, minutes: Any,
                      reason: Any = None) -> dict[str, Any]:
        target = await self._outranked_target(room, actor, target)
        minutes = _int(minutes, "minutes", 1, MAX_TIMEOUT_MINUTES)
        reason = _reason(reason)
        async with transaction(self.db) as conn:
            until = await store.time_out(conn, room.id, target, minutes, by=actor.subject, reason=reason)
            await audit(conn, room, actor, "timeout", target, minutes=minutes, reason=reason)
        await self.hub.dispatch(room.slug, {"type": "sanction", "sanction": "timeout", "target": target,
                                            "until": until.isoformat(), "by": actor.subject})
        return {"target": target, "until": until.isoformat()}

    async def ban(self, room: RoomRecord, actor: Actor, target: Any, reason: Any = None) -> dict[str, Any]:
        target = await self._outranked_target(room, actor, target)
        reason = _reason(reason)
        async with transaction(self.db) as conn:
            await store.ban(conn, room.id, target, by=actor.subject, reason=reason)
            await audit(conn, room, actor, "ban", target, reason=reason)
        await self.hub.dispatch(room.slug, {"type": "banned", "target": target, "by": actor.subject,
                                            "error": "banned", "message": "you are banned from this room"})
        try:
            await self._control(room, kick_message(target, by=actor.subject, reason=reason, ban=True))
        except Exception:
            # The ban is recorded and enforced at every entry; only the live media
            # session outlives it until the SFU node hears of it.
            log.warning("ban not published to the SFU", extra={"room": room.slug}, exc_info=True)
        return {"target": target}

    async def lift(self, room: RoomRecord, actor: Actor, target: Any, kind: str) -> dict[str, Any]:
        """Unban or end a timeout (never one's own)."""
        self.require_moderator(actor)
        target = _target(target)
        if target == actor.subject:
            raise ChatError("invalid_target", "nobody lifts a sanction on themselves")
        async with transaction(self.db) as conn:
            if not await store.lift_sanction(conn, room.id, target, kind):
                raise ChatError("not_sanctioned", f"the target has no {kind}")
            await audit(conn, room, actor, "unban" if kind == "ban" else "end_timeout", target)
        await self.hub.dispatch(room.slug, {"type": "sanction_lifted", "sanction": kind, "target": target,
                                            "by": actor.subject})
        return {"target": target}

    async def sanctions(self, room: RoomRecord, actor: Actor) -> dict[str, Any]:
        """The room's running timeouts and bans, newest first (for lifting them)."""
        self.require_moderator(actor)
        rows = await store.running_sanctions(self.db, room.id)
        return {"sanctions": [{"target": r["subject"], "name": r["name"], "sanction": r["kind"],
                               "until": r["until"].isoformat() if r["until"] else None,
                               "by": r["by_subject"], "reason": r["reason"],
                               "since": r["created_at"].isoformat()} for r in rows]}

    async def slow_mode(self, room: RoomRecord, actor: Actor, seconds: Any) -> dict[str, Any]:
        self.require_moderator(actor)
        seconds = _int(seconds, "seconds", 0, MAX_SLOW_MODE)
        async with transaction(self.db) as conn:
            await store.set_slow_mode(conn, room.id, seconds)
            await audit(conn, room, actor, "slow_mode", seconds=seconds)
        await self.hub.dispatch(room.slug, {"type": "settings", "slow_mode": seconds, "by": actor.subject})
        return {"slow_mode": seconds}

    async def set_role(self, room: RoomRecord, actor: Actor, target: Any, promote: bool) -> dict[str, Any]:
        if actor.role != "host":
            raise ChatError("not_the_host", "only the host may promote or demote moderators")
        target = _target(target)
        if not target.startswith("a:"):
            raise ChatError("invalid_target", "only signed-in accounts can be moderators")
        account_id = int(target[2:])
        if account_id == room.owner_id or target == actor.subject:
            raise ChatError("invalid_target", "the host's role cannot change")
        async with transaction(self.db) as conn:
            current = await directory.member_role(conn, room.id, account_id)
            if current == "host":
                raise ChatError("invalid_target", "the host's role cannot change")
            if promote:
                try:
                    await directory.add_member(conn, room.id, account_id, "moderator")
                except asyncpg.ForeignKeyViolationError:
                    raise ChatError("invalid_target", "no such account") from None
            elif current != "moderator":
                raise ChatError("not_a_moderator_target", "the target is not a moderator")
            else:
                await directory.remove_member(conn, room.id, account_id)
            await audit(conn, room, actor, "promote" if promote else "demote", target)
        role = "moderator" if promote else "viewer"
        await self.hub.dispatch(room.slug, {"type": "role", "target": target, "role": role, "by": actor.subject})
        try:
            await self._control(room, role_message(target, role, by=actor.subject))
        except Exception:
            # Recorded and enforced at every use (the gate); only the SFU's view of the
            # participant's role waits until it rejoins.
            log.warning("role change not published to the SFU", extra={"room": room.slug}, exc_info=True)
        return {"target": target, "role": role}

    async def mute(self, room: RoomRecord, actor: Actor, target: Any, source: Any, mute: bool) -> dict[str, Any]:
        # Only hosts publish, so muting is the one action a moderator may take on a
        # host (a co-host's open mic); it is reversible by any moderator.  It names one
        # source of the person (their camera, never also their screen), and holds for
        # that source across their republishing until a moderator unmutes it.
        self.require_moderator(actor)
        target = _target(target)
        if target == actor.subject:
            raise ChatError("invalid_target", "use your own controls to mute yourself")
        if source not in SOURCES:
            raise ChatError("invalid_source", "source must be one of " + ", ".join(SOURCES))
        action = "mute" if mute else "unmute"
        # Published first: if Redis is down the request fails and nothing is recorded.
        await self._control(room, mute_message(target, source, by=actor.subject, mute=mute))
        async with transaction(self.db) as conn:
            await audit(conn, room, actor, action, target, source=source)
        return {"target": target, "source": source}

    async def kick(self, room: RoomRecord, actor: Actor, target: Any, reason: Any = None) -> dict[str, Any]:
        target = await self._outranked_target(room, actor, target)
        reason = _reason(reason)
        await self._control(room, kick_message(target, by=actor.subject, reason=reason))
        async with transaction(self.db) as conn:
            await audit(conn, room, actor, "kick", target, reason=reason)
        await self.hub.dispatch(room.slug, {"type": "kicked", "target": target, "by": actor.subject,
                                            "error": "kicked", "message": reason or "removed by a moderator"})
        return {"target": target}

