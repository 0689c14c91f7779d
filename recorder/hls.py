"""The HLS writer: encoded samples in, fMP4 segments cut at keyframes out.

One ``HlsWriter`` per rendition of an episode (each recorded video source,
with the episode's audio) runs PyAV's mp4 muxer in its own thread, fed
by a bounded queue, so muxing never runs on the event loop.  Video is
remuxed as received (H.264 Annex B; the muxer rewrites it to length-prefixed
NAL units), never decoded; VP8 video is the one exception and goes through
``transcode.Vp8ToH264`` in this same thread.  Opus audio is muxed as
received, or re-encoded to AAC here when ``audio_codec="aac"``.

The muxer fragments at every video keyframe (``frag_keyframe``).  Each
fragment's decode-time span is read back from its ``moof``, and fragments
are grouped into segments of about ``segment_seconds``: a segment closes at
the first fragment boundary at or past the target, a little short of it
when the next fragment would overshoot, or before a fragment that would
push it well past the target.  A closed segment is written atomically
through ``Storage`` and reported with ``on_segment``; the event loop then
records it and rewrites the playlist.

A *period* is one muxer instance with one initialization section.  A new
period (EXT-X-DISCONTINUITY) starts when the video's parameter sets change
(new resolution, the host reconnected with another encoder), or when a kind
of track appears that the current period lacks.  Timestamps stay on the
episode timeline in the writer's bookkeeping (the mp4 muxer starts each
period's decode times at zero, which EXT-X-DISCONTINUITY tells players to
expect) and strictly increase within each stream; gaps in audio (mute,
packet loss, a reconnect) are filled with Opus silence so the audio track
stays continuous and in step with the video.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import av

from .codecs import OPUS_SILENCE, OPUS_SILENCE_SAMPLES, h264_codec_string, h264_parameter_sets, opus_samples
from .fmp4 import BoxSplitter, Fragment, TrackSpan
from .storage import Storage

log = logging.getLogger("odsmedia.recorder")

VIDEO_CLOCK = 90000
AUDIO_CLOCK = 48000
# Longest audio gap filled with silence (a longer one is left as a gap).
MAX_SILENCE_FILL = 3600 * AUDIO_CLOCK
# Audio this far behind the video at a keyframe has stalled (no jitter buffer holds
# it that long): the gap is filled with silence before the segment can close.
AUDIO_STALL = AUDIO_CLOCK * 3 // 10
_END = object()
_SYNC = TrackSpan(0, 0, 0, True)


@dataclass(slots=True)
class Sample:
    """One encoded frame placed on the episode timeline (``pts`` in its clock)."""

    kind: str          # "audio" | "video"
    codec: str         # "H264" | "VP8" | "opus"
    data: bytes
    pts: int
    clock_rate: int
    keyframe: bool

    @property
    def seconds(self) -> float:
        return self.pts / self.clock_rate


@dataclass(frozen=True, slots=True)
class ClosedSegment:
    seq: int
    name: str
    init: str | None
    discontinuity: bool
    start: float        # seconds on the episode timeline
    duration: float
    size: int
    closed_at: float    # time.monotonic() when its last byte was muxed
    rendition: str = ""


@dataclass(frozen=True, slots=True)
class PeriodFormat:
    """What a period carries, reported when it opens (the rendition's listing)."""

    video_codec: str    # RFC 6381, '' for an audio-only period
    audio_codec: str    # opus | mp4a.40.2 | ''
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class WrittenPart:
    """A part of the open segment (LL-HLS): whole fMP4 fragments, kept by the caller
    in memory while live; the segment written to storage is the concatenation of its parts."""

    seq: int            # the segment's media sequence number
    period: int
    index: int          # the part's index in its segment
    segment: str        # the segment's name
    init: str | None
    discontinuity: bool
    independent: bool   # begins with a video keyframe (or is audio only)
    data: bytes
    start: float        # seconds on the episode timeline
    duration: float
    written_at: float   # time.monotonic() when it was muxed


def _startable(sample: Sample) -> bool:
    """A period can begin only at an H.264 keyframe that carries its SPS and PPS."""
    return sample.kind == "video" and sample.keyframe and sample.codec == "H264" and bool(
        h264_parameter_sets(sample.data))


def segment_name(seq: int, period: int, rendition: str = "") -> str:
    # The period is in the name so recovery can pair a segment with its init section;
    # a rendition other than the first prefixes its files ("screen.00001-0.m4s").
    return f"{rendition}.{seq:05d}-{period}.m4s" if rendition else f"{seq:05d}-{period}.m4s"


def init_name(period: int, rendition: str = "") -> str:
    return f"{rendition}.init-{period}.mp4" if rendition else f"init-{period}.mp4"


@dataclass
class _Period:
    index: int
    container: av.container.OutputContainer
    splitter: BoxSplitter
    video: av.stream.Stream | None
    audio: av.stream.Stream | None
    start: float                 # seconds: the timeline position of the first sample
    params: bytes = b""          # H.264 SPS+PPS of this period
    init: str | None = None
    first_tfdt: int | None = None
    last_video_pts: int = -1
    video_step: int = 3000
    audio_end: int | None = None  # pts just after the last audio sample
    aac: "_AacEncoder | None" = None
    want_restart: bool = False
    fragments: list[Fragment] = field(default_factory=list)
    segment_start: float | None = None
    segment_end: float = 0.0
    gop_start: float = 0.0
    keyframes: list[float] = field(default_factory=list)   # parts mode: keyframe times not yet cut at
    first_video_pts: int | None = None
    discontinuity: bool = False


class HlsWriter:
    def __init__(
        self,
        storage: Storage,
        prefix: str,
        *,
        segment_seconds: float = 4.0,
        on_segment: Callable[[ClosedSegment], None] = lambda s: None,
        on_part: Callable[[WrittenPart], None] | None = None,
        part_seconds: float = 0.0,
        on_keyframe_wanted: Callable[[], None] = lambda: None,
        on_failed: Callable[[], None] = lambda: None,
        on_format: Callable[[PeriodFormat], None] = lambda f: None,
        queue_size: int = 1024,
        audio_codec: str = "opus",
        start_wait: float = 1.0,
        rendition: str = "",
        audio_only_ok: bool = True,
    ) -> None:
        self.storage = storage
        self.prefix = prefix
        self.rendition = rendition
        # A video source's own rendition never opens an audio-only period: it waits for its video.
        self.audio_only_ok = audio_only_ok
        self.video_expected = False      # set by the recording while its video track is not in yet
        self.on_format = on_format
        self.target = segment_seconds
        # A segment may close this much short of the target at a keyframe.
        self.tolerance = min(0.5, segment_seconds * 0.25)
        self.on_segment = on_segment
        # Parts (LL-HLS): the muxer also fragments every part_seconds, so a fragment
        # may begin without a keyframe; segments still begin only at keyframes.
        self.on_part = on_part
        self.part_seconds = part_seconds if on_part is not None else 0.0
        self.on_keyframe_wanted = on_keyframe_wanted
        self.on_failed = on_failed
        self.start_wait = start_wait
        if audio_codec not in ("opus", "aac"):
            raise ValueError(f"audio_codec must be opus or aac, not {audio_codec!r}")
        self.audio_codec = audio_codec
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.thread = threading.Thread(target=self._run, name=f"hls-writer:{prefix}", daemon=True)
        self.error: BaseException | None = None
        self.dropped = 0
        self._seq = 1
        self._next_period = 0
        self._period: _Period | None = None
        self._pending: list[Sample] = []
        self._audio_seen = False
        self._transcoder = None

    # --- called from the event loop ----------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def put(self, sample: Sample) -> bool:
        """Queue a sample; False when the writer is behind (the caller drops it)."""
        try:
            self.queue.put_nowait(sample)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def finish(self) -> None:
        """No more samples: close the last segment and stop the thread (blocks; call off the loop)."""
        # The end marker must not be lost to a full queue, nor wait on a thread that died.
        while self.thread.is_alive():
            try:
                self.queue.put(_END, timeout=0.5)
                return
            except queue.Full:
                continue

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    # --- the worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if item is _END:
                    break
                self._handle(item)
            self._close_period()
        except BaseException as exc:  # reported to the loop, which marks the episode
            self.error = exc
            log.exception("HLS writer failed", extra={"prefix": self.prefix})
            try:
                self._abandon_period()
            except Exception:
                pass
            self.on_failed()
        finally:
            if self._transcoder is not None:
                self._transcoder.close()

    def _handle(self, sample: Sample) -> None:
        if sample.kind == "video" and sample.codec == "VP8":
            if self._transcoder is None:
                from .transcode import Vp8ToH264

                self._transcoder = Vp8ToH264()
            for converted in self._transcoder.convert(sample):
                self._handle_one(converted)
            return
        self._handle_one(sample)

    def _handle_one(self, sample: Sample) -> None:
        if sample.kind == "audio":
            self._audio_seen = True
        period = self._period
        if period is None:
            self._pending.append(sample)
            self._maybe_open()
            return
        if sample.kind == "video":
            if sample.codec != "H264":
                return
            if period.video is None or period.want_restart or (
                sample.keyframe and h264_parameter_sets(sample.data) not in (b"", period.params)
            ):
                if not _startable(sample):
                    self.on_keyframe_wanted()
                    if period.video is None:
                        return
                    # Keep recording into this period until the keyframe that starts the next.
                    self._mux_video(period, sample)
                    self._collect(period)
                    return
                self._close_period()
                self._pending = [sample]
                self._open(sample, with_audio=self._audio_seen)
                return
            self._mux_video(period, sample)
        else:
            if period.audio is None:
                if period.video is None:
                    # Audio-only period gained nothing; cannot happen, audio is its only track.
                    return
                # The next keyframe opens a period with an audio track.
                if not period.want_restart:
                    period.want_restart = True
                    self.on_keyframe_wanted()
                return
            self._mux_audio(period, sample)
        self._collect(period)

    def _maybe_open(self) -> None:
        pending = self._pending
        keyframe = next((s for s in pending if _startable(s)), None)
        latest = max(s.seconds for s in pending)
        if keyframe is not None:
            has_audio = any(s.kind == "audio" and s.seconds >= keyframe.seconds for s in pending)
            if has_audio or latest - keyframe.seconds >= self.start_wait:
                self._open(keyframe, with_audio=has_audio)
            return
        if any(s.kind == "video" for s in pending) or not self.audio_only_ok:
            # Video exists but no keyframe yet: keep only the last start_wait of audio.
            horizon = latest - self.start_wait
            self._pending = [s for s in pending if s.kind == "audio" and s.seconds >= horizon]
            if self.audio_only_ok or any(s.kind == "video" for s in pending):
                self.on_keyframe_wanted()
            return
        # A video track the recording already has (held for its first sender report) gets
        # longer before the audio starts a period without it.
        if latest - pending[0].seconds >= self.start_wait * (3 if self.video_expected else 1):
            self._open(pending[0], with_audio=True, audio_only=True)

    def _open(self, first: Sample, *, with_audio: bool, audio_only: bool = False) -> None:
        index = self._next_period
        self._next_period += 1
        splitter = BoxSplitter()
        options = {
            "movflags": "frag_keyframe+empty_moov+default_base_moof+skip_trailer",
            # Audio-only periods fragment on time instead of keyframes.
            "frag_duration": str(int((self.part_seconds or (self.target if audio_only else 0)) * 1_000_000)),
            # Hold a packet at most this long waiting for the other stream (a muted track
            # sends nothing), so a segment is never held back for long.
            "max_interleave_delta": "300000",
        }
        container = av.open(splitter, "w", format="mp4", options=options)
        video = audio = None
        params = b""
        width = height = 0
        if not audio_only:
            params = h264_parameter_sets(first.data)
            with av.open(io.BytesIO(first.data), format="h264") as probe:
                template = probe.streams.video[0]
                width, height = template.codec_context.width, template.codec_context.height
                video = container.add_stream_from_template(template)
            video.time_base = Fraction(1, VIDEO_CLOCK)
        if with_audio:
            # The stream's own encoder context supplies the sample entry (dOps / esds);
            # for Opus it never encodes: packets are muxed as received.
            audio = container.add_stream("aac" if self.audio_codec == "aac" else "libopus", rate=AUDIO_CLOCK)
            audio.layout = "stereo"
            audio.time_base = Fraction(1, AUDIO_CLOCK)
            if self.audio_codec == "aac":
                audio.bit_rate = 128_000
        period = _Period(
            index=index, container=container, splitter=splitter, video=video, audio=audio,
            start=first.seconds, params=params,
            discontinuity=index > 0 or self._seq > 1,
        )
        if audio is not None:
            period.audio_end = round(first.seconds * AUDIO_CLOCK)
            if self.audio_codec == "aac":
                period.aac = _AacEncoder(audio, period.audio_end)
        self._period = period
        self.on_format(PeriodFormat(
            video_codec=h264_codec_string(params) if video is not None else "",
            audio_codec=("mp4a.40.2" if self.audio_codec == "aac" else "opus") if audio is not None else "",
            width=width, height=height,
        ))
        pending, self._pending = self._pending, []
        # In timeline order: a track held until its sender report came (recording.py) arrives
        # after the other with earlier timestamps.  Stable, so each stream keeps its own order.
        pending.sort(key=lambda sample: sample.seconds)
        for sample in pending:
            if sample.seconds < first.seconds:
                continue   # before the keyframe the period starts at
            if sample.kind == "video" and video is not None:
                self._mux_video(period, sample)
            elif sample.kind == "audio" and audio is not None:
                self._mux_audio(period, sample)
        self._collect(period)

    def _mux_video(self, period: _Period, sample: Sample) -> None:
        if sample.keyframe and period.audio is not None:
            # A keyframe may close a segment: if the audio went quiet (muted, nothing
            # forwarded), fill it up to here so the segment holds both tracks for its span.
            behind = round(sample.pts * AUDIO_CLOCK / VIDEO_CLOCK) - period.audio_end
            if behind > AUDIO_STALL:
                self._fill_silence(period, period.audio_end + behind)
        pts = sample.pts
        if pts <= period.last_video_pts:
            pts = period.last_video_pts + 1
        elif period.last_video_pts >= 0:
            step = pts - period.last_video_pts
            if step < VIDEO_CLOCK:  # a gap (mute) is not a frame rate
                period.video_step = step
        packet = av.Packet(sample.data)
        packet.pts = packet.dts = pts
        packet.time_base = period.video.time_base
        packet.duration = period.video_step
        packet.is_keyframe = sample.keyframe
        packet.stream = period.video
        period.last_video_pts = pts
        if sample.keyframe and self.part_seconds:
            period.keyframes.append(period.start + (pts - period.first_video_pts) / VIDEO_CLOCK
                                    if period.first_video_pts is not None else period.start)
        if period.first_video_pts is None:
            period.first_video_pts = pts
        period.container.mux(packet)

    def _mux_audio(self, period: _Period, sample: Sample) -> None:
        pts = sample.pts
        end = period.audio_end
        if end is not None:
            gap = pts - end
            if OPUS_SILENCE_SAMPLES // 2 < gap <= MAX_SILENCE_FILL:
                # Keep the audio timeline continuous: players stall or drift on holes.
                self._fill_silence(period, pts)
                end = period.audio_end
            if pts < end - OPUS_SILENCE_SAMPLES // 2:
                # Overlaps what is already written (silence filled ahead, a reconnect mapped
                # a little early): drop it rather than push all later audio out of sync.
                return
            if abs(pts - end) <= OPUS_SILENCE_SAMPLES // 2:
                # A sliver of overlap or gap: butt the packet against the last one.
                pts = end
        self._mux_audio_packet(period, sample.data, pts, opus_samples(sample.data))

    def _fill_silence(self, period: _Period, until: int) -> None:
        """20 ms silence packets from the end of the audio to about ``until`` (48 kHz)."""
        for fill in range(period.audio_end, until - OPUS_SILENCE_SAMPLES // 2, OPUS_SILENCE_SAMPLES):
            self._mux_audio_packet(period, OPUS_SILENCE, fill, OPUS_SILENCE_SAMPLES)

    def _mux_audio_packet(self, period: _Period, data: bytes, pts: int, duration: int) -> None:
        if period.aac is not None:
            period.audio_end = pts + duration
            for packet in period.aac.encode(data, pts):
                period.container.mux(packet)
            return
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.time_base = period.audio.time_base
        packet.duration = duration
        packet.stream = period.audio
        period.audio_end = pts + duration
        period.container.mux(packet)

    # --- fragments into segments ---------------------------------------------------------------

    def _collect(self, period: _Period) -> None:
        splitter = period.splitter
        if period.init is None and splitter.init is not None:
            period.init = init_name(period.index, self.rendition)
            self.storage.put(f"{self.prefix}/{period.init}", splitter.init)
        for fragment in splitter.take():
            self._add_fragment(period, fragment)

    def _span(self, period: _Period, fragment: Fragment) -> tuple[float, float]:
        movie = period.splitter.movie
        span = fragment.tracks.get(1) or next(iter(fragment.tracks.values()))
        scale = movie.timescales.get(1, VIDEO_CLOCK)
        if period.first_tfdt is None:
            period.first_tfdt = span.start
        start = period.start + (span.start - period.first_tfdt) / scale
        return start, start + span.duration / scale

    def _add_fragment(self, period: _Period, fragment: Fragment) -> None:
        if self.part_seconds:
            self._add_part(period, fragment)
            return
        start, end = self._span(period, fragment)
        if period.fragments and end - period.segment_start > self.target + self.tolerance:
            # This fragment would make the segment too long: close what we have first.
            self._close_segment(period)
        if not period.fragments:
            period.segment_start = start
        period.fragments.append(fragment)
        period.segment_end = end
        length = end - period.segment_start
        # Close at the target, or a little short of it when another fragment as long
        # as this one (the publisher's keyframe cadence) would overshoot it.
        if length >= self.target - 1e-3 or (
            length >= self.target - self.tolerance and length + (end - start) > self.target + 1e-3
        ):
            self._close_segment(period)

    def _add_part(self, period: _Period, fragment: Fragment) -> None:
        """Parts mode: each fragment is published as a part at once, so the decision to
        close a segment is taken when the next keyframe fragment arrives (a segment can
        only end before a keyframe), with the same target and tolerance on whole GOPs."""
        start, end = self._span(period, fragment)
        independent = period.video is None or fragment.tracks.get(1, _SYNC).sync
        if period.fragments and independent:
            self._maybe_close_at_keyframe(period)
        if not period.fragments:
            period.segment_start = start
        if independent:
            period.gop_start = start
        period.fragments.append(fragment)
        period.segment_end = end
        assert self.on_part is not None
        self.on_part(WrittenPart(
            seq=self._seq, period=period.index, index=len(period.fragments) - 1,
            segment=segment_name(self._seq, period.index, self.rendition), init=period.init,
            discontinuity=period.discontinuity, independent=independent, data=fragment.data,
            start=start, duration=max(0.001, end - start), written_at=time.monotonic(),
        ))
        # A keyframe was muxed right at this fragment's end: the GOP is complete, so
        # the segment may close now rather than when the next fragment comes out.
        slack = 0.5 / 30
        period.keyframes = [k for k in period.keyframes if k > end - slack]
        if period.keyframes and abs(period.keyframes[0] - end) < slack:
            self._maybe_close_at_keyframe(period)

    def _maybe_close_at_keyframe(self, period: _Period) -> None:
        length = period.segment_end - period.segment_start
        gop = period.segment_end - period.gop_start
        if length >= self.target - 1e-3 or (
            length >= self.target - self.tolerance and length + gop > self.target + 1e-3
        ):
            self._close_segment(period)

    def _close_segment(self, period: _Period) -> None:
        if not period.fragments:
            return
        closed_at = time.monotonic()
        data = b"".join(f.data for f in period.fragments)
        name = segment_name(self._seq, period.index, self.rendition)
        self.storage.put(f"{self.prefix}/{name}", data)
        segment = ClosedSegment(
            seq=self._seq, name=name, init=period.init, discontinuity=period.discontinuity,
            start=period.segment_start, duration=max(0.001, period.segment_end - period.segment_start),
            size=len(data), closed_at=closed_at, rendition=self.rendition,
        )
        self._seq += 1
        period.fragments = []
        period.discontinuity = False
        self.on_segment(segment)

    def _close_period(self) -> None:
        period = self._period
        if period is None:
            return
        self._period = None
        if period.aac is not None:
            for packet in period.aac.flush():
                period.container.mux(packet)
        period.container.close()   # flushes the interleaver and the last fragment
        self._collect(period)
        self._close_segment(period)

    def _abandon_period(self) -> None:
        period, self._period = self._period, None
        if period is not None:
            try:
                period.container.close()
            except Exception:
                pass


class _AacEncoder:
    """Opus -> AAC-LC for players without Opus in HLS (Apple's), in the writer thread.

    The input is the continuous Opus timeline the writer already keeps (gaps
    filled with silence), so the output is 1024-sample AAC frames numbered
    from the period's first audio sample.
    """

    def __init__(self, stream: av.stream.Stream, first_pts: int) -> None:
        self.stream = stream
        self.decoder = av.CodecContext.create("opus", "r")
        self.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_CLOCK)
        self.fifo = av.AudioFifo()
        self.next_pts = first_pts
        self.time_base = Fraction(1, AUDIO_CLOCK)

    def encode(self, data: bytes, pts: int) -> list[av.Packet]:
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.time_base = self.time_base
        try:
            frames = self.decoder.decode(packet)
        except av.error.FFmpegError:
            frames = []   # a damaged packet: the FIFO simply gets less audio
        out: list[av.Packet] = []
        for frame in frames:
            for converted in self.resampler.resample(frame):
                converted.pts = None
                self.fifo.write(converted)
        size = self.stream.codec_context.frame_size or 1024
        while self.fifo.samples >= size:
            chunk = self.fifo.read(size)
            chunk.pts = self.next_pts
            chunk.time_base = self.time_base
            self.next_pts += size
            out += self.stream.encode(chunk)
        return out

    def flush(self) -> list[av.Packet]:
        return list(self.stream.encode(None))
