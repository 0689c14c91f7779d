"""The recorder feature object: an SFU observer that records each live room.

``Recorder`` observes the SFU: a room's first publication starts a
``RoomRecording`` (one Episode), every audio/video publication gets a
``TrackSink`` on its fan-out, and when the last one ends the episode is
finalized after ``recording.reconnect_grace`` seconds, so a host who drops
and comes back within the grace keeps recording into the same episode.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from odsmedia import node
from odsmedia.files import kept

from .recording import RoomRecording
from .storage import Storage
from .track import TrackSink
from .upload import Uploader

if TYPE_CHECKING:
    from odsmedia.rooms.publication import Publication
    from odsmedia.rooms.room import Room


NODE_FILE = "recorder-node"


def local_node_id(data_dir: Path) -> str:
    """A stable id for this node's episodes, kept in the data dir (survives restarts). Each worker
    of `serve --workers` is a node of its own: a restarted worker recovers its own episodes only,
    never the live ones of its siblings sharing the data dir."""
    name = NODE_FILE if node.worker_index is None else f"{NODE_FILE}-worker{node.worker_index}"
    return kept(data_dir / name, str.strip, lambda: uuid.uuid4().hex[:16])


def local_node_ids(data_dir: Path) -> list[str]:
    """Every recorder node id kept in the data dir: the single process's and each worker's."""
    return sorted({path.read_text().strip() for path in Path(data_dir).glob(NODE_FILE + "*")
                   if path.is_file() and not path.name.endswith(".tmp")})


class Recorder:
    """The feature object at ``app[RECORDER]``; an SFU observer."""

    def __init__(
        self,
        db: asyncpg.Pool,
        storage: Storage,
        *,
        node: str,
        segment_seconds: float = 4.0,
        part_seconds: float = 0.0,
        reconnect_grace: float = 10.0,
        enabled: bool = True,
        queue_size: int = 1024,
        audio_codec: str = "opus",
        spool: Storage | None = None,
        upload_retry_max: float = 5.0,
    ) -> None:
        self.db = db
        # Where episodes live (what replay reads); with a remote store the writer
        # writes to the local ``spool`` and each closed file is uploaded from there.
        self.storage = storage
        self.spool = spool if spool is not None else storage
        self.uploader = Uploader(self.spool, storage, max_delay=upload_retry_max) if spool is not None else None
        self.node = node
        self.segment_seconds = segment_seconds
        self.part_seconds = part_seconds
        self.reconnect_grace = reconnect_grace
        self.enabled = enabled
        self.queue_size = queue_size
        self.audio_codec = audio_codec
        self.recordings: dict[str, RoomRecording] = {}
        self._sinks: dict[int, tuple[Publication, TrackSink]] = {}
        self._ending: set[RoomRecording] = set()

    # --- SFU observer ---------------------------------------------------------------------------

    def on_publication_added(self, room: Room, publication: Publication) -> None:
        if not self.enabled or publication.kind not in ("audio", "video"):
            return
        recording = self.recording_for(room.record.id, room.slug, room.record.title)
        sink = recording.add_track(publication.kind, publication.request_keyframe, source=publication.source,
                                   publisher=publication.participant.id,
                                   sender_report=lambda: publication.sender_report)
        self._sinks[id(publication)] = (publication, sink)
        publication.add_sink(sink)

    def on_publication_removed(self, room: Room, publication: Publication) -> None:
        entry = self._sinks.pop(id(publication), None)
        if entry is None:
            return
        _, sink = entry
        publication.remove_sink(sink)
        sink.on_end()

    # --- recordings ------------------------------------------------------------------------------

    def recording_for(self, room_id: int, slug: str, room_title: str = "") -> RoomRecording:
        """The room's current recording, started if there is none."""
        recording = self.recordings.get(slug)
        if recording is None or recording.ending:
            started = dt.datetime.now(dt.timezone.utc)
            title = f"{room_title or slug} – {started:%Y-%m-%d %H:%M} UTC"
            recording = RoomRecording(self, room_id, slug, title)
            self.recordings[slug] = recording
        return recording

    def _recording_ended(self, recording: RoomRecording) -> None:
        if self.recordings.get(recording.room_slug) is recording:
            del self.recordings[recording.room_slug]
        self._ending.add(recording)
        recording.task.add_done_callback(lambda _t: self._ending.discard(recording))
        for key, (publication, sink) in list(self._sinks.items()):
            if sink.recording is recording:
                del self._sinks[key]
                publication.remove_sink(sink)

    async def close(self, timeout: float | None = None) -> None:
        """Shutdown: end every recording and wait until each episode is finalized.

        After ``timeout`` seconds (a bucket that does not take uploads) the rest is
        cancelled: those episodes stay live on this node with their files in the
        spool, and the next start's recovery uploads and finalizes them."""
        for recording in list(self.recordings.values()):
            recording.end()
        ending = list(self._ending)
        if not ending:
            return
        if timeout is not None:
            # The last segments reach the disk (spool) whatever the bucket does: the
            # writer threads need no store, only a moment.
            await asyncio.to_thread(_join_writers, [w for r in ending for w in r.writers], WRITER_CLOSE_TIMEOUT)
        done, late = await asyncio.wait([r.task for r in ending], timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)


WRITER_CLOSE_TIMEOUT = 30.0


def _join_writers(writers: list, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for writer in writers:
        writer.join(max(0.0, deadline - time.monotonic()))


RECORDER: web.AppKey[Recorder] = web.AppKey("recorder", Recorder)
