"""A synthetic publisher and an episode reader, for tests and bench/.

``SyntheticSession`` encodes what a browser publisher would send: H.264
constrained baseline in Annex B with SPS/PPS on every IDR (libx264), and
20 ms Opus packets (libopus), as ``MediaFrame``s carrying RTP-style
timestamps relative to each track's first frame and arrival times.  Each
picture carries its frame index (``counter``), and the
audio is silent except for a 1 kHz beep starting on every whole second of
source time, so a reader can check that no frame went missing and measure
how far audio sits from video.

``read_segment`` decodes one segment (with its initialization section) with
PyAV and returns the frame indexes and beep onsets it finds.
"""

from __future__ import annotations

import array
import asyncio
import io
import math
import random
import time
from dataclasses import dataclass, field
from fractions import Fraction

import av

from odsmedia.media.frame import MediaFrame

from .counter import draw_counter, read_counter

@dataclass
class SyntheticSession:
    """Pre-encoded frames of one publisher session (video and/or audio)."""

    seconds: float
    width: int = 320
    height: int = 180
    fps: int = 30
    gop_seconds: float = 1.0          # keyframe cadence of the simulated encoder
    audio: bool = True
    video: bool = True
    audio_start: float = 0.2          # the mic's first packet leaves this much after the camera's
    arrival0: float = 1000.0
    jitter: float = 0.005             # network jitter on arrival times (seconds, uniform)
    first_index: int = 0              # counter of the first video frame (a reconnect continues it)
    video_codec: str = "H264"         # or "VP8" (libvpx, realtime)
    seed: int = 1
    frames: list[MediaFrame] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        frames: list[MediaFrame] = []
        if self.video:
            frames += self._video(rng)
        if self.audio:
            frames += self._audio(rng)
        frames.sort(key=lambda f: f.arrival)
        self.frames = frames

    def _video(self, rng: random.Random) -> list[MediaFrame]:
        if self.video_codec == "VP8":
            encoder = av.CodecContext.create("libvpx", "w")
            encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0",
                               "kf-max-dist": "100000", "auto-alt-ref": "0"}
            encoder.bit_rate = 500_000
        else:
            encoder = av.CodecContext.create("libx264", "w")
            encoder.options = {
                "profile": "baseline", "preset": "ultrafast", "tune": "zerolatency",
                "x264-params": "keyint=100000:min-keyint=100000:scenecut=0:repeat-headers=1:bframes=0",
            }
        encoder.width, encoder.height = self.width, self.height
        encoder.pix_fmt = "yuv420p"
        encoder.time_base = Fraction(1, 90000)
        encoder.framerate = self.fps
        gop = max(1, round(self.gop_seconds * self.fps))
        count = int(self.seconds * self.fps)
        step = 90000 // self.fps
        out: list[MediaFrame] = []
        for i in range(count):
            picture = draw_counter(self.first_index + i, self.width, self.height)
            picture.pts = i * step
            picture.time_base = encoder.time_base
            if i % gop == 0:
                picture.pict_type = av.video.frame.PictureType.I
            for packet in encoder.encode(picture):
                out.append(self._video_frame(packet, step, rng))
        for packet in encoder.encode(None):
            out.append(self._video_frame(packet, step, rng))
        return out

    def _video_frame(self, packet: av.Packet, step: int, rng: random.Random) -> MediaFrame:
        source_time = packet.pts / 90000
        return MediaFrame(
            kind="video", codec=self.video_codec, data=bytes(packet), timestamp=packet.pts, clock_rate=90000,
            keyframe=packet.is_keyframe, arrival=self.arrival0 + source_time + rng.uniform(0, self.jitter),
        )

    def _audio(self, rng: random.Random) -> list[MediaFrame]:
        encoder = av.CodecContext.create("libopus", "w")
        encoder.sample_rate = 48000
        encoder.layout = "mono"
        encoder.format = "s16"
        encoder.time_base = Fraction(1, 48000)
        encoder.bit_rate = 32000
        count = int((self.seconds - self.audio_start) / 0.02)
        out: list[MediaFrame] = []
        first_ts = None
        for j in range(count):
            samples = array.array("h", bytes(960 * 2))
            for k in range(960):
                t = self.audio_start + (j * 960 + k) / 48000   # source time of this sample
                if t % 1.0 < 0.1 and t >= 0.5:
                    samples[k] = int(12000 * math.sin(2 * math.pi * 1000 * t))
            frame = av.AudioFrame(format="s16", layout="mono", samples=960)
            frame.planes[0].update(samples.tobytes())
            frame.sample_rate = 48000
            frame.pts = j * 960
            frame.time_base = encoder.time_base
            for packet in encoder.encode(frame):
                if first_ts is None:
                    first_ts = packet.pts
                out.append(self._audio_frame(packet, first_ts, rng))
        return out

    def _audio_frame(self, packet: av.Packet, first_ts: int, rng: random.Random) -> MediaFrame:
        # libopus reports pts - pre-skip; the RTP timestamp of a WebRTC sender starts at its first packet.
        timestamp = packet.pts - first_ts
        source_time = self.audio_start + timestamp / 48000
        return MediaFrame(
            kind="audio", codec="opus", data=bytes(packet), timestamp=timestamp, clock_rate=48000,
            keyframe=True, arrival=self.arrival0 + source_time + rng.uniform(0, self.jitter),
        )


