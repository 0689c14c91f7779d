"""One episode being recorded: one HLS writer thread per rendition, plus rows and playlists.

Every video source (screen, each camera) is its own *rendition*: its own
writer thread, fMP4 init sections, segments cut at its own keyframes, and
media playlist; the recorded audio track is muxed into every rendition, so
each plays on its own.  The first rendition (the first video published, or
the audio of an audio-only session) keeps the unprefixed file names,
``index.m3u8`` and the LL-HLS parts; the others prefix their files with
their name (``screen.00001-0.m4s``).

Hot path (``TrackSink.on_frame`` -> ``RoomRecording.on_frame``, on the event
loop): place the frame on the episode timeline and queue it for the writer
thread(s); nothing else.  Everything that touches Postgres or rewrites the
playlist runs in one task per recording, in the order the writer reported
it: segment file (written by the thread), then its row, then the playlist
that lists it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Callable

from odsmedia.media.frame import MediaFrame

from . import episodes, metrics
from .clock import SR_WAIT, SenderClock, SenderReport
from .episodes import Rendition, SegmentRow
from .hls import ClosedSegment, HlsWriter, PeriodFormat, Sample, WrittenPart
from .llhls import LivePlaylist, part_name
from .playlist import Playlist, PlaylistEntry
from .storage import StorageError
from .track import TrackSink

if TYPE_CHECKING:
    from .recorder import Recorder

log = logging.getLogger("odsmedia.recorder")

PLAYLIST = "index.m3u8"
# Ask for the keyframe that ends a segment this long before the segment is due.
KEYFRAME_LEAD = 0.3
_FINISHED = object()
PART_SEGMENTS_HELD = 5
# Frames one track may hold while waiting for its first sender report (SR_WAIT of 1080p60 video).
HELD_FRAMES_MAX = 256


class RenditionWriter:
    """One rendition of the episode: its writer thread, its playlist, the video track feeding it."""

    def __init__(self, recording: "RoomRecording", rendition: str, writer: HlsWriter) -> None:
        self.rendition = rendition
        self.writer = writer
        self.playlist = Playlist(recording.target)
        self.label = ""                  # screen, camera, camera-2: set by its first video track
        self.source = ""
        self.video: TrackSink | None = None
        self.started = False             # its video reached the writer: audio goes in from now on
        self.next_keyframe_request = recording.target - KEYFRAME_LEAD
        self.format: PeriodFormat | None = None
        self.first_start: float | None = None    # its first listed segment's start (timeline seconds)

    @property
    def playlist_name(self) -> str:
        return f"{self.rendition}.m3u8" if self.rendition else PLAYLIST


class RoomRecording:
    """One episode being recorded: a writer thread per rendition, the tracks feeding them, and
    the row keeping."""

    def __init__(self, recorder: "Recorder", room_id: int, room_slug: str, title: str) -> None:
        self.recorder = recorder
        self.room_id = room_id
        self.room_slug = room_slug
        self.title = title
        self.storage_key = f"{room_slug}-{uuid.uuid4().hex[:12]}"
        self.loop = asyncio.get_running_loop()
        self.target = recorder.segment_seconds
        self.renditions: list[RenditionWriter] = []
        self.start_wait = 1.0       # HlsWriter's: how long a period waits for audio at its first keyframe
        self.main = self._new_rendition("")
        self.writer = self.main.writer
        self.playlist = self.main.playlist
        # LL-HLS (recording.part_seconds > 0): the live playlist and the bytes of the
        # recent parts, served from memory by this node while the session is live.
        self.live: LivePlaylist | None = (
            LivePlaylist(target=self.target, part_target=recorder.part_seconds) if recorder.part_seconds else None)
        self.part_bytes: dict[str, bytes] = {}
        self.segment_parts: dict[str, list[str]] = {}     # segment name -> its parts' names, while held
        self.tracks: set[TrackSink] = set()
        self.audio: TrackSink | None = None         # the audio track being recorded (one)
        self.senders: dict[str, SenderClock] = {}   # publisher -> its NTP clock on the timeline
        self.epoch: float | None = None             # arrival (monotonic) of the first frame: time zero
        self.epoch_wall = 0.0                       # the same instant on the wall clock
        self.episode_id: int | None = None
        self.status = "starting"
        self.ending = False
        # (segment, time.monotonic() when the playlist listing it was written), for benchmarks.
        self.listed: deque[tuple[ClosedSegment, float]] = deque(maxlen=10_000)
        self.uploaded_inits: set[str] = set()
        self.created = asyncio.Event()
        self.done = asyncio.Event()
        self._events: asyncio.Queue = asyncio.Queue()
        self._grace: asyncio.TimerHandle | None = None
        self.task = self.loop.create_task(self._run(), name=f"recording:{room_slug}")

    # --- tracks (event loop) -------------------------------------------------------------------

    def _new_rendition(self, rendition: str) -> RenditionWriter:
        recorder = self.recorder
        first = not rendition
        holder: list[RenditionWriter] = []
        writer = HlsWriter(
            recorder.spool, self.storage_key,
            segment_seconds=self.target,
            on_segment=self._segment_closed_in_thread,
            # LL-HLS parts: the first rendition's (the live playlist is one media playlist).
            on_part=self._part_in_thread if recorder.part_seconds and first else None,
            part_seconds=recorder.part_seconds if first else 0.0,
            on_keyframe_wanted=lambda: self.loop.call_soon_threadsafe(self._request_keyframe, holder[0]),
            on_failed=lambda: self.loop.call_soon_threadsafe(self.end),
            on_format=lambda f: self.loop.call_soon_threadsafe(self._events.put_nowait, (holder[0], f)),
            queue_size=recorder.queue_size,
            audio_codec=recorder.audio_codec,
            rendition=rendition,
            audio_only_ok=first,
            start_wait=self.start_wait,
        )
        entry = RenditionWriter(self, rendition, writer)
        holder.append(entry)
        self.renditions.append(entry)
        writer.start()
        return entry

    @property
    def writers(self) -> list[HlsWriter]:
        return [r.writer for r in self.renditions]

    def add_track(self, kind: str, request_keyframe: Callable[[str], None] = lambda reason: None, *,
                  source: str = "", publisher: str = "",
                  sender_report: Callable[[], SenderReport | None] | None = None) -> TrackSink:
        if self.ending:
            raise RuntimeError("recording is ending")
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        source = source or ("camera" if kind == "video" else "microphone")
        sink = TrackSink(self, kind, request_keyframe, source=source, publisher=publisher,
                         sender_report=sender_report)
        self.tracks.add(sink)
        if sender_report is not None:
            # A track may be held up to SR_WAIT for its first sender report: a period waits
            # that long for the audio before it opens without it.
            for writer in self.writers:
                writer.start_wait = max(writer.start_wait, SR_WAIT + 0.5)
            self.start_wait = SR_WAIT + 0.5
        if kind == "video":
            self._attach(sink)
        elif self.audio is None:
            self.audio = sink
        return sink

    def _attach(self, sink: TrackSink) -> None:
        """A video track feeds its own rendition: the first rendition if no video has, a free
        rendition of its source (the same source published again), or a new one."""
        main = self.main
        if not main.source:
            chosen = main
        else:
            chosen = next((r for r in self.renditions if r.source == sink.source and r.video is None), None)
            if chosen is None:
                labels = {r.label for r in self.renditions}
                label = sink.source
                n = 2
                while label in labels:
                    label, n = f"{sink.source}-{n}", n + 1
                chosen = self._new_rendition(label)
        if not chosen.source:
            chosen.source = sink.source
            chosen.label = chosen.rendition or sink.source
        chosen.video = sink
        chosen.writer.video_expected = not chosen.started
        sink.rendition = chosen
        sink.waiting_keyframe = True
        sink.request_keyframe("recorder")

    def _sender(self, publisher: str) -> SenderClock:
        clock = self.senders.get(publisher)
        if clock is None:
            clock = self.senders[publisher] = SenderClock()
        return clock

    def on_frame(self, sink: TrackSink, frame: MediaFrame) -> None:
        if self.ending or sink.ended or (sink.kind == "audio" and self.audio is not sink):
            return
        if self.epoch is None:
            self.epoch = frame.arrival
            self.epoch_wall = time.time()
        if sink.clock.offset is None:
            # Placed once, by the publisher's sender report when one comes within SR_WAIT.
            report = sink.sender_report() if sink.sender_report is not None else None
            held = sink.held
            if report is None and sink.sender_report is not None and len(held) < HELD_FRAMES_MAX and (
                    not held or frame.arrival - held[0].arrival < SR_WAIT):
                held.append(frame)
                return
            held.append(frame)
            self._place(sink, report)
            return
        self._record(sink, frame)

    def _place(self, sink: TrackSink, report: SenderReport | None) -> None:
        """Fix the track on the timeline from its first held frame; record what it held."""
        held, sink.held = sink.held, []
        if not held:
            return
        assert self.epoch is not None
        sink.clock.place(held[0], self.epoch, report, self._sender(sink.publisher))
        for item in held:
            self._record(sink, item)

    def _record(self, sink: TrackSink, frame: MediaFrame) -> None:
        pts = sink.clock.pts(frame, self.epoch)
        if sink.kind == "audio":
            if pts < 0:
                return    # captured before the episode's time zero
            sample = Sample("audio", frame.codec, frame.data, pts, frame.clock_rate, True)
            for rendition in self.renditions:
                if rendition is self.main or rendition.started:
                    if not rendition.writer.put(sample):
                        metrics.dropped_frames.labels("audio").inc()
            return
        rendition = sink.rendition
        if rendition is None:
            return
        if sink.waiting_keyframe:
            if not frame.keyframe or pts < 0:
                # Ask again (the publication rate-limits it): the keyframe asked for at attach is
                # often captured just before the episode's time zero and dropped here, and a
                # publisher's next one may be many seconds away, long enough for the audio to
                # open the episode without picture.
                sink.request_keyframe("recorder")
                return
            sink.waiting_keyframe = False
        elif pts < 0:
            sink.waiting_keyframe = True
            sink.request_keyframe("recorder")
            return
        if pts >= rendition.next_keyframe_request * frame.clock_rate:
            # Every rendition asks on the same grid, so their segments end near the same times.
            sink.request_keyframe("recorder")
            seconds = pts / frame.clock_rate
            rendition.next_keyframe_request += self.target
            if rendition.next_keyframe_request < seconds:
                rendition.next_keyframe_request = (seconds // self.target + 1) * self.target - KEYFRAME_LEAD
        accepted = rendition.writer.put(Sample("video", frame.codec, frame.data, pts, frame.clock_rate,
                                               frame.keyframe))
        if accepted:
            if not rendition.started:
                rendition.started = True
                rendition.writer.video_expected = False
        else:
            metrics.dropped_frames.labels("video").inc()
            # A lost video frame breaks decoding until the next keyframe.
            sink.waiting_keyframe = True
            sink.request_keyframe("recorder")

    def track_ended(self, sink: TrackSink) -> None:
        if sink.held and not self.ending:
            self._place(sink, None)    # ended before any sender report: by arrival
        self.tracks.discard(sink)
        if sink.rendition is not None and sink.rendition.video is sink:
            # The rendition waits for its source to come back (its last frame is held meanwhile).
            sink.rendition.video = None
            sink.rendition.writer.video_expected = False
        if self.audio is sink:
            # Another audio track (a co-host's microphone, screen audio) takes over.
            self.audio = next((t for t in self.tracks if t.kind == "audio"), None)
        if not self.tracks and not self.ending:
            grace = self.recorder.reconnect_grace
            if grace <= 0:
                self.end()
            elif self._grace is None:
                self._grace = self.loop.call_later(grace, self.end)

    def end(self) -> None:
        """Stop recording: the writer closes the last segment, then the episode is finalized."""
        if self.ending:
            return
        self.ending = True
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        for sink in list(self.tracks):
            if sink.held:
                self._place(sink, None)
        for sink in list(self.tracks):
            sink.ended = True
        self.tracks.clear()
        self.audio = None
        self.recorder._recording_ended(self)
        self.loop.run_in_executor(None, self._finish_writer)

    def _finish_writer(self) -> None:
        for writer in self.writers:
            writer.finish()
        for writer in self.writers:
            writer.join()
        # After every segment callback the thread queued (call_soon_threadsafe is FIFO).
        self.loop.call_soon_threadsafe(self._events.put_nowait, _FINISHED)

    # --- writer thread -> loop -----------------------------------------------------------------

    def _segment_closed_in_thread(self, segment: ClosedSegment) -> None:
        if self.recorder.uploader is not None:
            metrics.upload_backlog.inc()   # thread-safe; taken off when listed (or dropped)
        if self.live is not None and not segment.rendition:
            # After its parts (call_soon_threadsafe is FIFO); served from memory until listed.
            self.loop.call_soon_threadsafe(self.live.close_segment, segment.seq, segment.duration)
        self.loop.call_soon_threadsafe(self._events.put_nowait, segment)

    def _part_in_thread(self, part: WrittenPart) -> None:
        self.loop.call_soon_threadsafe(self._part_written, part)

    def _part_written(self, part: WrittenPart) -> None:
        """A part on the live playlist at once (blocking reloads waiting for it answer now)."""
        assert self.live is not None
        name = part_name(part.seq, part.period, part.index)
        self.part_bytes[name] = part.data
        self.segment_parts.setdefault(part.segment, []).append(name)
        self.live.add_part(
            msn=part.seq, segment_uri=part.segment, part_uri=name, duration=part.duration,
            independent=part.independent, init=part.init, discontinuity=part.discontinuity,
            program_date_time=dt.datetime.fromtimestamp(self.epoch_wall + part.start, dt.timezone.utc),
        )
        metrics.part_delay.observe(time.monotonic() - part.written_at)
        self._forget_old_parts()

    def _forget_old_parts(self) -> None:
        # Keep the parts of the segments a live playlist can still list (about the last
        # three target durations, the open segment, and one of slack for slow readers).
        while len(self.segment_parts) > PART_SEGMENTS_HELD:
            oldest = next(iter(self.segment_parts))
            for name in self.segment_parts.pop(oldest):
                self.part_bytes.pop(name, None)

    def live_segment_bytes(self, name: str) -> bytes | None:
        """A segment still held as parts (closed, maybe not yet listed in Postgres)."""
        names = self.segment_parts.get(name)
        if names is None or self.live is None:
            return None
        segment = next((s for s in reversed(self.live.segments) if s.uri == name), None)
        if segment is None or not segment.closed:
            return None
        return b"".join(self.part_bytes[n] for n in names)

    def _request_keyframe(self, rendition: RenditionWriter) -> None:
        if rendition.video is not None:
            rendition.video.request_keyframe("recorder")

    # --- rows and playlist (one task, in order) ------------------------------------------------

    async def _run(self) -> None:
        db = self.recorder.db
        try:
            episode = await episodes.create(
                db, self.room_id, title=self.title, storage_key=self.storage_key, node=self.recorder.node,
            )
        except Exception:
            log.exception("cannot create episode; not recording", extra={"room": self.room_slug})
            self.status = "failed"
            self.created.set()
            self.end()
            await self._drain_until_finished()
            await self._delete_files()
            self.done.set()
            return
        self.episode_id = episode.id
        self.status = "live"
        self.created.set()
        failed = False
        metrics.recordings_live.inc()
        try:
            while True:
                event = await self._events.get()
                if event is _FINISHED:
                    break
                if isinstance(event, tuple):
                    if not failed:
                        await self._describe(*event)
                    continue
                try:
                    if not failed:
                        await self._list(event)
                except Exception:
                    log.exception("cannot list segment; episode failed", extra={"episode": self.episode_id})
                    failed = True
                    self.end()
                finally:
                    self._taken(event)
            await self._finalize(failed)
        finally:
            metrics.recordings_live.dec()
            metrics.episodes_finished.labels(self.status).inc()
            self.done.set()

    async def _drain_until_finished(self) -> None:
        while (event := await self._events.get()) is not _FINISHED:
            self._taken(event)

    async def _describe(self, rendition: RenditionWriter, fmt: PeriodFormat) -> None:
        """A period opened: the rendition's row says what it carries (the largest picture)."""
        assert self.episode_id is not None
        known = rendition.format
        if known is not None and known.width * known.height > fmt.width * fmt.height:
            fmt = PeriodFormat(fmt.video_codec or known.video_codec, fmt.audio_codec or known.audio_codec,
                               known.width, known.height)
        rendition.format = fmt
        try:
            await episodes.set_rendition(self.recorder.db, self.episode_id, Rendition(
                rendition=rendition.rendition, label=rendition.label or "audio",
                source=rendition.source or (self.audio.source if self.audio else "microphone"),
                video_codec=fmt.video_codec, audio_codec=fmt.audio_codec, width=fmt.width, height=fmt.height,
            ))
        except Exception:
            log.exception("cannot describe rendition", extra={"episode": self.episode_id})

    def _rendition(self, name: str) -> RenditionWriter:
        return next(r for r in self.renditions if r.rendition == name)

    def _taken(self, segment) -> None:
        if isinstance(segment, tuple):
            return
        if self.recorder.uploader is not None:
            metrics.upload_backlog.dec()

    async def _delete_files(self) -> None:
        if self.recorder.spool is not self.recorder.storage:
            await asyncio.to_thread(self.recorder.spool.delete_prefix, self.storage_key)
        try:
            await asyncio.to_thread(self.recorder.storage.delete_prefix, self.storage_key)
        except StorageError:
            # The row's deletion queued a purge (recorder/purge.py): the objects go when the store is back.
            log.warning("cannot delete episode files now; left to the purge queue", extra={"key": self.storage_key})

    async def _upload(self, segment: ClosedSegment) -> None:
        """Init section (first use) and segment into the store, before the row lists them."""
        uploader = self.recorder.uploader
        assert uploader is not None
        if segment.init is not None and segment.init not in self.uploaded_inits:
            await uploader.upload(f"{self.storage_key}/{segment.init}")
            self.uploaded_inits.add(segment.init)
        await uploader.upload(f"{self.storage_key}/{segment.name}")

    async def _list(self, segment: ClosedSegment) -> None:
        assert self.episode_id is not None
        uploader = self.recorder.uploader
        if uploader is not None:
            await self._upload(segment)
        await episodes.add_segment(self.recorder.db, self.episode_id, SegmentRow(
            seq=segment.seq, name=segment.name, init_name=segment.init,
            discontinuity=segment.discontinuity, duration=segment.duration,
            start_offset=segment.start, size_bytes=segment.size, rendition=segment.rendition,
        ))
        rendition = self._rendition(segment.rendition)
        if rendition.first_start is None:
            rendition.first_start = segment.start
        if rendition is self.main and not self.playlist.entries:
            # Replay time zero is the first rendition's first segment start: anchor started_at
            # there, so wall-clock offsets (chat items, highlights) line up with the video.
            started = dt.datetime.fromtimestamp(self.epoch_wall + segment.start, dt.timezone.utc)
            await episodes.set_started(self.recorder.db, self.episode_id, started)
        rendition.playlist.add(PlaylistEntry(segment.name, segment.duration, segment.init, segment.discontinuity))
        if uploader is None:
            await asyncio.to_thread(self.recorder.storage.put, f"{self.storage_key}/{rendition.playlist_name}",
                                    rendition.playlist.render().encode())
        # With a store, replay builds the playlist from the rows: the row is the listing.
        listed = time.monotonic()
        self.listed.append((segment, listed))
        metrics.segments.inc()
        metrics.segment_bytes.inc(segment.size)
        metrics.listing_delay.observe(listed - segment.closed_at)
        if uploader is not None:
            # Listed, so in the store for good: the spool copy is no longer needed.
            await asyncio.to_thread(self.recorder.spool.delete, f"{self.storage_key}/{segment.name}")

    async def _finalize(self, failed: bool) -> None:
        assert self.episode_id is not None
        db = self.recorder.db
        storage = self.recorder.storage
        if await episodes.get(db, self.episode_id) is None:
            # The row went while recording (the room was deleted): so do the files.
            await self._delete_files()
            self.status = "deleted"
            return
        writer_error = any(w.error is not None for w in self.writers)
        if not self.playlist.entries:
            if failed or writer_error:
                self.status = "failed"
                await episodes.set_status(db, self.episode_id, "failed", ended=True)
                return
            # Nothing was captured (no keyframe ever came): not an episode anyone can watch.
            await episodes.discard(db, self.episode_id)
            await self._delete_files()
            self.status = "deleted"
            return
        await episodes.set_status(db, self.episode_id, "finalizing")
        if self.live is not None:
            self.live.end()
        for rendition in self.renditions:
            rendition.playlist.ended = True
            if self.recorder.uploader is None and rendition.playlist.entries:
                await asyncio.to_thread(storage.put, f"{self.storage_key}/{rendition.playlist_name}",
                                        rendition.playlist.render().encode())
        # What was captured stays playable; the status says whether it is complete.
        self.status = "interrupted" if failed or writer_error else "ready"
        await episodes.set_status(db, self.episode_id, self.status, ended=True)
        if self.recorder.uploader is not None:
            # Every listed file is in the store; what is left in the spool (init sections,
            # a segment whose listing failed) goes.
            await asyncio.to_thread(self.recorder.spool.delete_prefix, self.storage_key)
        log.info("episode %s", self.status, extra={"episode": self.episode_id, "room": self.room_slug,
                                                   "watch": f"/episodes/{self.episode_id}/watch"})
