"""Where a participant of a room is served: here, here through a relay, or on another node.

Pure decisions over what the node registry says (``NodeLoad`` of each live
node, published by ``rooms.placement``), so they are tested without sockets.

- A publisher (role ``host``) goes to the room's origin, the node holding its
  claim; a room live nowhere is claimed here, unless this node is full and a
  live node is not.
- A viewer is served by the origin while the origin is not busy (fewer viewers
  in the room than ``rooms.relay_threshold``, CPU under
  ``rooms.relay_cpu_percent``). Past that, and when relays exist, it is served
  through a relay: here, when the origin is another node and this one is not
  full; else on the least-loaded live node that is neither full nor the origin.
  With no such node it stays with the origin. A zero threshold relays every
  viewer who reaches another node, but sends none away from the origin.
- Full means the node's process CPU passed ``rooms.full_cpu_percent``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Iterable


@dataclass(frozen=True)
class NodeLoad:
    """One live node as the registry shows it."""

    node_id: str
    url: str
    rooms: int = 0
    viewers: int = 0
    cpu: float = 0.0        # percent of one core, this process's own CPU time


@dataclass(frozen=True)
class Limits:
    relay_threshold: int        # viewers of one room on its origin from which new ones are relayed (0: always)
    relay_cpu_percent: float    # origin CPU past which new viewers are relayed
    full_cpu_percent: float     # CPU past which a node takes nothing new

    def full(self, node: NodeLoad) -> bool:
        return node.cpu >= self.full_cpu_percent

    def busy(self, origin: NodeLoad, room_viewers: int) -> bool:
        """Whether a viewer who reached another node is served there through a relay."""
        return room_viewers >= self.relay_threshold or origin.cpu >= self.relay_cpu_percent

    def crowded(self, origin: NodeLoad, room_viewers: int) -> bool:
        """Whether the origin sends a viewer who reached it to another node (a zero threshold
        relays whoever reaches another node; it does not push viewers off the origin)."""
        return ((self.relay_threshold > 0 and room_viewers >= self.relay_threshold)
                or origin.cpu >= self.relay_cpu_percent)


class Where(Enum):
    ORIGIN = "origin"       # serve here as the room's origin (claiming it when live nowhere)
    RELAY = "relay"         # serve here, fed from the origin (``Placed.node``) over a pipe
    REDIRECT = "redirect"   # room_on_other_node: go to ``Placed.node``


@dataclass(frozen=True)
class Placed:
    where: Where
    node: NodeLoad | None = None    # the node to go to (REDIRECT), or the origin to relay (RELAY)


HERE = Placed(Where.ORIGIN)


def least_loaded(nodes: Iterable[NodeLoad], limits: Limits, *, besides: Iterable[str] = ()) -> NodeLoad | None:
    """The live node with the least CPU (then viewers) that is not full, leaving out ``besides``."""
    skip = set(besides)
    candidates = [n for n in nodes if n.node_id not in skip and not limits.full(n)]
    return min(candidates, key=lambda n: (n.cpu, n.viewers, n.node_id), default=None)


def place(role: str, here: NodeLoad, origin: NodeLoad | None, room_viewers: int, nodes: Iterable[NodeLoad],
          limits: Limits, *, relays: bool) -> Placed:
    """Where a participant with ``role`` is served.

    ``origin``: the node holding the room's claim (None: live nowhere); ``room_viewers``: the
    origin's viewer count for the room; ``nodes``: every live node; ``relays``: whether this
    deployment can relay (a relay room can be built)."""
    nodes = list(nodes)
    if origin is None:
        if limits.full(here):
            other = least_loaded(nodes, limits, besides=(here.node_id,))
            if other is not None:
                return Placed(Where.REDIRECT, other)
        return HERE
    publishing = role == "host"
    if origin.node_id == here.node_id:
        if publishing or not relays or not limits.crowded(here, room_viewers):
            return HERE
        other = least_loaded(nodes, limits, besides=(here.node_id,))
        return Placed(Where.REDIRECT, other) if other is not None else HERE
    if publishing or not relays or not limits.busy(origin, room_viewers):
        return Placed(Where.REDIRECT, origin)
    if not limits.full(here):
        return Placed(Where.RELAY, origin)
    other = least_loaded(nodes, limits, besides=(here.node_id, origin.node_id))
    return Placed(Where.REDIRECT, other or origin)
