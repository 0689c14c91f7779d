"""RTP payload inspection and header pieces for the packet forward path.

Only what forwarding needs: whether a packet starts a keyframe (so a
subscriber can start or resume there) and the header extension block a
subscriber negotiated.  Payloads themselves are never parsed further.
"""

from __future__ import annotations

import struct

from aiortc.rtp import HeaderExtensions, HeaderExtensionsMap

HEADER = struct.Struct("!BBHLL")       # V/P/X/CC, M/PT, sequence number, timestamp, SSRC
RTX_OSN = struct.Struct("!H")         # RFC 4588: original sequence number ahead of the payload

_H264_KEY_NALS = (5, 7)               # IDR slice, SPS (a keyframe's first NAL in every encoder here)


def timestamp_delta(later: int, earlier: int) -> int:
    """``later - earlier`` on the 32-bit RTP timestamp clock: wrap-aware and signed."""
    return ((later - earlier + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def h264_starts_keyframe(payload: bytes) -> bool:
    """True when this RTP payload (RFC 6184) opens an IDR picture: an IDR or SPS
    NAL on its own, inside a STAP-A, or the first fragment (FU-A start) of an IDR.
    The caller checks that it is also the picture's first packet."""
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal in _H264_KEY_NALS:
        return True
    if nal == 24:                     # STAP-A: 16-bit size, then the NAL
        pos, end = 1, len(payload) - 2
        while pos < end:
            if payload[pos + 2] & 0x1F in _H264_KEY_NALS:
                return True
            pos += 2 + (payload[pos] << 8 | payload[pos + 1])
        return False
    if nal == 28 and len(payload) > 1:  # FU-A: S bit and the fragmented NAL's type
        header = payload[1]
        return bool(header & 0x80) and header & 0x1F == 5
    return False


def vp8_starts_keyframe(payload: bytes) -> bool:
    """True on the first packet of a VP8 key frame (RFC 7741: S=1, partition 0, P bit 0)."""
    n = len(payload)
    if n < 2:
        return False
    first = payload[0]
    if not first & 0x10 or first & 0x07:
        return False
    pos = 1
    if first & 0x80:                  # X: extension byte with I/L/T/K
        ext = payload[1]
        pos = 2
        if ext & 0x80:                # I: picture id, 7 or 15 bits
            if pos >= n:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:                # L: TL0PICIDX
            pos += 1
        if ext & 0x30:                # T or K: TID/Y/KEYIDX
            pos += 1
    return pos < n and payload[pos] & 0x01 == 0


def starts_keyframe(codec: str, payload: bytes) -> bool:
    if codec == "H264":
        return h264_starts_keyframe(payload)
    if codec == "VP8":
        return vp8_starts_keyframe(payload)
    return True


def extension_block(ext_map: HeaderExtensionsMap, mid: str | None, audio_level: int | None = None) -> bytes:
    """The header extension block (profile, length, elements) a subscriber's
    sender negotiated, carrying its MID and, for audio, the publisher's level."""
    values = HeaderExtensions()
    values.mid = mid
    if audio_level is not None:
        values.audio_level = (bool(audio_level & 0x80), audio_level & 0x7F)
    profile, value = ext_map.set(values)
    if not value:
        return b""
    return struct.pack("!HH", profile, len(value) >> 2) + value
