"""Every ods_* metric family on /metrics is moved by a real action through the app:
HTTP, the gate, a live room (rooms, participants, publications, subscriptions), a chat
post, an abuse cap refusing a socket and a sign-out ending an open socket."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import make_config
from odsmedia.app import make_app
from test_auth import sign_in

pytestmark = pytest.mark.timeout(120)
# The recorder's ods_recorder_* counters are moved by finished recordings (test_replay_routes), the
# relays' ods_relay_* by rooms served across nodes (test_relay).
FAMILIES = {"ods_http_requests", "ods_http_request_duration_seconds", "ods_rooms_live", "ods_participants",
            "ods_publications", "ods_subscriptions", "ods_chat_items", "ods_abuse_refusals",
            "ods_authority_ended", "ods_gate_decisions", "ods_recordings_live",
            # Issue 20's dashboard families: audience, egress, forwarding latency, chat and gate timings.
            "ods_viewers", "ods_egress_bytes", "ods_forward_latency_seconds", "ods_chat_post_seconds",
            "ods_gate_seconds",
            # Issue 18: which node/worker this is (test_workers reads it per worker) and the CPU placement
            # publishes (a level, not a count).
            "ods_node_info", "ods_node_cpu_percent",
            # Issue 15's packet-path counters (NACK counters move in test_sfu_packet_path's loss tests).
            "ods_forward_packets", "ods_forward_bytes", "ods_forward_nacks_answered", "ods_forward_nacks_upstream",
            "ods_forward_gated_drops"}


async def scrape(client) -> dict[str, float]:
    """Family -> the sum of its samples (a histogram by its count)."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(await resp.text()):
        if (not family.name.startswith("ods_") or family.name.startswith(("ods_recorder", "ods_relay"))
                or family.name.endswith("_created")):
            continue
        wanted = family.name + ("_count" if family.type == "histogram" else "_total" if family.type == "counter" else "")
        totals[family.name] = sum(s.value for s in family.samples if s.name == wanted)
    return totals


async def test_every_family_moves_with_a_real_action(aiohttp_client, service_urls, tmp_path, peers, room_factory):
    config = make_config(service_urls, tmp_path / "data", ODS_ABUSE_CHAT_SOCKETS_PER_NETWORK="1",
                         ODS_REDIS_PREFIX=f"{service_urls.prefix}{uuid.uuid4().hex[:8]}:")
    client = await aiohttp_client(make_app(config))
    room = await room_factory()
    before = await scrape(client)
    assert set(before) == FAMILIES

    # A live room: a publisher and a subscribed viewer.
    host = await peers.host(client, room)
    await host.publish(fps=10)
    viewer = await peers.viewer(client, room, decode=False)
    await viewer.subscribe()
    gauges = ("ods_rooms_live", "ods_participants", "ods_publications", "ods_subscriptions", "ods_recordings_live",
              "ods_viewers", "ods_egress_bytes", "ods_forward_latency_seconds", "ods_forward_packets",
              "ods_forward_bytes")
    deadline = asyncio.get_running_loop().time() + 30
    while True:   # the recording starts once media flows: poll the scrape with a deadline
        live = await scrape(client)
        unmoved = [g for g in gauges if live[g] <= before[g]]
        if not unmoved:
            break
        assert asyncio.get_running_loop().time() < deadline, unmoved
        await asyncio.sleep(0.2)

    # A chat post; then a second chat socket from this network is over the cap of 1.
    csrf, _ = await sign_in(client)
    async with client.ws_connect(f"/rooms/{room.slug}/chat") as chat:
        await chat.send_json({"type": "join"})
        assert (await chat.receive_json(timeout=10))["type"] == "welcome"
        await chat.send_json({"type": "post", "kind": "message", "text": "counted", "ref": 1})
        while (reply := await chat.receive_json(timeout=10)).get("ref") != 1:
            pass
        assert reply["type"] == "ack"
        async with client.ws_connect(f"/rooms/{room.slug}/chat") as second:
            await second.send_json({"type": "join"})
            await second.receive(timeout=10)
            closing = await second.receive(timeout=10)
            assert (closing.type.name, closing.data) == ("CLOSE", 4429)
        # Signing out ends what the session admitted: the open chat socket closes with 4401.
        assert (await client.post("/auth/sign-out", headers={"X-CSRF-Token": csrf})).status == 200
        deadline = asyncio.get_running_loop().time() + 15
        while (msg := await chat.receive(timeout=max(0.1, deadline - asyncio.get_running_loop().time()))).type.name \
                == "TEXT":
            pass
        assert (msg.type.name, msg.data) == ("CLOSE", 4401)

    after = await scrape(client)
    assert after["ods_chat_items"] == before["ods_chat_items"] + 1
    for counter in ("ods_http_requests", "ods_http_request_duration_seconds", "ods_chat_items",
                    "ods_abuse_refusals", "ods_authority_ended", "ods_gate_decisions", "ods_chat_post_seconds",
                    "ods_gate_seconds"):
        assert after[counter] > before[counter], counter
