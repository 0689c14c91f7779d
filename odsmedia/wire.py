"""What clients send on a socket, checked the same way by chat and signaling.

Each protocol reports a failed check with its own error shape (chat
``invalid_ref``, signaling ``invalid_message``); the rules are these.
"""

from __future__ import annotations

from typing import Any

from . import names

NAME_MAX = 40
REF_MAX = 64


def clean_name(raw: Any) -> str | None:
    """A display name a visitor supplied, under the one name rule (``odsmedia.names``:
    NFC, whitespace collapsed, 1-40 characters, no control, bidirectional or
    zero-width characters), or None when unusable."""
    try:
        return names.display_name(raw, max_length=NAME_MAX)
    except names.InvalidName:
        return None


def valid_ref(ref: Any) -> bool:
    """A request's ``ref`` (echoed on its reply): absent, or a string or integer of at most 64 characters."""
    return ref is None or (isinstance(ref, (str, int)) and not isinstance(ref, bool) and len(str(ref)) <= REF_MAX)
