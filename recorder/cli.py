"""Episode administration: ``odsmedia episode ...``.

list ROOM       list a room's episodes (JSON lines, newest first)
delete ID       delete an episode: its rows, then its files
finalize        finalize the episodes this node left live (what start-up also does)

It uses the configured services like ``odsmedia`` does (ODS_CONFIG, DATABASE_URL,
ODS_DATA_DIR, ...), so it must run on the node that holds the episode files.
"""

from __future__ import annotations

import argparse
import json
import sys

from odsmedia import config as configmod
from odsmedia.cli import _with_pool
from odsmedia.errors import ApiError
from odsmedia.rooms import directory

from . import episodes, finalize
from .recorder import local_node_id
from .storage import LocalStorage


def _storage(config: configmod.Config) -> LocalStorage:
    return LocalStorage(config.data_dir / "episodes")


def cmd_episodes(args: argparse.Namespace, config: configmod.Config) -> int:
    async def work(pool):
        room = await directory.get(pool, args.room)
        if room is None:
            return None
        return await episodes.for_room(pool, room.id)

    found = _with_pool(config, work)
    if found is None:
        print(f"odsmedia episode list: no room {args.room!r}", file=sys.stderr)
        return 1
    for episode in found:
        print(json.dumps(episode.summary()))
    return 0


def cmd_delete(args: argparse.Namespace, config: configmod.Config) -> int:
    from .routes import remove

    async def work(pool):
        episode = await episodes.get(pool, args.episode_id)
        if episode is None:
            return "missing"
        await remove(pool, _storage(config), episode)
        return "deleted"

    try:
        outcome = _with_pool(config, work)
    except ApiError as exc:
        print(f"odsmedia episode delete: {exc.reason}: {exc.message}", file=sys.stderr)
        return 1
    if outcome == "missing":
        print(f"odsmedia episode delete: no episode {args.episode_id}", file=sys.stderr)
        return 1
    print(f"deleted episode {args.episode_id}")
    return 0


def cmd_finalize(args: argparse.Namespace, config: configmod.Config) -> int:
    async def work(pool):
        return await finalize.recover(pool, _storage(config), local_node_id(config.data_dir),
                                      config["recording.segment_seconds"])

    for result in _with_pool(config, work):
        print(json.dumps({"id": result.episode_id, "status": result.status, "segments": result.segments}))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Registers ``odsmedia episode list|delete|finalize``."""
    episode = sub.add_parser("episode", help="manage recorded episodes")
    actions = episode.add_subparsers(dest="episode_command", required=True, metavar="ACTION")
    p = actions.add_parser("list", help="list a room's episodes (JSON lines, newest first)")
    p.add_argument("room")
    p.set_defaults(func=cmd_episodes)
    p = actions.add_parser("delete", help="delete an episode and its files")
    p.add_argument("episode_id", type=int)
    p.set_defaults(func=cmd_delete)
    p = actions.add_parser("finalize", help="finalize episodes this node left live")
    p.set_defaults(func=cmd_finalize)
