"""Every aiortc/aioice private named in odsmedia.media.aiortc_private exists (aiortc 1.16.*).

Checked on a connected loopback pair, so the attributes that only exist
once ICE and DTLS are up (SRTP session, nominated pair) are checked too.
"""

from __future__ import annotations

import asyncio
import time

import aiortc
import pytest

from odsmedia.media import aiortc_private as private
from testsupport.peers import CounterVideoTrack, peer

pytestmark = pytest.mark.timeout(60)


def test_aiortc_series_is_pinned():
    assert aiortc.__version__.startswith("1.16.")


def test_module_level_privates_exist():
    from aiortc.jitterbuffer import JitterBuffer

    assert private.missing_module_level() == []
    # What EagerJitterBuffer reads on an instance.
    assert private.missing(JitterBuffer(128, is_video=True), private.JITTER_BUFFER_INSTANCE) == []


async def test_object_privates_exist_on_a_connected_pair():
    sender_pc, receiver_pc = peer(), peer()
    sender_pc.addTransceiver(CounterVideoTrack(fps=15), direction="sendonly")
    try:
        await sender_pc.setLocalDescription(await sender_pc.createOffer())
        await receiver_pc.setRemoteDescription(sender_pc.localDescription)
        await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
        await sender_pc.setRemoteDescription(receiver_pc.localDescription)
        deadline = time.monotonic() + 15
        while sender_pc.connectionState != "connected" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert sender_pc.connectionState == "connected"
        sender = sender_pc.getTransceivers()[0].sender
        receiver = receiver_pc.getTransceivers()[0].receiver
        assert private.missing(receiver, private.RECEIVER_ATTRS) == []
        assert private.missing(sender, private.SENDER_ATTRS) == []
        dtls = sender.transport
        assert private.missing(dtls, private.DTLS_ATTRS) == []
        assert getattr(dtls, private.DTLS_TX_SRTP) is not None            # set once DTLS is up
        connection = getattr(dtls.transport, private.ICE_CONNECTION)
        pair = getattr(connection, private.ICE_NOMINATED).get(1)
        assert pair is not None and pair.remote_addr[0] == "127.0.0.1"
        assert hasattr(pair.protocol, "transport") and callable(pair.protocol.transport.sendto)
        assert isinstance(getattr(receiver, private.RECEIVER_CODECS), dict)
        assert isinstance(getattr(receiver, private.RECEIVER_RTX_SSRC), dict)
        assert getattr(sender, private.SENDER_MID) == "0"
        with pytest.raises(RuntimeError, match="no_such_attribute"):
            private.require(sender, ("no_such_attribute",), "RTCRtpSender")
    finally:
        await sender_pc.close()
        await receiver_pc.close()
