"""Prometheus metrics.

Module-level collectors on the default registry (which also carries the
process and platform collectors), so every app in a process shares them.
"""

from __future__ import annotations

import weakref
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

http_requests = Counter(
    "ods_http_requests_total", "HTTP requests served", ["method", "route", "status"]
)
http_latency = Histogram(
    "ods_http_request_duration_seconds",
    "HTTP request handling time",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
rooms_live = Gauge("ods_rooms_live", "Rooms with at least one participant on this node")
participants = Gauge("ods_participants", "Connected participants on this node")
publications = Gauge("ods_publications", "Live publications on this node")
subscriptions = Gauge("ods_subscriptions", "Active subscriptions on this node")
chat_items = Counter("ods_chat_items_total", "Chat items accepted", ["kind"])
abuse_refusals = Counter("ods_abuse_refusals_total",
                         "Entries and chat posts refused by a per-network or per-room abuse limit", ["limit"])
authority_ended = Counter("ods_authority_ended_total",
                          "Open sockets and WHIP/WHEP sessions ended because what admitted them ended", ["reason"])
gate_decisions = Counter("ods_gate_decisions_total", "Entry gate decisions", ["entry", "outcome"])


class Census(Protocol):
    """What the live-media gauges count, read at scrape time (the SFU's rooms)."""

    def census(self) -> dict[str, int]: ...


# The SFUs alive in this process (one per app); the gauges sum them when scraped, so a
# count can never drift from the rooms it describes.
_censuses: "weakref.WeakSet[Census]" = weakref.WeakSet()


def count_live(source: Census) -> None:
    _censuses.add(source)


def _summed(name: str):
    return lambda: float(sum(source.census()[name] for source in list(_censuses)))


for _gauge, _name in ((rooms_live, "rooms"), (participants, "participants"), (publications, "publications"),
                      (subscriptions, "subscriptions")):
    _gauge.set_function(_summed(_name))


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
