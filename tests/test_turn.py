"""TURN: per-participant coturn REST credentials, handed to pages and WHIP/WHEP
clients, accepted by a real coturn until they expire; Chromium publishing
and playing through it with iceTransportPolicy "relay"."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time

import aioice.stun
import aioice.turn
import pytest

from conftest import make_config
from odsmedia.app import make_app
from odsmedia.media.coturn import CoturnConfig, LocalCoturn, binary
from odsmedia.media.turn import rest_credential
from odsmedia.rooms.sfu import SFU
from testsupport.peers import SignalingClient
from testsupport.ports import free_port

SECRET = "turn-test-secret-0123456789"
# Ports of this run's coturn (parallel runs on one machine must not meet: a client of one
# reaching the other's coturn fails its TLS handshake on the other's certificate).
TURN_PORT = free_port(udp=True)
TLS_PORT = free_port(udp=True)
_RELAY = free_port(udp=True, tcp=False)      # a kernel-chosen start (below 61000): the range is ours alone
RELAY_PORTS = (_RELAY, _RELAY + 50)


def _self_signed(directory) -> tuple[str, str]:
    """A throwaway certificate for 127.0.0.1 (the test's TLS client trusts exactly it)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def coturn(tmp_path_factory):
    """coturn on 127.0.0.1 (UDP, TCP, TLS) with the test secret; loopback peers allowed in this config only."""
    if binary() is None:
        pytest.fail("turnserver is missing; scripts/test installs it (apt-get install coturn)")
    workdir = tmp_path_factory.mktemp("coturn")
    cert, pkey = _self_signed(workdir)
    server = LocalCoturn(CoturnConfig(secret=SECRET, port=TURN_PORT, min_port=RELAY_PORTS[0], max_port=RELAY_PORTS[1],
                                      allow_loopback_peers=True, realm="odsmedia.test",
                                      tls_port=TLS_PORT, cert=cert, pkey=pkey),
                         workdir)
    server.start()
    yield server
    server.stop()


def test_rest_credential_is_coturns_scheme():
    cred = rest_credential("k", "PAabc", 600, now=1_000_000)
    assert cred.username == "1000600:PAabc" and cred.expires_at == 1000600
    expected = base64.b64encode(hmac.new(b"k", b"1000600:PAabc", hashlib.sha1).digest()).decode()
    assert cred.password == expected


async def _allocate(username: str, password: str, transport: str = "udp", tls=None):
    return await aioice.turn.create_turn_endpoint(
        asyncio.DatagramProtocol, server_addr=("127.0.0.1", TLS_PORT if tls else TURN_PORT), username=username,
        password=password, transport=transport, ssl=tls)


@pytest.mark.timeout(30)
async def test_coturn_relays_over_tls_with_the_same_credentials(coturn):
    import ssl

    context = ssl.create_default_context(cafile=coturn.config.cert)
    fresh = rest_credential(SECRET, "PAtls", 60)
    relay, _ = await _allocate(fresh.username, fresh.password, "tcp", tls=context)
    try:
        host, port = relay.get_extra_info("sockname")
        assert host == "127.0.0.1" and RELAY_PORTS[0] <= port <= RELAY_PORTS[1]
    finally:
        relay.close()
    expired = rest_credential(SECRET, "PAtlsold", -5)
    with pytest.raises(aioice.stun.TransactionFailed) as failed:
        await _allocate(expired.username, expired.password, "tcp", tls=context)
    assert failed.value.response.attributes["ERROR-CODE"][0] == 401


@pytest.mark.timeout(30)
async def test_coturn_accepts_fresh_credentials_and_refuses_expired_ones(coturn):
    for transport in ("udp", "tcp"):
        fresh = rest_credential(SECRET, "PAfresh", 60)
        relay, _ = await _allocate(fresh.username, fresh.password, transport)
        try:
            host, port = relay.get_extra_info("sockname")
            assert host == "127.0.0.1" and RELAY_PORTS[0] <= port <= RELAY_PORTS[1]
        finally:
            relay.close()
    expired = rest_credential(SECRET, "PAold", -5)
    with pytest.raises(aioice.stun.TransactionFailed) as failed:
        await _allocate(expired.username, expired.password)
    assert failed.value.response.attributes["ERROR-CODE"][0] == 401
    forged = rest_credential("another-secret", "PAforged", 60)
    with pytest.raises(aioice.stun.TransactionFailed) as failed:
        await _allocate(forged.username, forged.password)
    assert failed.value.response.attributes["ERROR-CODE"][0] == 401


def _turn_config(service_urls, tmp_path, transports=("udp", "tcp"), **extra):
    urls = ",".join(f"turn:127.0.0.1:{TURN_PORT}?transport={t}" for t in transports)
    return make_config(service_urls, tmp_path / "d", ODS_ICE_TURN_URLS=urls,
                       ODS_ICE_TURN_SECRET=SECRET, ODS_ICE_TURN_TTL="10m", **extra)


async def test_each_participant_gets_its_own_credential(aiohttp_client, service_urls, tmp_path, room_factory,
                                                        token_factory):
    c = await aiohttp_client(make_app(_turn_config(service_urls, tmp_path)))
    room = await room_factory()
    # Before joining a page gets no minted credential (nothing to bind it to).
    assert (await (await c.get(f"/api/rooms/{room.slug}")).json())["ice_servers"] == []
    signaling = SignalingClient(str(c.make_url("")), room.slug)
    await signaling.connect()
    try:
        joined = await signaling.join()
        [server] = joined["ice_servers"]
        me = joined["participant"]["id"]
        expiry, subject = server["username"].split(":", 1)
        assert subject == me and abs(int(expiry) - (time.time() + 600)) < 5
        assert server["credential"] == rest_credential(SECRET, me, 0, now=int(expiry)).password
        assert server["urls"] == [f"turn:127.0.0.1:{TURN_PORT}?transport=udp",
                                  f"turn:127.0.0.1:{TURN_PORT}?transport=tcp"]
        assert joined["ice_transport_policy"] == "all"
    finally:
        await signaling.close()


async def test_whip_links_carry_the_sessions_credential(aiohttp_client, service_urls, tmp_path, room_factory,
                                                        token_factory, coturn):
    from aiortc import RTCPeerConnection

    from odsmedia.media.ice import rtc_configuration
    from testsupport.peers import CounterVideoTrack

    c = await aiohttp_client(make_app(_turn_config(service_urls, tmp_path)))
    room = await room_factory()
    token = await token_factory(room, "host")
    pc = RTCPeerConnection(rtc_configuration())
    try:
        pc.addTrack(CounterVideoTrack(fps=10))
        await pc.setLocalDescription(await pc.createOffer())
        resp = await c.post(f"/rooms/{room.slug}/whip", data=pc.localDescription.sdp,
                            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"})
        assert resp.status == 201, await resp.text()
        links = resp.headers.getall("Link")
        assert len(links) == 2
        pattern = re.compile(r'^<(turn:[^>]+)>; rel="ice-server"; username="(\d+):(PA[0-9a-f]+)"; '
                             r'credential="([^"]+)"; credential-type="password"$')
        parsed = [pattern.match(link) for link in links]
        assert all(parsed), links
        session = resp.headers["Location"].rsplit("/", 1)[1]
        live = c.server.app[SFU].get(room.slug)
        [participant] = [p for p in live.participants.values() if p.via == "whip"]
        assert {m.group(3) for m in parsed} == {participant.id}
        assert session  # the Location names the transport
        # The credential from the Link header allocates a relay on coturn.
        relay, _ = await _allocate(f"{parsed[0].group(2)}:{parsed[0].group(3)}", parsed[0].group(4))
        relay.close()
    finally:
        await pc.close()


@pytest.mark.browser
@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_chromium_publishes_and_plays_through_coturn_only(aiohttp_client, service_urls, tmp_path,
                                                                room_factory, token_factory, browser, coturn,
                                                                transport):
    """Pages that may only use the relay (iceTransportPolicy "relay"), over TURN/UDP and
    over TURN/TCP (what a client behind a UDP-blocking firewall has)."""
    c = await aiohttp_client(make_app(_turn_config(service_urls, tmp_path, (transport,), ODS_ICE_FORCE_RELAY="true")))
    room = await room_factory(title="Relay room")
    token = await token_factory(room, "host")
    errors: list[str] = []
    host_ctx, viewer_ctx = await browser.new_context(), await browser.new_context()
    relay_pair = """async (pc) => {
        const stats = await pc.getStats(); let pair = null;
        stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
        if (!pair) return null;
        const local = stats.get(pair.localCandidateId);
        return {type: local.candidateType, relayProtocol: local.relayProtocol || null};
    }"""
    try:
        host = await host_ctx.new_page()
        host.on("pageerror", lambda exc: errors.append(f"host: {exc}"))
        await host.goto(str(c.make_url(f"/rooms/{room.slug}/host?token={token}")))
        await host.wait_for_selector("body[data-ready='1']", timeout=10000)
        await host.click("#golive")
        await host.wait_for_selector("body[data-connection='connected']", timeout=30000)
        relayed = {"type": "relay", "relayProtocol": transport}
        assert await host.evaluate(f"({relay_pair})(window.odsHost.pc)") == relayed

        viewer = await viewer_ctx.new_page()
        viewer.on("pageerror", lambda exc: errors.append(f"viewer: {exc}"))
        await viewer.goto(str(c.make_url(f"/rooms/{room.slug}?name=Relayed")))
        await viewer.wait_for_selector("body[data-ready='1']", timeout=10000)
        decoded, deadline = 0, time.monotonic() + 30
        while decoded == 0 and time.monotonic() < deadline:
            decoded = await viewer.evaluate("window.odsViewer.framesDecoded()")
            await asyncio.sleep(0.25)
        assert decoded > 0, "the viewer page decoded no video frames through the relay"
        pairs = await viewer.evaluate(
            f"Promise.all([...window.odsViewer.transports.values()].map(({{pc}}) => ({relay_pair})(pc)))")
        assert pairs and all(p == relayed for p in pairs), pairs
        assert not errors, errors
    finally:
        await host_ctx.close()
        await viewer_ctx.close()


@pytest.mark.timeout(120)
def test_dev_starts_a_local_coturn_when_asked(service_urls, tmp_path):
    import json
    import signal
    import socket
    import urllib.request

    from conftest import odsmedia_env
    from test_cli import _start

    port = free_port(udp=True)
    env = odsmedia_env(service_urls, tmp_path / "d", ODS_HTTP_PORT="0", ODS_ICE_DEV_COTURN_PORT=str(port))
    proc, base = _start(env, "dev")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # coturn listens
        secret = json.loads((tmp_path / "d" / "coturn.json").read_text())["secret"]
        assert len(secret) >= 32
        conf = (tmp_path / "d" / "services" / "coturn" / "turnserver.conf").read_text()
        assert f"static-auth-secret={secret}" in conf and "use-auth-secret" in conf
        with urllib.request.urlopen(base + "/readyz", timeout=5) as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    # coturn went with it.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
