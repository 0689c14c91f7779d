"""Prometheus metrics.

Module-level collectors on the default registry (which also carries the
process and platform collectors), so every app in a process shares them.
What the live rooms hold is read when Prometheus scrapes (``LiveCollector``),
so the media path pays nothing for it; the hot path only adds to a plain
integer (egress bytes) or observes one frame in 16 (forward latency).
``config/grafana/odsmedia.json`` is a dashboard of these.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import node

http_requests = Counter(
    "ods_http_requests_total", "HTTP requests served", ["method", "route", "status"]
)
http_latency = Histogram(
    "ods_http_request_duration_seconds",
    "HTTP request handling time",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
chat_items = Counter("ods_chat_items_total", "Chat items accepted", ["kind"])
abuse_refusals = Counter("ods_abuse_refusals_total",
                         "Entries and chat posts refused by a per-network or per-room abuse limit", ["limit"])
authority_ended = Counter("ods_authority_ended_total",
                          "Open sockets and WHIP/WHEP sessions ended because what admitted them ended", ["reason"])
chat_post = Histogram(
    "ods_chat_post_seconds",
    "Posting a chat item: checked, stored, handed to this node's clients and published to the other nodes",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
gate_decisions = Counter("ods_gate_decisions_total", "Entry gate decisions", ["entry", "outcome"])
gate_latency = Histogram(
    "ods_gate_seconds", "Time an entry gate decision takes (identity, role, entitlement)", ["entry"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
forward_latency = Histogram(
    "ods_forward_latency_seconds",
    "Time in the server from a publisher's packet (or frame) arriving to its copy leaving for a viewer "
    "(1 in 16 sampled per viewer)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)
FORWARD_SAMPLE_MASK = 15   # observe when forwarded & mask == 0


class Tally:
    """A counter the hot path bumps with one integer add (no lock); scraped as a counter."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


egress_bytes = Tally()
# Figures of pipes already closed (media.pipe adds them), so the pipe counters never go down.
PIPE_FIGURES = ("packets", "bytes", "lost", "nacks")
retired_pipes: dict[str, dict[str, int]] = {d: dict.fromkeys(PIPE_FIGURES, 0) for d in ("out", "in")}
# The packet forward path (media.forwarder).  Bumped once per incoming packet by the
# number of copies (the compiled loop) or once per copy (the Python loop); read at scrape.
forward_packets = Tally()          # RTP copies handed to subscribers' sockets
forward_bytes = Tally()            # their bytes on the wire (SRTP included)
forward_nacks_answered = Tally()   # subscriber NACKs answered from the publication's history
forward_nacks_upstream = Tally()   # lost sequence numbers asked of the publisher (coalesced)
forward_gated_drops = Tally()      # copies not sent: the subscriber waits for a keyframe
FORWARD_COUNTERS = (
    ("ods_forward_packets", "RTP packets the packet path handed to subscribers' sockets", forward_packets),
    ("ods_forward_bytes", "Bytes (SRTP included) the packet path handed to subscribers' sockets", forward_bytes),
    ("ods_forward_nacks_answered", "Subscriber NACKs answered from a publication's packet history",
     forward_nacks_answered),
    ("ods_forward_nacks_upstream", "Lost sequence numbers passed upstream to the publisher (coalesced NACKs)",
     forward_nacks_upstream),
    ("ods_forward_gated_drops", "Packets not forwarded to a subscriber waiting for a keyframe (join, unmute, "
                                "publisher restart)", forward_gated_drops),
)


class LiveCollector:
    """Rooms, participants, viewers, publications, subscriptions of this process's SFUs, read at scrape time."""

    def __init__(self) -> None:
        # The rooms feature's Sfu objects (duck-typed: the core imports no feature).
        self.sfus: "weakref.WeakSet[Any]" = weakref.WeakSet()

    def collect(self) -> Iterator:
        rooms = participants = viewers = publications = subscriptions = 0
        cpu = 0.0
        for sfu in list(self.sfus):
            placement = getattr(sfu, "placement", None)
            if placement is not None:
                cpu = max(cpu, placement.cpu.percent)
            for room in list(sfu.rooms.values()):
                rooms += 1
                publications += len(room.publications)
                for participant in list(room.participants.values()):
                    participants += 1
                    viewers += participant.role != "host"
                    subscriptions += sum(len(getattr(t, "subscriptions", ())) for t in participant.transports.values())
        for name, text, value in (
            ("ods_rooms_live", "Rooms with at least one participant on this node", rooms),
            ("ods_participants", "Connected participants on this node", participants),
            ("ods_viewers", "Connected participants other than hosts on this node (live WebRTC audience)", viewers),
            ("ods_publications", "Live publications on this node", publications),
            ("ods_subscriptions", "Active subscriptions on this node", subscriptions),
            ("ods_node_cpu_percent", "This process's CPU time per wall second at the last placement refresh "
                                     "(percent of one core; what placement publishes)", cpu),
        ):
            yield GaugeMetricFamily(name, text, value=value)
        # Which node and worker this scrape is: each worker of `serve --workers` is scraped on its own port.
        info = GaugeMetricFamily("ods_node_info", "This node: its id and worker index (empty: a single process)",
                                 labels=["node", "worker"])
        info.add_metric([node.issued, "" if node.worker_index is None else str(node.worker_index)], 1)
        yield info
        yield from self._relay_figures()
        yield CounterMetricFamily("ods_egress_bytes", "Media bytes sent to subscribers (RTP payload and headers)",
                                  value=egress_bytes.value)
        for name, text, tally in FORWARD_COUNTERS:
            yield CounterMetricFamily(name, text, value=tally.value)


    def _relay_figures(self) -> Iterator:
        """Pipes (rooms.relay, media.pipe): per direction, live pipes plus those already closed."""
        rebuilds = 0
        totals = {d: dict(figures) for d, figures in retired_pipes.items()}
        pipes = {"out": 0, "in": 0}
        for sfu in list(self.sfus):
            hub = getattr(sfu, "relays", None)
            if hub is None:
                continue
            rebuilds += hub.rebuilds
            for direction, ends in zip(("out", "in"), hub.pipes()):
                for end in ends:
                    pipes[direction] += 1
                    for name in totals[direction]:
                        totals[direction][name] += getattr(end.stats, name)
        relayed = pipes["in"]
        yield GaugeMetricFamily("ods_relayed_publications",
                                "Publications this node serves as a relay, each fed by one pipe", value=relayed)
        gauge = GaugeMetricFamily("ods_relay_pipes", "Open pipes: out = fed by this node, in = feeding it",
                                  labels=["direction"])
        for name, help_text in (("packets", "RTP packets on pipes (sent out, received in)"),
                                ("bytes", "RTP bytes on pipes (sent out, received in)"),
                                ("lost", "RTP packets a pipe's receiving end never got (in only)"),
                                ("nacks", "Sequence numbers NACKed up pipes (in: asked, out: answered)")):
            family = CounterMetricFamily(f"ods_relay_pipe_{name}", help_text, labels=["direction"])
            for direction in ("out", "in"):
                family.add_metric([direction], totals[direction][name])
            yield family
        for direction in ("out", "in"):
            gauge.add_metric([direction], pipes[direction])
        yield gauge
        yield CounterMetricFamily("ods_relay_pipe_rebuilds", "Pipes rebuilt after a stall", value=rebuilds)


live = LiveCollector()
REGISTRY.register(live)


def watch(sfu: Any) -> None:
    """Count this SFU's rooms in the live gauges (for as long as it exists)."""
    live.sfus.add(sfu)


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
