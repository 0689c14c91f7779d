"""Plain-text mail templates under ``templates/``: first line ``Subject: ...``, then the body.

``string.Template`` ($name) keeps them free of code; values are plain text,
so nothing needs escaping.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from string import Template

from .message import Message

DIR = Path(__file__).parent / "templates"


@lru_cache(maxsize=None)
def _load(name: str) -> tuple[Template, Template]:
    raw = (DIR / f"{name}.txt").read_text()
    first, _, body = raw.partition("\n")
    if not first.startswith("Subject: "):
        raise ValueError(f"mail template {name} must start with a Subject: line")
    return Template(first[len("Subject: "):]), Template(body.lstrip("\n"))


def render(name: str, to: str, **values: object) -> Message:
    subject, body = _load(name)
    text = {k: str(v) for k, v in values.items()}
    return Message(to=to, subject=subject.substitute(text), text=body.substitute(text), tag=name)
