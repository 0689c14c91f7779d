"""Sender reports for every packet-path stream from one timer per process.

Each subscriber's senders (and each relay pipe) owe the far end an RTCP
sender report about once a second: browsers map RTP timestamps to wall
clock with it (lip sync).  aiortc gives every sender its own loop that
sleeps 0.5-1.5 s between reports, so N viewers cost 2N timer wakeups a
second, each a coroutine resume and an event-loop return of its own --
measured at about a fifth of the packet path's per-viewer CPU outside the
fan-out loop (bench/README.md).  ``ReportClock`` fires ``SLOTS`` times a
second instead; a group (one subscriber transport, or one pipe) sits in one
slot chosen at random when it joins, so groups still report at spread
times (RFC 3550 6.2's concern: no synchronized bursts) and each reports
every ``SLOTS * TICK`` seconds.  A group's members (the audio and the video
sender of one transport) go out as one compound RTCP packet: one SRTCP
protect and one send instead of two.

The timer runs only while some group is registered.  One clock serves the
process (``CLOCK``): each worker process has one event loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Callable, Hashable

log = logging.getLogger("odsmedia.sfu")

SLOTS = 10
TICK = 0.1                 # seconds between slots: each group reports every SLOTS * TICK = 1 s

Report = Callable[[], bytes]            # this moment's report of one stream; b"" when it has none yet
Send = Callable[[bytes], None]          # protect and send a compound packet on the group's transport


class ReportClock:
    """Groups of report makers, each group's reports sent together once a second."""

    def __init__(self, slots: int = SLOTS, tick: float = TICK) -> None:
        self.tick_seconds = tick
        self._slots: list[dict[Hashable, list[tuple[Report, Send]]]] = [{} for _ in range(slots)]
        self._slot_of: dict[Hashable, int] = {}
        self._next = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._slot_of)

    def add(self, group: Hashable, report: Report, send: Send) -> None:
        """``report`` joins ``group`` (its slot drawn when the group is new); the timer starts
        with the first group."""
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            # Another event loop (tests run one each): what the old one registered died with it.
            self._reset()
        slot = self._slot_of.get(group)
        if slot is None:
            slot = self._slot_of[group] = random.randrange(len(self._slots))
            self._slots[slot][group] = []
        self._slots[slot][group].append((report, send))
        if self._timer is None:
            self._loop = loop
            self._timer = loop.call_later(self.tick_seconds, self._fire)

    def remove(self, group: Hashable, report: Report) -> None:
        """``report`` leaves; an empty group goes, and with the last group the timer stops."""
        slot = self._slot_of.get(group)
        if slot is None:
            return
        members = self._slots[slot][group]
        members[:] = [m for m in members if m[0] != report]      # == : bound methods are made per access
        if not members:
            del self._slots[slot][group]
            del self._slot_of[group]
        if not self._slot_of:
            self._reset()

    def _reset(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop = None
        for slot in self._slots:
            slot.clear()
        self._slot_of.clear()

    def tick(self) -> None:
        """Send the reports of the groups in the next slot (the timer's work, callable alone)."""
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        for members in list(slot.values()):
            try:
                chunks = []
                send = None
                for report, member_send in members:
                    data = report()
                    if data:
                        chunks.append(data)
                        send = send or member_send
                if send is not None:
                    send(b"".join(chunks))
            except Exception:                 # one group's failure must not silence the others
                log.exception("sender report failed")

    def _fire(self) -> None:
        self.tick()
        if self._slot_of and self._loop is not None:
            self._timer = self._loop.call_later(self.tick_seconds, self._fire)
        else:
            self._timer = self._loop = None


CLOCK = ReportClock()
