"""Episode administration: ``odsmedia episode ...``.

list ROOM       list a room's episodes (JSON lines, newest first)
delete ID       delete an episode: its rows, then its files
finalize        finalize the episodes this node left live (what start-up also does)
upload --all    move this node's local episodes (<data dir>/episodes) into the bucket
upload ID       the same for one episode

It uses the configured services like ``odsmedia`` does (ODS_CONFIG, DATABASE_URL,
ODS_DATA_DIR, ...), so it must run on the node that holds the episode files.
``upload`` needs ``storage.backend = s3``; it is idempotent (an episode whose
local directory is gone is done; a run cut short is simply run again).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from odsmedia import config as configmod
from odsmedia.cli import _with_pool
from odsmedia.errors import ApiError
from odsmedia.rooms import directory

from . import episodes, finalize
from .recorder import local_node_id, local_node_ids
from .storage import LocalStorage, Storage, StorageError, open_stores
from .upload import Uploader

UPLOAD_WINDOW = 60.0


def _storage(config: configmod.Config) -> Storage:
    return open_stores(config)[0]


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
        store = _storage(config)
        try:
            await remove(pool, store, episode)
        finally:
            await asyncio.to_thread(store.close)
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
    store, spool = open_stores(config)

    async def work(pool):
        uploader = Uploader(spool, store) if spool is not None else None
        try:
            # The single process's episodes and those of every worker of `serve --workers`.
            done = []
            for node in local_node_ids(config.data_dir) or [local_node_id(config.data_dir)]:
                done += await finalize.recover(pool, store, node, config["recording.segment_seconds"], uploader)
            return done
        finally:
            await asyncio.to_thread(store.close)

    for result in _with_pool(config, work):
        print(json.dumps({"id": result.episode_id, "status": result.status, "segments": result.segments}))
    return 0


async def upload_local(db, local: LocalStorage, uploader: Uploader, episode: episodes.Episode) -> dict:
    """One local episode into the store: init sections, then segments, each checked by
    size, then the local directory goes.  Nothing to do when the directory is gone."""
    key = episode.storage_key
    present = set(await asyncio.to_thread(local.list, key))
    if not present:
        return {"id": episode.id, "uploaded": 0, "state": "done"}
    rows = await episodes.segments(db, episode.id, rendition=None)     # every rendition's files
    names = sorted({r.init_name for r in rows if r.init_name}) + [r.name for r in rows]
    missing = [n for n in names if n not in present]
    if missing:
        raise RuntimeError(f"episode {episode.id}: {len(missing)} listed files are not on this node "
                           f"(first {missing[0]}); nothing deleted")
    uploaded = 0
    for name in names:
        size = await uploader.upload(f"{key}/{name}", give_up_after=UPLOAD_WINDOW)
        if await asyncio.to_thread(uploader.store.size, f"{key}/{name}") != size:
            raise RuntimeError(f"episode {episode.id}: {name} has another size in the store; nothing deleted")
        uploaded += 1
    # Only now is the store the one copy; the playlist file is not needed there (rows are).
    await asyncio.to_thread(local.delete_prefix, key)
    return {"id": episode.id, "uploaded": uploaded, "state": "uploaded"}


def cmd_upload(args: argparse.Namespace, config: configmod.Config) -> int:
    if config["storage.backend"] != "s3":
        print("odsmedia episode upload: set storage.backend = s3 (and the bucket) first", file=sys.stderr)
        return 2
    if not args.all and args.episode_id is None:
        print("odsmedia episode upload: give an episode id or --all", file=sys.stderr)
        return 2
    store, _ = open_stores(config)
    local = LocalStorage(config.data_dir / "episodes")
    uploader = Uploader(local, store)

    async def work(pool):
        results = []
        try:
            if args.all:
                keys = await asyncio.to_thread(local.prefixes)
                found = await pool.fetch("SELECT id FROM episodes WHERE storage_key = ANY($1::text[]) ORDER BY id",
                                         keys)
                targets = [await episodes.get(pool, r["id"]) for r in found]
            else:
                episode = await episodes.get(pool, args.episode_id)
                if episode is None:
                    return None
                targets = [episode]
            for episode in targets:
                if episode.status in ("live", "finalizing"):
                    results.append({"id": episode.id, "uploaded": 0, "state": "skipped_live"})
                    continue
                results.append(await upload_local(pool, local, uploader, episode))
        finally:
            await asyncio.to_thread(store.close)
        return results

    try:
        results = _with_pool(config, work)
    except (RuntimeError, StorageError) as exc:
        print(f"odsmedia episode upload: {exc}", file=sys.stderr)
        return 1
    if results is None:
        print(f"odsmedia episode upload: no episode {args.episode_id}", file=sys.stderr)
        return 1
    for result in results:
        print(json.dumps(result))
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
    p = actions.add_parser("upload", help="move local episodes into the bucket (storage.backend = s3)")
    p.add_argument("episode_id", type=int, nargs="?")
    p.add_argument("--all", action="store_true", help="every episode under <data dir>/episodes")
    p.set_defaults(func=cmd_upload)
