"""The entry gate: who is asking, and may they enter this room this way.

Every entry point (WebSocket join, WHIP, WHEP, replay playlist and segments,
chat posting) calls ``Gate.admit``.  Identity comes from, in order: a bearer
token, then the resolvers that features register (the session cookie, the
anonymous-viewer cookie).  Entitlement for rooms sold by plan is asked of the
checker the billing feature registers.  A refusal is an ``ApiError`` with
401 (sign in), 402 (needs a plan; says which) or 403 (not allowed).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

import asyncpg
from aiohttp import web

from . import metrics
from .auth import tokens
from .errors import ApiError
from .keys import SUBJECT
from .rooms import directory
from .rooms.directory import RoomRecord


class Entry(str, enum.Enum):
    JOIN = "join"          # WebSocket signaling join
    PUBLISH = "publish"    # WHIP, or publish over signaling
    PLAY = "play"          # WHEP
    REPLAY = "replay"      # episode list, playlists, segments, chat replay
    CHAT = "chat"          # posting chat items


ROLE_RANK = {"viewer": 0, "moderator": 1, "host": 2}


@dataclass(frozen=True)
class Identity:
    account_id: int | None = None
    anon_id: str | None = None
    display_name: str = ""
    token: tokens.TokenGrant | None = None
    session_id: int | None = None

    @property
    def kind(self) -> str:
        if self.token is not None:
            return "token"
        if self.account_id is not None:
            return "account"
        if self.anon_id is not None:
            return "anonymous"
        return "none"

    @property
    def subject(self) -> str:
        """A stable id for chat authorship, rate limits and moderation targets."""
        if self.account_id is not None:
            return f"a:{self.account_id}"
        if self.token is not None:
            return f"t:{self.token.token_id}"
        if self.anon_id is not None:
            return f"v:{self.anon_id}"
        return "none"


@dataclass(frozen=True)
class Admission:
    room: RoomRecord
    identity: Identity
    role: str

    @property
    def is_moderator(self) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK["moderator"]


@dataclass(frozen=True)
class Entitlement:
    allowed: bool
    reason: str = ""          # machine-readable, e.g. "plan_required", "past_due_expired"
    plans: tuple[str, ...] = ()


class EntitlementChecker(Protocol):
    async def __call__(self, account_id: int, room: RoomRecord) -> Entitlement: ...


IdentityResolver = Callable[[web.Request], Awaitable[Identity | None]]


@dataclass
class Gate:
    db: asyncpg.Pool
    resolvers: list[IdentityResolver] = field(default_factory=list)
    entitlements: EntitlementChecker | None = None
    # Refusals features add after the policy decision (the chat ban table):
    # each raises ApiError to refuse an admission that policy allowed.
    checks: list[Callable[[Admission, Entry], Awaitable[None]]] = field(default_factory=list)

    async def identify(self, request: web.Request) -> Identity:
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise _refuse(401, "invalid_token", "Authorization must be 'Bearer <token>'", request)
            grant = await tokens.resolve(self.db, value.strip())
            if grant is None:
                raise _refuse(401, "invalid_token", "token unknown, expired or revoked", request)
            return Identity(account_id=grant.account_id, token=grant)
        for resolve in self.resolvers:
            identity = await resolve(request)
            if identity is not None:
                return identity
        return Identity()

    async def role_of(self, identity: Identity, room: RoomRecord) -> str:
        if identity.token is not None:
            if identity.token.room_id != room.id:
                raise ApiError(403, "token_wrong_room", "this token is for another room")
            return identity.token.role
        if identity.account_id is not None:
            if room.owner_id == identity.account_id:
                return "host"
            role = await directory.member_role(self.db, room.id, identity.account_id)
            if role:
                return role
        return "viewer"

    async def admit(self, request: web.Request, room: RoomRecord | str, entry: Entry) -> Admission:
        admission = await self._admit(room, entry, lambda: self.identify(request))
        # The request log keeps this identifier (never the address).
        request[SUBJECT] = admission.identity.subject
        return admission

    async def admit_token(self, token: str, room: RoomRecord | str, entry: Entry) -> Admission:
        """``admit`` for a bearer token carried in a message (browsers cannot set
        headers on a WebSocket): the same lookup and the same decision."""

        async def identify() -> Identity:
            grant = await tokens.resolve(self.db, token.strip()) if isinstance(token, str) else None
            if grant is None:
                raise ApiError(401, "invalid_token", "token unknown, expired or revoked")
            return Identity(account_id=grant.account_id, token=grant)

        return await self._admit(room, entry, identify)

    async def _admit(self, room: RoomRecord | str, entry: Entry,
                     identify: Callable[[], Awaitable[Identity]]) -> Admission:
        try:
            if isinstance(room, str):
                room = await directory.require(self.db, room)
            identity = await identify()
            role = await self.role_of(identity, room)
            admission = await self.decide(room, identity, role, entry)
            for check in self.checks:
                await check(admission, entry)
        except ApiError as exc:
            metrics.gate_decisions.labels(entry.value, exc.reason).inc()
            raise
        metrics.gate_decisions.labels(entry.value, "allowed").inc()
        return admission

    async def decide(self, room: RoomRecord, identity: Identity, role: str, entry: Entry) -> Admission:
        admission = Admission(room, identity, role)
        if entry is Entry.PUBLISH:
            if role != "host":
                raise ApiError(403, "not_a_publisher", "only a host may publish in this room")
            return admission
        if role in ("host", "moderator"):
            return admission
        # An operator-minted viewer token (no account behind it) is an explicit grant.
        if identity.token is not None and identity.account_id is None:
            return admission
        if room.access_policy == "public":
            if entry is Entry.CHAT and identity.kind == "none":
                raise ApiError(401, "sign_in_required", "sign in to chat")
            return admission
        if identity.account_id is None:
            raise ApiError(401, "sign_in_required", "this room is for signed-in members",
                           plans=list(room.access_plans))
        if room.access_policy == "signed-in":
            return admission
        if self.entitlements is None:
            raise ApiError(402, "plan_required", "this room needs a plan", plans=list(room.access_plans))
        decision = await self.entitlements(identity.account_id, room)
        if not decision.allowed:
            raise ApiError(402, decision.reason or "plan_required", "this room needs a plan",
                           plans=list(decision.plans or room.access_plans))
        return admission


def _refuse(status: int, reason: str, message: str, request: web.Request) -> ApiError:
    err = ApiError(status, reason, message)
    if status == 401:
        err.headers["WWW-Authenticate"] = 'Bearer realm="odsmedia"'
    return err
