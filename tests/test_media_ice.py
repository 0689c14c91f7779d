"""ICE address policy: host candidates, remote-candidate filter, announced address."""

from __future__ import annotations

import asyncio
import re

import aioice
import pytest
from aiortc import RTCIceCandidate, RTCSessionDescription

from conftest import make_config
from odsmedia.app import make_app
from odsmedia.media import ice
from odsmedia.rooms.sfu import SFU
from testsupport.peers import CounterVideoTrack, peer


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


class OneToOneNat:
    """A 1:1 NAT in front of the server on loopback: a datagram to public:port leaves an
    inside socket for private:port, and what comes back goes to the client that last wrote."""

    def __init__(self, public: str, private: str) -> None:
        self.public, self.private = public, private
        self.inbound = self.outbound = 0
        self._transports: list[asyncio.BaseTransport] = []

    async def expose(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        nat, client = self, [None]

        class Outside(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr) -> None:
                client[0] = addr
                nat.inbound += 1
                inside.sendto(data, (nat.private, port))

        class Inside(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr) -> None:
                if client[0] is not None:
                    nat.outbound += 1
                    outside.sendto(data, client[0])

        inside, _ = await loop.create_datagram_endpoint(Inside, local_addr=(self.private, 0))
        outside, _ = await loop.create_datagram_endpoint(Outside, local_addr=(self.public, port))
        self._transports += [inside, outside]

    def close(self) -> None:
        for transport in self._transports:
            transport.close()


async def test_a_publisher_reaches_the_room_through_the_announced_address(aiohttp_client, service_urls, tmp_path,
                                                                          room_factory, peers):
    """ice.announced_address (a 1:1 NAT's public side) is what a real join's answer offers, and
    the only way in: the client's own candidates are withheld, as a client behind NAT's are useless,
    so the server learns the client's address from the checks that come through the NAT."""
    announced = "127.0.0.5"
    client = await aiohttp_client(make_app(make_config(service_urls, tmp_path, ODS_ICE_ANNOUNCED_ADDRESS=announced)))
    room = await room_factory()
    host = await peers.host(client, room)
    host.video = CounterVideoTrack(15)
    host.pc.addTransceiver(host.video, direction="sendonly")
    await host.pc.setLocalDescription(await host.pc.createOffer())
    # A trickle offer whose candidates never come (a browser's mDNS names the server cannot resolve).
    offer = re.sub(r"a=(candidate:[^\r\n]*|end-of-candidates)\r\n", "", host.pc.localDescription.sdp)
    reply = await host.client.request({"type": "publish", "sdp": offer})
    answer = reply["sdp"]
    candidates = re.findall(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host", answer, re.M)
    assert candidates and {address for address, _ in candidates} == {announced}, answer
    assert set(re.findall(r"^c=IN IP4 (\S+)\r$", answer, re.M)) == {announced}
    [server_transport] = client.server.app[SFU].get(room.slug).participants[
        host.client.joined["participant"]["id"]].transports.values()
    nat = OneToOneNat(announced, "127.0.0.1")
    try:
        for port in {int(port) for _, port in candidates}:
            await nat.expose(port)
        await host.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await asyncio.wait_for(server_transport.connected.wait(), 20)
        [publication] = server_transport.publications
        deadline = asyncio.get_running_loop().time() + 20
        while publication.frames < 5:
            assert asyncio.get_running_loop().time() < deadline, "no frames through the announced address"
            await asyncio.sleep(0.05)
        connection = host.pc.getTransceivers()[0].sender.transport.transport._connection
        [pair] = connection._nominated.values()
        assert pair.remote_addr[0] == announced
        assert nat.inbound > 0 and nat.outbound > 0
    finally:
        await host.pc.close()
        nat.close()
