"""The entry gate: who is asking, and may they enter this room this way.

Every entry point (WebSocket join, WHIP, WHEP, replay playlist and segments,
chat posting, publishing over signaling) calls ``Gate.admit`` (or
``admit_token`` / ``reconsider``: the same decision for a token carried in a
message, or for an identity already admitted asking for another entry).
Identity comes from, in order: a bearer token (through the ``TokenResolver``
the application wires from the token table's owner, ``auth.tokens``), then
the resolvers that features register (the session cookie, the
anonymous-viewer cookie).  Entitlement for rooms sold by plan is asked of the
checker the billing feature registers.  A refusal is an ``ApiError`` with
401 (sign in), 402 (needs a plan; says which) or 403 (not allowed).  This
module imports no feature.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Awaitable, Callable, Protocol

import asyncpg
from aiohttp import web

from . import metrics
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
class TokenGrant:
    """What a live API token grants: one role in one room."""

    token_id: int
    room_id: int
    role: str
    account_id: int | None
    expires_at: datetime


class TokenResolver(Protocol):
    async def resolve(self, token: str) -> TokenGrant | None:
        """The grant behind a live token (None: unknown, expired or revoked)."""

    async def grant(self, token_id: int) -> TokenGrant | None:
        """The grant a token id was minted with, live or not (a moderation target's role)."""


@dataclass(frozen=True)
class Identity:
    account_id: int | None = None
    anon_id: str | None = None
    display_name: str = ""
    token: TokenGrant | None = None
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
    reason: str = ""          # machine-readable, e.g. "plan_required", "payment_past_due"
    plans: tuple[str, ...] = ()


class EntitlementChecker(Protocol):
    async def __call__(self, account_id: int, room: RoomRecord) -> Entitlement: ...


IdentityResolver = Callable[[web.Request], Awaitable[Identity | None]]


@dataclass
class Gate:
    db: asyncpg.Pool
    tokens: TokenResolver | None = None
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
            grant = await self._resolve_token(value.strip())
            if grant is None:
                raise _refuse(401, "invalid_token", "token unknown, expired or revoked", request)
            return Identity(account_id=grant.account_id, token=grant)
        for resolve in self.resolvers:
            identity = await resolve(request)
            if identity is not None:
                return identity
        return Identity()

    async def _resolve_token(self, token: str) -> TokenGrant | None:
        return await self.tokens.resolve(token) if self.tokens is not None else None

    async def role_of(self, identity: Identity, room: RoomRecord) -> str:
        if identity.token is not None:
            if identity.token.room_id != room.id:
                raise ApiError(403, "token_wrong_room", "this token is for another room")
            role = identity.token.role
            if identity.token.account_id is not None:
                # A token an account minted never outranks that account as it is now: clamped
                # at every use, so a demoted or banned moderator's own token demotes with her.
                own = await self._account_role(identity.token.account_id, room)
                if ROLE_RANK[own] < ROLE_RANK[role]:
                    role = own
            return role
        if identity.account_id is not None:
            return await self._account_role(identity.account_id, room)
        return "viewer"

    async def _account_role(self, account_id: int, room: RoomRecord) -> str:
        if room.owner_id == account_id:
            return "host"
        return await directory.member_role(self.db, room.id, account_id) or "viewer"

    async def admit(self, request: web.Request, room: RoomRecord | str, entry: Entry) -> Admission:
        admission = await self._admit(room, entry, lambda: self.identify(request))
        # The request log keeps this identifier (never the address).
        request[SUBJECT] = admission.identity.subject
        return admission

    async def admit_token(self, token: str, room: RoomRecord | str, entry: Entry) -> Admission:
        """``admit`` for a bearer token carried in a message (browsers cannot set
        headers on a WebSocket): the same lookup and the same decision."""

        async def identify() -> Identity:
            grant = await self._resolve_token(token.strip()) if isinstance(token, str) else None
            if grant is None:
                raise ApiError(401, "invalid_token", "token unknown, expired or revoked")
            return Identity(account_id=grant.account_id, token=grant)

        return await self._admit(room, entry, identify)

    async def reconsider(self, admission: Admission, entry: Entry) -> Admission:
        """The same decision for an identity already admitted that now asks for another
        entry (posting chat, publishing over a signaling socket): role, policy, checks."""

        async def identify() -> Identity:
            return admission.identity

        return await self._admit(admission.room, entry, identify)

    async def role_of_subject(self, room: RoomRecord, subject: str) -> str:
        """The role a subject (``a:<id>``, ``t:<id>``, ``v:<id>``) holds in the room: what
        ``role_of`` gives the identity behind it (a moderation target's rank)."""
        kind, _, value = subject.partition(":")
        if kind == "a":
            identity = Identity(account_id=int(value))
        elif kind == "t" and self.tokens is not None:
            grant = await self.tokens.grant(int(value))
            if grant is None:
                return "viewer"
            identity = Identity(account_id=grant.account_id, token=grant)
        else:
            return "viewer"
        try:
            return await self.role_of(identity, room)
        except ApiError:
            return "viewer"   # a token for another room holds no role here

    async def _admit(self, room: RoomRecord | str, entry: Entry,
                     identify: Callable[[], Awaitable[Identity]]) -> Admission:
        started = time.perf_counter()
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
            metrics.gate_latency.labels(entry.value).observe(time.perf_counter() - started)
            raise
        metrics.gate_decisions.labels(entry.value, "allowed").inc()
        metrics.gate_latency.labels(entry.value).observe(time.perf_counter() - started)
        return admission

    @staticmethod
    def open_to_all(room: RoomRecord, entry: Entry) -> bool:
        """Whether ``decide`` admits every identity (anonymous included) to ``entry``: replay and
        live HLS of a public room.  Callers that serve such requests to a shared cache skip the
        identity lookups (a bearer token still goes through ``admit``: it may be refused)."""
        return entry is Entry.REPLAY and room.access_policy == "public"

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
