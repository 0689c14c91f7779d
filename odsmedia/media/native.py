"""The packet path's compiled send loop (odsmedia/media/_fanout.c), when it is built.

``pip install .`` compiles ``_fanout`` where a C compiler and the Python
headers exist (setup.py marks it optional); without it the forwarder runs
its pure-Python loop, which puts the same bytes on the wire
(tests/test_native_forward.py checks both).  ``available`` says which loop
new subscribers get; tests switch it off to run the fallback.

A subscriber's native state is a *slot*: its SRTP session (the libsrtp
context pylibsrtp made, and libsrtp's ``srtp_protect`` by address), a
duplicate of its socket's file descriptor (so the number stays valid, and
names the same socket, until the slot is released, whatever aioice does
with its own), its address, SSRC, payload type, header extension blocks and
offsets.  ``forward()`` then does per copy what the Python loop does
(rewrite, protect, sendto) without touching a Python object.

Duplicates are shared: every slot on one socket (a viewer's audio and
video, or every subscriber on the node's one UDP port) uses one duplicate,
counted and closed with its last slot, so the compiled loop costs at most
one descriptor per viewer, none per subscription.
"""

from __future__ import annotations

import os
from typing import Any

from . import aiortc_private as private

try:
    from . import _fanout
except ImportError:          # not built: the pure-Python loop serves every subscriber
    _fanout = None

available: bool = _fanout is not None
forward = _fanout.forward if _fanout is not None else None
rebase = _fanout.rebase if _fanout is not None else None


# Socket inode -> [duplicate descriptor, slots using it].  The inode names the socket
# itself: while the duplicate is open the socket lives, so the inode is not reused.
_duplicates: dict[int, list[int]] = {}


def _dup(fd: int) -> int:
    inode = os.fstat(fd).st_ino
    entry = _duplicates.get(inode)
    if entry is None:
        entry = _duplicates[inode] = [os.dup(fd), 0]
    entry[1] += 1
    return entry[0]


def _release(fd: int) -> None:
    try:
        inode = os.fstat(fd).st_ino
    except OSError:
        return
    entry = _duplicates.get(inode)
    if entry is None or entry[0] != fd:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _duplicates[inode]
        os.close(fd)


def level_position(plain: bytes, low: bytes, high: bytes) -> int:
    """Index of the audio-level byte in a subscriber's extension block (built with
    level 0x00 and 0xFF), or -1 when the block carries no level."""
    if len(low) != len(high):
        raise ValueError("audio level blocks differ in length")
    diff = [i for i, (a, b) in enumerate(zip(low, high)) if a != b]
    if not diff:
        return -1
    if len(diff) != 1:
        raise ValueError("audio level blocks differ in more than the level byte")
    return diff[0]


class NativeSlot:
    """One subscriber's slot and the (shared) socket duplicate it sends on."""

    __slots__ = ("slot", "fd", "_session")

    def __init__(self, session: Any, fd: int, addr: tuple[str, int], *, ssrc: int, pt: int, ext: bytes,
                 ext_low: bytes, ext_high: bytes) -> None:
        assert _fanout is not None
        from pylibsrtp import _binding

        ffi, lib = _binding.ffi, _binding.lib
        srtp = getattr(session, private.SRTP_SESSION_HANDLE)[0]
        level_at = level_position(ext, ext_low, ext_high)
        self._session = session          # owns the libsrtp context the slot points at
        self.fd = -1
        self.fd = _dup(fd)
        try:
            self.slot = _fanout.slot(int(ffi.cast("uintptr_t", srtp)),
                                     int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_protect"))),
                                     self.fd, addr[0], addr[1], ssrc, pt, ext, ext_low, level_at)
        except BaseException:
            _release(self.fd)
            self.fd = -1
            raise

    def counts(self) -> tuple[int, int, int, int]:
        """(packets, payload octets, bytes sent, errors) so far."""
        assert _fanout is not None
        return _fanout.counts(self.slot)

    def close(self) -> None:
        if self.fd >= 0:
            _release(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()
