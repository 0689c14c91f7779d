"""Subscribers' RTCP walked in place (media.feedback.dispatch), against aiortc's own serializer,
and what the installed hook takes (authentic SRTCP) and leaves to aiortc (the rest).

End to end (a real viewer's NACKs and receiver reports handled on arrival, none through
aiortc's receive task) is in test_sfu_packet_path.py.
"""

from __future__ import annotations

from aioice import Connection
from aiortc.rtp import (RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpByePacket, RtcpPsfbPacket, RtcpReceiverInfo,
                        RtcpRrPacket, RtcpRtpfbPacket, RtcpSdesPacket, RtcpSenderInfo, RtcpSourceInfo,
                        RtcpSrPacket, pack_remb_fci)
from pylibsrtp import Policy, Session

from odsmedia.media import aiortc_private as private
from odsmedia.media.feedback import dispatch, install

OURS, OTHER = 0x1111, 0x2222


class Stream:
    def __init__(self) -> None:
        self.fraction_lost = self.jitter = self.cumulative_lost = 0
        self.resent: list[int] = []
        self.keyframes = 0

    def resend(self, seq: int) -> None:
        self.resent.append(seq)

    def keyframe(self) -> None:
        self.keyframes += 1


def block(ssrc: int, lost: int) -> RtcpReceiverInfo:
    return RtcpReceiverInfo(ssrc=ssrc, fraction_lost=12, packets_lost=lost, highest_sequence=5000, jitter=77,
                            lsr=0, dlsr=0)


def run(*packets) -> Stream:
    stream = Stream()
    dispatch(b"".join(bytes(p) for p in packets),
             lambda ssrc: (stream, stream.keyframe) if ssrc == OURS else None)
    return stream


def test_report_blocks_about_our_stream_update_its_figures():
    rr = RtcpRrPacket(ssrc=9, reports=[block(OTHER, 3), block(OURS, -2)])
    sdes = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=9, items=[(1, b"viewer")])])
    s = run(rr, sdes)
    assert (s.fraction_lost, s.jitter, s.cumulative_lost) == (12, 77, -2)     # 24-bit signed, as aiortc reads it
    # In a sender report's blocks too (a viewer that also sends).
    sr = RtcpSrPacket(ssrc=9, sender_info=RtcpSenderInfo(ntp_timestamp=1, rtp_timestamp=2, packet_count=3,
                                                         octet_count=4), reports=[block(OURS, 40)])
    assert run(sr).cumulative_lost == 40


def test_nacks_resend_every_sequence_number_aiortc_would_read():
    lost = [10, 11, 13, 26, 27, 60000, 60016, 60017]     # 60016: the last bit of a bitmask
    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=9, media_ssrc=OURS, lost=lost)
    assert sorted(run(nack).resent) == sorted(lost)
    assert run(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=9, media_ssrc=OTHER, lost=[1])).resent == []


def test_pli_asks_for_a_keyframe_and_remb_is_left_alone():
    pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=9, media_ssrc=OURS)
    remb = RtcpPsfbPacket(fmt=15, ssrc=9, media_ssrc=0, fci=pack_remb_fci(300000, [OURS]))
    s = run(remb, pli, RtcpByePacket(sources=[9]))
    assert s.keyframes == 1 and s.resent == []
    assert run(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=9, media_ssrc=OTHER)).keyframes == 0


def test_a_truncated_compound_stops_where_it_stops_making_sense():
    nack = bytes(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=9, media_ssrc=OURS, lost=[7]))
    pli = bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=9, media_ssrc=OURS))
    stream = Stream()
    dispatch(nack + pli[:-2], lambda ssrc: (stream, stream.keyframe) if ssrc == OURS else None)
    assert stream.resent == [7] and stream.keyframes == 0        # the cut PLI is not acted on
    dispatch(b"\x80", lambda ssrc: None)                          # shorter than a header: nothing


def test_only_authentic_srtcp_is_taken_and_the_rest_goes_on_to_aiortc():
    # A transport's receive side as install() finds it: aioice's connection (its queue is
    # what aiortc reads) and, once DTLS is up, the SRTP session; here a pair of sessions
    # under one key, the viewer's to protect and the server's to unprotect.
    key = bytes(range(30))
    viewer = Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    connection = Connection(ice_controlling=True)

    class Ice:
        _connection = connection

    class Dtls:
        transport = Ice()
        _rx_srtp = None

    dtls = Dtls()
    stream = Stream()
    install(dtls, lambda ssrc: (stream, stream.keyframe) if ssrc == OURS else None)
    pli = bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=9, media_ssrc=OURS))

    def arrive(data: bytes) -> None:
        getattr(connection, private.ICE_DATA_RECEIVED)(data, 1)

    arrive(viewer.protect_rtcp(pli))             # before DTLS is up: aiortc's way (the queue)
    assert connection._queue.qsize() == 1 and stream.keyframes == 0
    dtls._rx_srtp = Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    arrive(viewer.protect_rtcp(pli))             # now taken here
    assert stream.keyframes == 1 and connection._queue.qsize() == 1
    forged = bytearray(viewer.protect_rtcp(pli))
    forged[-1] ^= 1
    arrive(bytes(forged))                        # not authentic: dropped, as aiortc drops it
    arrive(b"\x16\xfe\xfd" + bytes(20))          # a DTLS record: aiortc's way
    arrive(b"")                                  # nothing at all: aiortc's way, no exception here
    assert stream.keyframes == 1 and connection._queue.qsize() == 3
