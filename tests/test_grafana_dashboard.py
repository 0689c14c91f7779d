"""The shipped Grafana dashboard names only metrics that /metrics serves, and the live gauges are real."""

from __future__ import annotations

import json
import re

import orjson

from conftest import REPO
from test_chat_support import ChatSocket

DASHBOARD = REPO / "config" / "grafana" / "odsmedia.json"
# Metric names inside PromQL: ods_* and process_* (label names and functions are not).
METRIC = re.compile(r"\b((?:ods|process)_[a-z0-9_]+)\b")
SUFFIXES = {"_bucket": "histogram", "_sum": "histogram", "_count": "histogram", "_total": "counter"}


def exposition(text: str) -> tuple[dict[str, str], set[str]]:
    """(family name -> type, sample names) of a Prometheus text exposition."""
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    samples = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and line[0] != "#"}
    return families, samples


def served(name: str, families: dict[str, str], samples: set[str]) -> bool:
    # A labelled family with no child yet has only its HELP/TYPE lines (counters may be typed
    # under their _total name).
    if name in samples or name in families:
        return True
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix) and families.get(name[: -len(suffix)]) == kind:
            return True
    return False


def dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    for variable in dashboard["templating"]["list"]:
        if isinstance(variable.get("query"), dict):
            exprs.append(variable["query"]["query"])
    return {m for e in exprs for m in METRIC.findall(e)}


def test_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
    # The areas operations.md promises a dashboard for.
    names = dashboard_metrics()
    for wanted in ("ods_rooms_live", "ods_viewers", "ods_egress_bytes_total", "ods_forward_latency_seconds_bucket",
                   "ods_chat_post_seconds_bucket", "ods_recorder_listing_seconds_bucket", "ods_gate_seconds_bucket"):
        assert wanted in names, wanted


async def test_every_metric_the_dashboard_names_is_on_metrics(client):
    resp = await client.get("/metrics")
    assert resp.status == 200
    families, samples = exposition(await resp.text())
    missing = sorted(m for m in dashboard_metrics() if not served(m, families, samples))
    assert missing == []


def _value(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, name
    return float(match.group(1))


async def test_live_gauges_gate_and_chat_timings_count_what_happens(client, room_factory, token_factory):
    before = await (await client.get("/metrics")).text()
    room = await room_factory()
    sockets = []
    for role in ("host", "viewer", "viewer"):
        ws = await client.ws_connect(f"/rooms/{room.slug}/ws")
        await ws.send_str(orjson.dumps({"type": "join", "token": await token_factory(room, role)}).decode())
        while orjson.loads((await ws.receive(timeout=5)).data)["type"] != "joined":
            pass
        sockets.append(ws)
    chat = await ChatSocket.open(client, f"/rooms/{room.slug}/chat", token=await token_factory(room, "viewer"))
    await chat.post("hello")
    after = await (await client.get("/metrics")).text()
    assert _value(after, "ods_rooms_live") - _value(before, "ods_rooms_live") == 1
    assert _value(after, "ods_participants") - _value(before, "ods_participants") == 3
    assert _value(after, "ods_viewers") - _value(before, "ods_viewers") == 2
    assert _value(after, 'ods_chat_items_total{kind="message"}') >= 1
    assert _value(after, "ods_chat_post_seconds_count") >= 1
    assert _value(after, 'ods_gate_seconds_count{entry="join"}') >= 3
    for ws in sockets:
        await ws.close()
    await chat.close()


async def test_egress_bytes_and_forwarding_latency_follow_real_forwarding(client, peers, room_factory):
    from prometheus_client import REGISTRY

    from odsmedia import metrics
    from test_sfu_forwarding import wait_for

    def forward_count() -> float:
        return REGISTRY.get_sample_value("ods_forward_latency_seconds_count") or 0.0

    room = await room_factory()
    publisher = await peers.host(client, room)
    await publisher.publish(fps=15)
    viewer = await peers.viewer(client, room, name="viewer")
    egress_before, count_before = metrics.egress_bytes.value, forward_count()
    await viewer.subscribe()
    await wait_for(lambda: viewer.video() and len(viewer.video().counters) >= 32, 40, "32 video frames")
    received = viewer.video().counters
    # At least the frames the viewer got went out, and one packet (or frame) in 16 was timed.
    assert metrics.egress_bytes.value - egress_before > len(received) * 100
    assert forward_count() - count_before >= len(received) // (metrics.FORWARD_SAMPLE_MASK + 1) // 2
    text = (await (await client.get("/metrics")).text())
    assert "ods_egress_bytes_total " in text and "ods_forward_latency_seconds_bucket" in text
