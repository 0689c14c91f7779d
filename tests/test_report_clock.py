"""The report clock: every registered group's reports once per SLOTS ticks, one
compound packet per group, from one timer that runs only while groups exist.

End to end (real peers, sender reports keeping audio and video in sync through
the packet path, relays taking the publisher's clock pair) is in
test_sfu_packet_path.py and test_relay.py.
"""

from __future__ import annotations

import asyncio

from aiortc.rtp import RtcpPacket, RtcpSdesPacket, RtcpSrPacket, RtcpSourceInfo

from odsmedia.media.reports import SLOTS, ReportClock
from odsmedia.media.sender import sender_report


def sr(ssrc: int) -> bytes:
    return sender_report(ssrc, ntp=ssrc << 32, rtp=ssrc * 10, packets=ssrc, octets=ssrc * 100)


def sdes(ssrc: int) -> bytes:
    return bytes(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=ssrc, items=[(1, b"cname")])]))


async def test_each_group_reports_once_per_round_as_one_compound_packet():
    clock = ReportClock()
    sent: dict[str, list[bytes]] = {"a": [], "b": []}
    # Group "a": a transport's video and audio senders; group "b": one stream.
    members = [("a", lambda: sr(1) + sdes(1)), ("a", lambda: sr(2) + sdes(2)), ("b", lambda: sr(3))]
    for group, report in members:
        clock.add(group, report, sent[group].append)
    for _ in range(SLOTS):
        clock.tick()
    assert [len(v) for v in sent.values()] == [1, 1]
    # aiortc's parser reads both senders' reports (and their CNAMEs) out of the one packet.
    packets = RtcpPacket.parse(sent["a"][0])
    assert [p.ssrc for p in packets if isinstance(p, RtcpSrPacket)] == [1, 2]
    assert sorted(c.ssrc for p in packets if isinstance(p, RtcpSdesPacket) for c in p.chunks) == [1, 2]
    for _ in range(2 * SLOTS):
        clock.tick()
    assert [len(v) for v in sent.values()] == [3, 3]
    for group, report in members:
        clock.remove(group, report)
    assert len(clock) == 0 and clock._timer is None


async def test_a_member_with_nothing_to_report_is_left_out_and_the_group_sends_by_one_that_has():
    clock = ReportClock()
    sent: list[tuple[str, bytes]] = []

    def not_connected() -> bytes:
        return b""

    def video() -> bytes:
        return sr(7)

    clock.add("t", not_connected, lambda data: sent.append(("audio's socket", data)))
    clock.add("t", video, lambda data: sent.append(("video's socket", data)))
    for _ in range(SLOTS):
        clock.tick()
    assert sent == [("video's socket", sr(7))]
    clock.remove("t", video)
    for _ in range(SLOTS):
        clock.tick()
    assert len(sent) == 1          # nothing to report: nothing sent
    clock.remove("t", not_connected)
    assert len(clock) == 0


async def test_one_failing_group_does_not_silence_the_others():
    clock = ReportClock(slots=1)
    sent: list[bytes] = []

    def broken() -> bytes:
        raise RuntimeError("transport gone")

    clock.add("broken", broken, sent.append)
    clock.add("fine", lambda: sr(9), sent.append)
    clock.tick()
    assert sent == [sr(9)]
    clock.remove("broken", broken)


async def test_the_timer_runs_while_groups_exist_and_stops_with_the_last():
    clock = ReportClock(slots=2, tick=0.01)
    got = asyncio.Event()

    def report() -> bytes:
        return sr(5)

    clock.add("g", report, lambda data: got.set())
    assert clock._timer is not None
    await asyncio.wait_for(got.wait(), 5)           # the timer fired the group's slot
    clock.remove("g", report)
    assert clock._timer is None and len(clock) == 0


async def test_bound_methods_leave_by_equality():
    # A relay pipe registers its bound methods; each attribute access makes a new object.
    class Pipe:
        def report(self) -> bytes:
            return sr(4)

        def send(self, data: bytes) -> None:
            pass

    clock = ReportClock()
    pipe = Pipe()
    clock.add(pipe, pipe.report, pipe.send)
    clock.remove(pipe, pipe.report)
    assert len(clock) == 0 and clock._timer is None


def test_a_new_event_loop_drops_what_a_finished_one_registered():
    clock = ReportClock(tick=60)

    async def register(group: str) -> None:
        clock.add(group, lambda: sr(1), lambda data: None)

    asyncio.run(register("old"))        # that loop is closed now, its timer never to fire
    asyncio.run(register("new"))
    assert list(clock._slot_of) == ["new"]
