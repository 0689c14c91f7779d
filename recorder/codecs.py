"""Bitstream facts the recorder needs without decoding: H.264 parameter sets, Opus durations."""

from __future__ import annotations

# A 20 ms CELT fullband frame that decodes to silence (TOC 0xF8: config 31, one frame).
OPUS_SILENCE = b"\xf8\xff\xfe"
OPUS_SILENCE_SAMPLES = 960

_SILK_MS = (10, 20, 40, 60)
_HYBRID_MS = (10, 20)
_CELT_US = (2500, 5000, 10000, 20000)


def opus_samples(packet: bytes) -> int:
    """Samples at 48 kHz in one Opus packet (RFC 6716 section 3.1), 960 if unreadable."""
    if not packet:
        return OPUS_SILENCE_SAMPLES
    toc = packet[0]
    config = toc >> 3
    if config < 12:
        per_frame = _SILK_MS[config % 4] * 48
    elif config < 16:
        per_frame = _HYBRID_MS[config % 2] * 48
    else:
        per_frame = _CELT_US[config % 4] * 48 // 1000
    code = toc & 3
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        frames = packet[1] & 0x3F if len(packet) > 1 else 1
    return max(1, per_frame * max(1, frames))


def h264_parameter_sets(data: bytes) -> bytes:
    """The SPS and PPS NAL units of an Annex B access unit, concatenated (empty if none).

    Two keyframes with different parameter sets (a new resolution, a new
    encoder after a reconnect) cannot share one fMP4 initialization section.
    """
    found = []
    find = data.find
    pos = find(b"\x00\x00\x01")
    while pos >= 0:
        start = pos + 3
        nxt = find(b"\x00\x00\x01", start)
        nal_type = data[start] & 0x1F if start < len(data) else 0
        if nal_type in (7, 8):
            end = len(data) if nxt < 0 else nxt
            # A 4-byte start code leaves a zero byte before the next one.
            if nxt > 0 and data[nxt - 1] == 0:
                end -= 1
            found.append(data[start:end])
        elif nal_type in (1, 5):
            break  # parameter sets precede the first slice
        pos = nxt
    return b"".join(found)


def h264_codec_string(parameter_sets: bytes) -> str:
    """RFC 6381 ``avc1.PPCCLL`` from the SPS (the first NAL of ``h264_parameter_sets``)."""
    # parameter_sets starts with the SPS NAL header (type 7), then profile, constraints, level.
    if len(parameter_sets) < 4 or parameter_sets[0] & 0x1F != 7:
        return "avc1.42e01f"   # constrained baseline 3.1: what browsers publish
    return "avc1." + parameter_sets[1:4].hex()