@dataclass
class DecodedSegment:
    video: list[tuple[float, int]] = field(default_factory=list)      # (pts seconds, counter)
    audio_onsets: list[float] = field(default_factory=list)          # pts seconds of beep starts
    audio_start: float | None = None
    audio_end: float | None = None
    video_pts: list[float] = field(default_factory=list)
    audio_pts: list[float] = field(default_factory=list)


def read_segment(init: bytes | None, data: bytes, *, container_format: str = "mp4") -> DecodedSegment:
    """Decode every frame of one segment; raises if PyAV cannot."""
    result = DecodedSegment()
    blob = (init or b"") + data
    quiet = 48000      # samples since the last loud one; a beep follows >= 10 ms of quiet
    with av.open(io.BytesIO(blob), format=container_format) as container:
        for packet in container.demux():
            if packet.size == 0:
                continue
            stream = packet.stream
            if stream.type == "video":
                result.video_pts.append(float(packet.pts * stream.time_base))
            elif stream.type == "audio":
                result.audio_pts.append(float(packet.pts * stream.time_base))
            for frame in packet.decode():
                if stream.type == "video":
                    result.video.append((float(frame.pts * frame.time_base), read_counter(frame)))
                    continue
                start = float(frame.pts * frame.time_base)
                if result.audio_start is None:
                    result.audio_start = start
                result.audio_end = start + frame.samples / frame.sample_rate
                # Opus decodes to planar float: plane 0 is the first channel.
                if frame.format.name != "fltp":
                    raise ValueError(f"unexpected audio sample format {frame.format.name}")
                plane = array.array("f", bytes(frame.planes[0])[: frame.samples * 4])
                for k, level in enumerate(plane):
                    if abs(level) > 0.1:
                        if quiet >= 480:
                            result.audio_onsets.append(start + k / frame.sample_rate)
                        quiet = 0
                    else:
                        quiet += 1
    return result


async def feed_sinks(sinks: dict, frames: list[MediaFrame]) -> None:
    """Deliver ``frames`` to ``sinks`` (by kind) at their capture pace: the source of media of a
    live recording a test or benchmark watches while it grows (the caller ends the sinks)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    first = frames[0].arrival
    for frame in frames:
        delay = start + (frame.arrival - first) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        sinks[frame.kind].on_frame(frame)


async def feed_realtime(recorder, room, frames: list[MediaFrame], transform=None, sources: list[str] | None = None):
    """Deliver ``frames`` to a new recording of ``room`` at their arrival times (benchmarks: the
    recorder's CPU at the real pace); ``recorder`` None measures the pacing loop alone.
    ``transform`` maps each video frame to the frames to deliver instead (a VP8 -> H.264
    conversion). ``sources`` names each frame's publication (camera, screen, microphone; one
    track per name); by default one video and one audio track.
    Returns (cpu seconds, wall seconds, the finished recording or None)."""
    recording = sinks = None
    names = sources or [f.kind for f in frames]
    if recorder is not None:
        recording = recorder.recording_for(room.id, room.slug, room.title)
        sinks = {}
        for name, frame in zip(names, frames):
            if name not in sinks:
                sinks[name] = recording.add_track(frame.kind, source=name if sources else "")
    loop = asyncio.get_running_loop()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    start = loop.time() + 0.05
    first = frames[0].arrival
    for name, frame in zip(names, frames):
        delay = start + (frame.arrival - first) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        items = transform(frame) if (transform is not None and frame.kind == "video") else [frame]
        for item in items:
            item.arrival = frame.arrival
            if sinks is not None:
                sinks[name].on_frame(item)
    if recording is not None:
        for sink in sinks.values():
            sink.on_end()
        await asyncio.wait_for(recording.done.wait(), 120)
    return time.process_time() - cpu0, time.perf_counter() - wall0, recording


async def record_sources(recording, sessions: dict[str, SyntheticSession], *, sender_reports=None,
                         publisher: str = "") -> None:
    """Feed one publisher's sources to ``recording`` as separate publications, in arrival order,
    end them and wait for the episode: each session's video under its source name (camera,
    screen), its audio as the microphone.  A key ``SOURCE@NAME`` is another publisher's source
    (a co-host's camera: ``camera@cohost``).  ``sender_reports`` maps a source to its
    publication's sender-report callable (absent: a track placed by arrival)."""
    sinks: dict[tuple[str, str, str], object] = {}
    tagged = []
    for key, session in sessions.items():
        source, _, who = key.partition("@")
        who = who or publisher
        for frame in session.frames:
            name = source if frame.kind == "video" else "microphone"
            if (frame.kind, name, who) not in sinks:
                sinks[(frame.kind, name, who)] = recording.add_track(
                    frame.kind, source=name, publisher=who,
                    sender_report=(sender_reports or {}).get(name))
            tagged.append((frame, sinks[(frame.kind, name, who)]))
    for frame, sink in sorted(tagged, key=lambda pair: pair[0].arrival):
        sink.on_frame(frame)
    for sink in sinks.values():
        sink.on_end()
    await asyncio.wait_for(recording.done.wait(), 60)
