"""Crash recovery: finish the episodes this node left live.

A killed process leaves, per episode: segment files (each written
atomically, so every one present is whole), perhaps a few ``.partial``
leftovers, an EVENT playlist without ENDLIST, and segment rows that may lag
the files by the last segment.  On start-up, before recording anything, the
recorder rebuilds each such episode from what is on disk: partial files are
removed, every segment file is listed (rows added for files the crash kept
out of the table, durations read back with PyAV), a VOD playlist with
EXT-X-ENDLIST replaces the EVENT one, and the episode is marked
``interrupted``.  Only this node's episodes are touched: another node's
files are on another node's disk.

With a remote store (``storage.backend = s3``) the files on disk are the
node's spool: what the crash left there is uploaded first (init sections
and segments the rows do not list yet), rows are added for it, the spool
copy is deleted, and the playlist needs no file (replay builds it from the
rows).  If the store cannot be reached for ``RECOVERY_UPLOAD_WINDOW``
seconds, the episode is left as it is, its spool intact, for the next
start (or ``odsmedia episode finalize``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from dataclasses import dataclass

import av

from . import episodes
from .episodes import Episode, SegmentRow
from .hls import init_name
from .playlist import Playlist, PlaylistEntry
from .storage import Storage
from .upload import UploadFailed, Uploader

log = logging.getLogger("odsmedia.recorder")

SEGMENT_FILE = re.compile(r"^(\d{5,9})-(\d+)\.m4s$")
RECOVERY_UPLOAD_WINDOW = 60.0


@dataclass(frozen=True, slots=True)
class Recovered:
    episode_id: int
    segments: int
    added: int
    duration: float
    status: str


def probe_span(init: bytes, data: bytes) -> tuple[float, float]:
    """(start, duration) in seconds of a segment's first stream, read back with PyAV."""
    first = last = None
    with av.open(io.BytesIO(init + data), format="mp4") as container:
        stream = container.streams[0]
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            start = float(packet.pts * stream.time_base)
            end = start + float((packet.duration or 0) * stream.time_base)
            first = start if first is None else min(first, start)
            last = end if last is None else max(last, end)
    if first is None or last is None:
        raise ValueError("segment holds no packets")
    return first, max(0.001, last - first)


def scan(storage: Storage, key: str, rows: list[SegmentRow], *, with_rows: bool = False) -> list[SegmentRow]:
    """Every whole segment on disk, in order, as rows (known rows kept as they are).

    ``with_rows``: the rows' own segments count even without a file (a spool
    whose listed segments were uploaded and deleted)."""
    storage.discard_partials(key)
    known = {row.name: row for row in rows}
    on_disk = {n for n in storage.list(key) if SEGMENT_FILE.match(n)}
    if with_rows:
        on_disk |= set(known)
    names = sorted(on_disk, key=lambda n: int(n.split("-")[0]))
    inits: dict[int, bytes | None] = {}
    result: list[SegmentRow] = []
    previous_period = None
    for name in names:
        seq, period = (int(p) for p in SEGMENT_FILE.match(name).groups())
        discontinuity = previous_period is not None and period != previous_period
        if name in known:
            result.append(known[name])
            previous_period = period
            continue
        if period not in inits:
            size = storage.size(f"{key}/{init_name(period)}")
            inits[period] = storage.read(f"{key}/{init_name(period)}") if size else None
        init = inits[period]
        if init is None:
            continue
        data = storage.read(f"{key}/{name}")
        try:
            start, duration = probe_span(init, data)
        except Exception:
            log.warning("unreadable segment left out", extra={"key": key, "segment": name})
            continue
        if result:
            # Decode times restart with each period; the timeline continues from the last segment.
            start = result[-1].start_offset + result[-1].duration
        result.append(SegmentRow(seq=seq, name=name, init_name=init_name(period), discontinuity=discontinuity,
                                 duration=duration, start_offset=start, size_bytes=len(data)))
        previous_period = period
    return result


