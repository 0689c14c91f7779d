"""The frame counter: a picture that carries its own frame index.

Frame N shows N in binary as ``BITS`` full-height columns of ``BLOCK``
pixels, white for 1 and black for 0, most significant bit on the left.
Whole columns survive H.264 and VP8 at low bitrates, so a reader that
decodes the picture again (a viewer, a recorded segment) can tell which
frame it holds and whether any went missing.  One encoding for live peers
and for the synthetic recorder sessions alike.
"""

from __future__ import annotations

import av

BITS = 18            # 2^18 frames: over 2 hours at 30 fps before the counter wraps
BLOCK = 16
WIDTH, HEIGHT = BITS * BLOCK, 64    # the smallest picture that carries a counter
WHITE, BLACK = 235, 16              # video-range luma


def counter_luma(index: int, width: int, height: int) -> bytes:
    """The luma plane of frame ``index`` (``width`` >= WIDTH)."""
    row = bytearray()
    for bit in range(BITS):
        row += bytes([WHITE if index >> (BITS - 1 - bit) & 1 else BLACK]) * BLOCK
    row += bytes([BLACK]) * (width - len(row))
    return bytes(row) * height


def draw_counter(index: int, width: int, height: int) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    frame.planes[0].update(counter_luma(index, width, height))
    for plane in frame.planes[1:]:
        plane.update(bytes([128]) * plane.buffer_size)
    return frame


def read_counter(frame: av.VideoFrame) -> int:
    """The index a decoded picture carries (read across the middle row of the columns)."""
    if frame.format.name not in ("yuv420p", "yuvj420p", "nv12", "gray"):
        frame = frame.reformat(format="gray")
    plane = frame.planes[0]
    data = bytes(plane)
    y = min(frame.height, HEIGHT) // 2
    value = 0
    for bit in range(BITS):
        value = value << 1 | (1 if data[y * plane.line_size + bit * BLOCK + BLOCK // 2] > 128 else 0)
    return value
