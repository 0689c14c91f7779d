"""One UDP port per node (media.udp_port): a hundred server peer connections
on one socket, demultiplexed by STUN USERNAME then remote address."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from conftest import make_config
from odsmedia.app import make_app
from odsmedia.media import udpmux
from odsmedia.rooms.sfu import SFU
from testsupport.ports import free_port

UDP_PORT = free_port(udp=True, tcp=False)   # one per run: parallel runs must not share it


def test_the_mux_names_its_aioice_privates_in_aiortc_private():
    from odsmedia.media import aiortc_private as private

    # Each is checked by tests/test_aiortc_private.py; here: the ones the mux and the
    # consent timing use are among them.
    assert {"get_component_candidates", "local_username"} <= set(private.ICE_CONNECTION_ATTRS)
    assert private.ICE_CONNECTION_PROTOCOLS == "_protocols"
    assert {"CONSENT_INTERVAL", "CONSENT_FAILURES", "candidate_foundation", "candidate_priority",
            "StunProtocol"} <= set(private.ICE_MODULE_ATTRS)
    assert private.missing_module_level() == []
    assert udpmux._original_get_component_candidates.__qualname__ == "Connection.get_component_candidates"


def _udp_ports_of_this_process() -> list[int]:
    """Local ports of this process's UDP sockets, from the socket table (/proc/net/udp{,6})."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                if fields[9] in inodes:
                    ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.timeout(300)
async def test_a_hundred_peer_connections_use_the_one_configured_port(aiohttp_client, service_urls, tmp_path,
                                                                      room_factory, peers):
    config = make_config(service_urls, tmp_path / "d", ODS_MEDIA_UDP_PORT=str(UDP_PORT),
                         ODS_ABUSE_SIGNALING_PER_NETWORK="0")
    c = await aiohttp_client(make_app(config))
    assert _udp_ports_of_this_process().count(UDP_PORT) == 1
    room = await room_factory()
    publisher = await peers.host(c, room)
    await publisher.publish(fps=5, audio=False)
    viewers = [await peers.viewer(c, room, decode=(i == 0)) for i in range(9)]
    # 1 publisher + 9 viewers x 11 subscriptions = 100 server peer connections.
    for _ in range(11):
        await asyncio.gather(*(v.subscribe() for v in viewers))
    live = c.server.app[SFU].get(room.slug)
    transports = [t for p in live.participants.values() for t in p.transports.values()]
    assert len(transports) == 100
    await asyncio.wait_for(asyncio.gather(*(t.connected.wait() for t in transports)), 90)

    # Every server connection's nominated pair is on the one port.
    for t in transports:
        connection = t.pc.getTransceivers()[0].sender.transport.transport._connection
        assert {pair.local_candidate.port for pair in connection._nominated.values()} == {UDP_PORT}
        assert f"127.0.0.1 {UDP_PORT} typ host" in t.local_sdp()
    # The socket table: the server holds one UDP socket (the port); the other
    # UDP sockets of this process are the 100 aiortc clients' own.
    ports = _udp_ports_of_this_process()
    assert ports.count(UDP_PORT) == 1
    client_pcs = [publisher.pc] + [pc for v in viewers for pc in v.pcs]
    assert len(client_pcs) == 100
    assert len(ports) == 1 + len(client_pcs), sorted(ports)
    # Media flows through it: the decoding viewer gets counter frames.
    received = viewers[0].video()
    assert received is not None
    await asyncio.wait_for(received.first_frame.wait(), 20)
    deadline = time.monotonic() + 10
    while received.frames < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert received.frames >= 3
    mux = udpmux.active().muxes["127.0.0.1"]
    assert len(mux.by_ufrag) == 100

    # Closing connections detaches them; the port stays.  (A close notice lost on a
    # loaded machine is caught by consent freshness, 30 s.)
    for v in viewers:
        await v.close()
    deadline = time.monotonic() + 40
    while len(mux.by_ufrag) > 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert len(mux.by_ufrag) == 1
    assert _udp_ports_of_this_process().count(UDP_PORT) == 1


async def test_without_the_setting_each_connection_has_its_own_port(client, room_factory, peers):
    room = await room_factory()
    publisher = await peers.host(client, room)
    await publisher.publish(fps=5, audio=False)
    live = client.server.app[SFU].get(room.slug)
    [transport] = [t for p in live.participants.values() for t in p.transports.values()]
    await asyncio.wait_for(transport.connected.wait(), 20)
    assert udpmux.active() is None
    connection = transport.pc.getTransceivers()[0].sender.transport.transport._connection
    [port] = {pair.local_candidate.port for pair in connection._nominated.values()}
    assert port != UDP_PORT and port in _udp_ports_of_this_process()


class _Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple[str, int]]] = []

    def datagram_received(self, data, addr) -> None:
        self.got.append((data, addr))


def test_demultiplexing_is_by_username_then_by_address():
    import aioice.stun

    mux = udpmux.UdpMux()
    a, b = _Recorder(), _Recorder()
    mux.by_ufrag.update({"ufA1": a, "ufB1": b})

    def check(username: str) -> bytes:
        message = aioice.stun.Message(message_method=aioice.stun.Method.BINDING,
                                      message_class=aioice.stun.Class.REQUEST)
        message.attributes["USERNAME"] = username
        return bytes(message)

    dtls = bytes([22, 254, 253]) + b"\0" * 10     # a DTLS record
    srtp = bytes([0x80, 96]) + b"\0" * 10          # an RTP header
    mux.datagram_received(dtls, ("127.0.0.1", 5000))
    assert mux.dropped == 1 and not a.got and not b.got   # unknown address, not STUN: nobody's
    mux.datagram_received(check("ufA1:remote"), ("127.0.0.1", 5000))
    mux.datagram_received(check("ufB1:remote"), ("127.0.0.1", 6000))
    mux.datagram_received(dtls, ("127.0.0.1", 5000))
    mux.datagram_received(srtp, ("127.0.0.1", 6000))
    assert [addr[1] for _, addr in a.got] == [5000, 5000] and a.got[1][0] == dtls
    assert [addr[1] for _, addr in b.got] == [6000, 6000] and b.got[1][0] == srtp
    # A check naming B from A's address reaches B (USERNAME first); the address stays A's.
    mux.datagram_received(check("ufB1:other"), ("127.0.0.1", 5000))
    assert len(b.got) == 3 and mux.by_address[("127.0.0.1", 5000)] is a
    # A check for an unknown ufrag from an unknown address is dropped.
    mux.datagram_received(check("nobody:x"), ("127.0.0.1", 7000))
    assert mux.dropped == 2
    # Detaching forgets both the ufrag and the addresses.
    mux.detach(a)
    mux.datagram_received(dtls, ("127.0.0.1", 5000))
    assert len(a.got) == 2 and mux.dropped == 3 and "ufA1" not in mux.by_ufrag
