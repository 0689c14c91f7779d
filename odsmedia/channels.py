"""Every Redis pub/sub channel and the shape of what travels on it.

The bus (``bus.py``) moves bytes; this module names the channels and builds
their messages, so a channel is spelled in one place and a message shape
has one constructor.  Who publishes and who listens:

==========================  ======================================  =========================
channel                     published by                            applied by
==========================  ======================================  =========================
``room:{slug}:chat``        chat (``chat.hub``)                     chat hub of every node
``room:{slug}:control``     chat moderation, billing (kick)         the SFU node of the room;
                                                                    chat (billing's kicks)
``auth:sessions``           auth (``AuthService.forget``)           auth session cache
``billing:invalidate``      billing (``Entitlements.invalidate``)   billing entitlement cache
``relay:{node}``            relay hubs (``rooms.relay``): requests  the relay hub of that node
                            to that node, and replies to its own
``relay:{node}:{slug}``     the relay hub of the node serving the   relay rooms fed by it
                            room: publications new/ended/muted,
                            room ended
==========================  ======================================  =========================
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

SESSIONS = "auth:sessions"
# What a publication carries; moderation mutes one source of a person (never "all video").
SOURCES = ("camera", "microphone", "screen", "screen-audio")
BILLING_INVALIDATE = "billing:invalidate"


def chat_channel(slug: str) -> str:
    return f"room:{slug}:chat"


def control_channel(slug: str) -> str:
    """Moderation that touches media, for the node holding the room's SFU state."""
    return f"room:{slug}:control"


def relay_node_channel(node_id: str) -> str:
    """Pipe and watch requests addressed to one node, and the replies to requests it made."""
    return f"relay:{node_id}"


def relay_room_channel(node_id: str, slug: str) -> str:
    """What changes in ``slug`` as node ``node_id`` serves it, for the relays it feeds (docs/relays.md)."""
    return f"relay:{node_id}:{slug}"


class ControlMessage(TypedDict):
    """``{"action", "target", "by"}`` plus ``source`` (mute/unmute: which of the target's
    publications, camera/microphone/screen/screen-audio), ``reason`` (kick/ban) or
    ``role`` (role: a promotion or demotion the SFU applies to the target's participants)."""

    action: Literal["mute", "unmute", "kick", "ban", "role"]
    target: str
    by: str
    source: NotRequired[str]
    reason: NotRequired[str]
    detail: NotRequired[str]
    role: NotRequired[str]


def mute_message(target: str, source: str, *, by: str, mute: bool = True) -> ControlMessage:
    return {"action": "mute" if mute else "unmute", "target": target, "source": source, "by": by}


def kick_message(target: str, *, by: str, reason: str = "", ban: bool = False,
                 detail: str | None = None) -> ControlMessage:
    message: ControlMessage = {"action": "ban" if ban else "kick", "target": target, "by": by, "reason": reason}
    if detail is not None:
        message["detail"] = detail
    return message


def role_message(target: str, role: str, *, by: str) -> ControlMessage:
    return {"action": "role", "target": target, "role": role, "by": by}
