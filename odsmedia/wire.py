"""What clients send on a socket, checked the same way by chat and signaling.

Each protocol reports a failed check with its own error shape (chat
``invalid_ref``, signaling ``invalid_message``); the rules are these.
"""

from __future__ import annotations

import unicodedata
from typing import Any

NAME_MAX = 40
REF_MAX = 64


def clean_name(raw: Any) -> str | None:
    """A display name a visitor supplied (NFC, whitespace collapsed, 1-40 characters, no
    control or format characters), or None when unusable."""
    if not isinstance(raw, str):
        return None
    name = " ".join(unicodedata.normalize("NFC", raw).split())
    if not name or len(name) > NAME_MAX:
        return None
    if any(unicodedata.category(c).startswith("C") for c in name):
        return None
    return name


def valid_ref(ref: Any) -> bool:
    """A request's ``ref`` (echoed on its reply): absent, or a string or integer of at most 64 characters."""
    return ref is None or (isinstance(ref, (str, int)) and not isinstance(ref, bool) and len(str(ref)) <= REF_MAX)
