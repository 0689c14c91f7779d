"""VP8 -> H.264, once per recorded session, in the writer thread.

fMP4 HLS has no VP8 sample entry that players accept, and WebM is not an
HLS container, so a VP8 publication is decoded and re-encoded to H.264
constrained baseline (libx264, ultrafast, zero latency) for the recording
only; viewers still get the original VP8 from the SFU.  Keyframes follow the
source: a VP8 keyframe (which the recorder asks for at segment cadence)
becomes an IDR, so segments are cut where they would have been.  The cost is
one small encode per session (see bench/README.md), paid by the writer
thread, never by the event loop.
"""

from __future__ import annotations

from fractions import Fraction

import av

from .hls import VIDEO_CLOCK, Sample


class Vp8ToH264:
    def __init__(self, *, crf: int = 23) -> None:
        self.crf = crf
        self.decoder = av.CodecContext.create("vp8", "r")
        self.encoder: av.VideoCodecContext | None = None
        self.size: tuple[int, int] | None = None
        self.waiting_keyframe = True

    def _encoder_for(self, width: int, height: int) -> av.VideoCodecContext:
        if self.encoder is None or self.size != (width, height):
            # A new size needs a new SPS: a fresh encoder (the writer starts a new period).
            encoder = av.CodecContext.create("libx264", "w")
            encoder.width, encoder.height = width - width % 2, height - height % 2
            encoder.pix_fmt = "yuv420p"
            encoder.time_base = Fraction(1, VIDEO_CLOCK)
            encoder.options = {
                "profile": "baseline", "preset": "ultrafast", "tune": "zerolatency", "crf": str(self.crf),
                "x264-params": "keyint=infinite:scenecut=0:repeat-headers=1:bframes=0:annexb=1",
            }
            self.encoder = encoder
            self.size = (width, height)
        return self.encoder

    def convert(self, sample: Sample) -> list[Sample]:
        if self.waiting_keyframe:
            if not sample.keyframe:
                return []
            self.waiting_keyframe = False
        packet = av.Packet(sample.data)
        packet.pts = packet.dts = sample.pts
        packet.time_base = Fraction(1, VIDEO_CLOCK)
        try:
            frames = self.decoder.decode(packet)
        except av.error.FFmpegError:
            # A lost reference: nothing decodes cleanly until the next keyframe.
            self.waiting_keyframe = True
            return []
        out: list[Sample] = []
        for frame in frames:
            encoder = self._encoder_for(frame.width, frame.height)
            if frame.format.name != "yuv420p" or (frame.width, frame.height) != (encoder.width, encoder.height):
                frame = frame.reformat(width=encoder.width, height=encoder.height, format="yuv420p")
            frame.pts = sample.pts
            frame.time_base = Fraction(1, VIDEO_CLOCK)
            frame.pict_type = av.video.frame.PictureType.I if sample.keyframe else av.video.frame.PictureType.NONE
            for encoded in encoder.encode(frame):
                out.append(Sample("video", "H264", bytes(encoded), encoded.pts, VIDEO_CLOCK, encoded.is_keyframe))
        return out

    def close(self) -> None:
        self.encoder = None
        self.decoder = None
