"""Chat items (message, question, highlight), their validation and wire form.

An item's ``id`` is the room's sequence number when it was posted, so ids
increase per room.  Every later change to it (an upvote, answered, deleted)
takes a new number of the same sequence, its ``changed_seq``: the events a
client sees carry that number as ``seq`` and a reconnecting client resumes
after the last ``seq`` it saw.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .. import names

KINDS = ("message", "question", "highlight")


class ChatError(Exception):
    """A refused chat request: ``reason`` is the stable code clients branch on."""

    def __init__(self, reason: str, message: str = "", **extra: Any) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason.replace("_", " ")
        self.extra = extra

    def event(self, ref: Any = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "error", "error": self.reason, "message": self.message, **self.extra}
        if ref is not None:
            body["ref"] = ref
        return body


@dataclass(frozen=True, slots=True)
class ChatItem:
    room_id: int
    id: int
    changed_seq: int
    kind: str
    author: str
    author_name: str
    author_role: str
    text: str
    created_at: datetime
    episode_id: int | None
    offset: float | None
    votes: int
    answered: bool
    deleted: bool

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> "ChatItem":
        return cls(
            room_id=row["room_id"],
            id=row["id"],
            changed_seq=row["changed_seq"],
            kind=row["kind"],
            author=row["author"],
            author_name=row["author_name"],
            author_role=row["author_role"],
            text=row["body"],
            created_at=row["created_at"],
            episode_id=row["episode_id"],
            offset=row["episode_offset"],
            votes=row["votes"],
            answered=row["answered_at"] is not None,
            deleted=row["deleted_at"] is not None,
        )

    def wire(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "text": self.text,
            "author": self.author,
            "name": self.author_name,
            "role": self.author_role,
            "created_at": self.created_at.isoformat(),
            "offset": None if self.offset is None else round(self.offset, 3),
            "episode": self.episode_id,
        }
        if self.kind == "question":
            data["votes"] = self.votes
            data["answered"] = self.answered
        return data

    def event(self) -> dict[str, Any]:
        """The stream event for this item's latest change."""
        if self.deleted:
            return {"type": "deleted", "seq": self.changed_seq, "ids": [self.id]}
        return {"type": "item", "seq": self.changed_seq, "item": self.wire()}


def clean_text(raw: Any, *, max_length: int, allow_empty: bool = False) -> str:
    """The text of a post, or ChatError. Text stays text: nothing is escaped or
    stripped of markup here; pages render it with textContent."""
    if not isinstance(raw, str):
        raise ChatError("invalid_text", "text must be a string")
    text = unicodedata.normalize("NFC", raw).strip()
    # Control characters (other than newline and tab) and bidi overrides have no place in
    # chat: they spoof layout in pages, terminals and logs.
    refusal = names.text_refusal(text)
    if refusal is not None:
        raise ChatError("invalid_text", refusal)
    if not text and not allow_empty:
        raise ChatError("empty_text", "text is empty")
    if len(text) > max_length:
        raise ChatError("too_long", f"text is longer than {max_length} characters", max_length=max_length)
    return text