async def finalize_episode(db, storage: Storage, episode: Episode, target: float,
                           uploader: Uploader | None = None) -> Recovered:
    rows = await episodes.segments(db, episode.id)
    disk = storage if uploader is None else uploader.spool
    key = episode.storage_key
    found = await asyncio.to_thread(scan, disk, key, rows, with_rows=uploader is not None)
    known = {row.name for row in rows}
    added = [row for row in found if row.name not in known]
    if uploader is not None:
        await _upload_found(uploader, key, added)
    for row in added:
        await episodes.add_segment(db, episode.id, row)
    if uploader is not None:
        status = "interrupted" if found else "failed"
        duration = max((row.start_offset + row.duration for row in found), default=0.0)
        await episodes.recovered(db, episode.id, status, duration=duration, segment_count=len(found))
        await asyncio.to_thread(disk.delete_prefix, key)
        return Recovered(episode.id, len(found), len(added), duration, status)
    playlist = Playlist(target, ended=True)
    for row in found:
        playlist.add(PlaylistEntry(row.name, row.duration, row.init_name, row.discontinuity))
    status = "interrupted" if found else "failed"
    if found:
        await asyncio.to_thread(storage.put, f"{episode.storage_key}/index.m3u8", playlist.render().encode())
    duration = max((row.start_offset + row.duration for row in found), default=0.0)
    await episodes.recovered(db, episode.id, status, duration=duration, segment_count=len(found))
    return Recovered(episode.id, len(found), len(added), duration, status)


async def _upload_found(uploader: Uploader, key: str, rows: list[SegmentRow]) -> None:
    """The crash's leftovers into the store: each init section once, then the segments."""
    inits = {row.init_name for row in rows if row.init_name}
    for name in sorted(inits) + [row.name for row in rows]:
        await uploader.upload(f"{key}/{name}", give_up_after=RECOVERY_UPLOAD_WINDOW)


async def sweep_spool(db, spool: Storage, node: str) -> list[str]:
    """Spool directories of no unfinished episode of this node go (start-up, after recovery).

    What recovery could not upload stays, under its unfinished episode; anything
    else in the spool is either listed in the store already (a crash after the
    episode was finalized) or belongs to no row."""
    on_disk = await asyncio.to_thread(spool.prefixes)
    if not on_disk:
        return []
    keep = {e.storage_key for e in await episodes.unfinished_on_node(db, node)}
    stale = [key for key in on_disk if key not in keep]
    for key in stale:
        await asyncio.to_thread(spool.delete_prefix, key)
    return stale


async def sweep_orphans(db, storage: Storage) -> list[str]:
    """Remove episode directories no row points to (the room or the episode row was
    deleted by cascade, or a crash came between creating files and the row).

    Runs at start-up, before this node records anything: every directory of a
    node-local store belongs to this node, and none is being created."""
    on_disk = await asyncio.to_thread(storage.prefixes)
    if not on_disk:
        return []
    known = await episodes.known_storage_keys(db, on_disk)
    orphans = [key for key in on_disk if key not in known]
    for key in orphans:
        await asyncio.to_thread(storage.delete_prefix, key)
    if orphans:
        log.info("removed episode files without rows", extra={"count": len(orphans)})
    return orphans


async def recover(db, storage: Storage, node: str, target: float,
                  uploader: Uploader | None = None) -> list[Recovered]:
    """Finalize every episode this node left live or finalizing; returns what was done."""
    done = []
    for episode in await episodes.unfinished_on_node(db, node):
        try:
            result = await finalize_episode(db, storage, episode, target, uploader)
        except UploadFailed:
            # The spool keeps every byte; the next start tries again.
            log.warning("store unreachable; interrupted episode left for the next start",
                        extra={"episode": episode.id})
            continue
        except Exception:
            log.exception("cannot finalize interrupted episode", extra={"episode": episode.id})
            await episodes.set_status(db, episode.id, "failed", ended=True)
            continue
        log.info("finalized interrupted episode", extra={"episode": episode.id, "segments": result.segments})
        done.append(result)
    return done
