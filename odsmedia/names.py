"""The one rule for names people show to others, and the characters chat text refuses.

A display name (account names, a guest's chat name, a signaling participant's
name) is NFC-normalized, its whitespace runs collapse to one space, and it has
no control or format characters: in particular no bidirectional overrides or
isolates (U+202A-U+202E, U+2066-U+2069), which let a name render as someone
else's or reverse the text after it, and no zero-width characters (U+200B-U+200D,
U+2060, U+FEFF), which make two names look the same.  Chat text may hold
newlines and tabs but no other control characters and no bidirectional
overrides either.
"""

from __future__ import annotations

import unicodedata

BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff")
# Control, format (bidi, zero-width, soft hyphen...), surrogate, private-use, unassigned,
# line and paragraph separators.
_REFUSED_IN_NAMES = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))


class InvalidName(ValueError):
    """Why a name was refused (the message is for people)."""


def display_name(raw: object, *, max_length: int) -> str:
    """``raw`` as a display name under the rule above, or ``InvalidName``."""
    if not isinstance(raw, str):
        raise InvalidName("a name must be a string")
    text = unicodedata.normalize("NFC", raw)
    # Checked before whitespace collapses, so a newline or tab is refused, not turned into a space.
    if any(unicodedata.category(c) in _REFUSED_IN_NAMES for c in text):
        raise InvalidName("a name must not contain control, bidirectional or zero-width characters")
    name = " ".join(text.split())
    if not 1 <= len(name) <= max_length:
        raise InvalidName(f"a name must be 1-{max_length} characters")
    return name


def scrub(raw: str) -> str:
    """``raw`` with what the rule refuses removed (names derived from data, not typed)."""
    kept = "".join(c for c in unicodedata.normalize("NFC", raw)
                   if unicodedata.category(c) not in _REFUSED_IN_NAMES)
    return " ".join(kept.split())


def text_refusal(text: str) -> str | None:
    """Why chat text is refused (control characters, bidi overrides), or None."""
    for c in text:
        if c in BIDI_CONTROLS:
            return "text contains bidirectional override characters"
        if unicodedata.category(c) in ("Cc", "Cs") and c not in "\n\t":
            return "text contains control characters"
    return None
