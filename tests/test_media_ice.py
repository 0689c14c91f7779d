"""ICE address policy: host candidates, remote-candidate filter, announced address."""

from __future__ import annotations

import aioice
import pytest
from aiortc import RTCIceCandidate

from odsmedia.media import ice
from testsupport.peers import peer


@pytest.fixture(autouse=True)
def loopback_policy():
    yield
    ice.configure(["127.0.0.1"])      # what every other test in this process expects


async def test_only_configured_host_addresses_are_offered():
    ice.configure(["127.0.0.1"])
    pc = peer()
    try:
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        lines = [l for l in pc.localDescription.sdp.splitlines() if l.startswith("a=candidate:")]
        assert lines and all(" 127.0.0.1 " in l for l in lines)
    finally:
        await pc.close()


async def test_remote_candidates_outside_allowed_networks_are_dropped():
    policy = ice.configure(["127.0.0.1"])
    assert policy.allows("127.0.0.5") and not policy.allows("10.0.0.7") and not policy.allows("not-an-ip")
    conn = aioice.Connection(ice_controlling=True)
    try:
        for host in ("10.0.0.7", "192.0.2.1", "127.0.0.1"):
            await conn.add_remote_candidate(aioice.Candidate(
                foundation="f" + host, component=1, transport="udp", priority=1, host=host, port=5000, type="host"))
        assert [c.host for c in conn.remote_candidates] == ["127.0.0.1"]
    finally:
        await conn.close()


def test_allowed_networks_default_and_explicit():
    assert ice.policy_for(["10.1.2.3"]).allows("198.51.100.1")                  # not loopback: any
    explicit = ice.policy_for(["10.1.2.3"], ["10.0.0.0/8"])
    assert explicit.allows("10.9.9.9") and not explicit.allows("198.51.100.1")


def test_announced_address_rewrites_host_candidates():
    sdp = ("v=0\r\nc=IN IP4 10.1.2.3\r\n"
           "a=candidate:abc 1 udp 2130706431 10.1.2.3 5000 typ host\r\n"
           "a=candidate:def 1 udp 1694498815 198.51.100.9 5001 typ srflx raddr 10.1.2.3 rport 5000\r\n")
    out = ice.announce(sdp, "203.0.113.9")
    assert "a=candidate:abc 1 udp 2130706431 203.0.113.9 5000 typ host\r\n" in out
    assert "c=IN IP4 203.0.113.9\r\n" in out
    assert "198.51.100.9 5001 typ srflx" in out                                  # only host candidates
    assert ice.announce(sdp, "") == sdp


async def test_trickled_candidate_outside_networks_is_ignored():
    ice.configure(["127.0.0.1"])
    a = peer()
    try:
        a.addTransceiver("audio")
        await a.setLocalDescription(await a.createOffer())
        b = peer()
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        transport = b.getTransceivers()[0].receiver.transport.transport
        await b.addIceCandidate(RTCIceCandidate(component=1, foundation="x", ip="192.0.2.44", port=9, priority=1,
                                                protocol="udp", type="host", sdpMid="0"))
        assert all(c.ip != "192.0.2.44" for c in transport.getRemoteCandidates())
        await b.close()
    finally:
        await a.close()
