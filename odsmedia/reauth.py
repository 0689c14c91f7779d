"""Open sockets lose their authority when it ends: re-authorization of this node's
chat and signaling sockets.

A socket is admitted once, at its join; what admitted it can end while it stays
open: the session signs out or is revoked (or reaches its absolute expiry), the
token is revoked or expires, the account is deleted.  Every ``interval``
(``auth.reauth_interval``, 2 s by default) each node asks PostgreSQL, in one
query, which of the credentials its open sockets hold have ended, and ends those
sockets with close code 4401 and the reason (``session_ended``,
``token_revoked``, ``account_deleted``).  Asking the system of record on every
node bounds the delay without trusting a bus message to arrive.

Other endings travel as they happen: a ban or kick as a chat notice and on the
room's control channel, a demotion as a role notice (chat) and a control
``role`` message (signaling), a plan that ended as a billing ``kick`` on the
control channel, which chat applies too (4402 ``entitlement_ended``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Callable

import asyncpg
from aiohttp import web

from . import metrics
from .errors import STORAGE_ERRORS
from .gate import Identity

log = logging.getLogger("odsmedia.reauth")

# The close code of a socket whose credential ended: sign in (or get a token) again.
CLOSE_REVOKED = 4401
# The close code of a socket whose room access ended (plan over): see docs/billing.md.
CLOSE_ENTITLEMENT_ENDED = 4402

REASONS = {
    "account_deleted": "this account was deleted",
    "token_revoked": "the token this connection used was revoked or expired",
    "session_ended": "you signed out, or this session was revoked or expired; sign in again",
}

_ENDED = """
    SELECT ARRAY(SELECT u.id FROM unnest($1::bigint[]) AS u(id) WHERE NOT EXISTS (
                 SELECT 1 FROM sessions s WHERE s.id = u.id AND s.revoked_at IS NULL AND s.expires_at > now()))
               AS sessions,
           ARRAY(SELECT u.id FROM unnest($2::bigint[]) AS u(id) WHERE NOT EXISTS (
                 SELECT 1 FROM api_tokens t WHERE t.id = u.id AND t.revoked_at IS NULL AND t.expires_at > now()))
               AS tokens,
           ARRAY(SELECT u.id FROM unnest($3::bigint[]) AS u(id) WHERE NOT EXISTS (
                 SELECT 1 FROM accounts a WHERE a.id = u.id))
               AS accounts"""


@dataclass(frozen=True)
class Credential:
    """What admitted a socket (any may be None)."""

    session_id: int | None = None
    token_id: int | None = None
    account_id: int | None = None

    @property
    def empty(self) -> bool:
        return self.session_id is None and self.token_id is None and self.account_id is None


def credential_of(identity: Identity) -> Credential:
    return Credential(session_id=identity.session_id,
                      token_id=identity.token.token_id if identity.token is not None else None,
                      account_id=identity.account_id)


# Called with the reason (a key of REASONS) when the credential ended; must not block.
OnEnd = Callable[[str], None]


class Reauthorizer:
    """This node's watched credentials (``app[REAUTH]``)."""

    def __init__(self, db: asyncpg.Pool, interval: float) -> None:
        self.db = db
        self.interval = max(0.1, interval)
        self._watched: dict[int, tuple[Credential, OnEnd]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None

    def watch(self, credential: Credential, on_end: OnEnd) -> Callable[[], None]:
        """Call ``on_end`` (once) when the credential ends; returns the unwatch."""
        if credential.empty:
            return lambda: None
        key = next(self._ids)
        self._watched[key] = (credential, on_end)
        return lambda: self._watched.pop(key, None) and None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="reauthorize")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except STORAGE_ERRORS:
                log.warning("re-authorization skipped: PostgreSQL unavailable")
            except Exception:
                log.exception("re-authorization failed")

    async def sweep(self) -> int:
        """End the watched sockets whose credential ended; returns how many."""
        if not self._watched:
            return 0
        watched = list(self._watched.items())
        sessions = {c.session_id for _, (c, _) in watched if c.session_id is not None}
        tokens = {c.token_id for _, (c, _) in watched if c.token_id is not None}
        accounts = {c.account_id for _, (c, _) in watched if c.account_id is not None}
        row = await self.db.fetchrow(_ENDED, list(sessions), list(tokens), list(accounts))
        ended_sessions, ended_tokens, ended_accounts = set(row["sessions"]), set(row["tokens"]), set(row["accounts"])
        ended = 0
        for key, (credential, on_end) in watched:
            if credential.account_id in ended_accounts:
                reason = "account_deleted"
            elif credential.token_id in ended_tokens:
                reason = "token_revoked"
            elif credential.session_id in ended_sessions:
                reason = "session_ended"
            else:
                continue
            if self._watched.pop(key, None) is not None:
                ended += 1
                metrics.authority_ended.labels(reason).inc()
                try:
                    on_end(reason)
                except Exception:
                    log.exception("ending a socket failed")
        return ended


REAUTH: web.AppKey[Reauthorizer] = web.AppKey("reauth", Reauthorizer)
