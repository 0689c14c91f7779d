"""Recorder metrics on the process's default Prometheus registry (served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

recordings_live = Gauge("ods_recordings_live", "Episodes being recorded on this node")
segments = Counter("ods_recorder_segments_total", "Segments written and listed")
segment_bytes = Counter("ods_recorder_segment_bytes_total", "Bytes of segments written")
dropped_frames = Counter("ods_recorder_dropped_frames_total",
                         "Frames dropped because the writer thread was behind", ["kind"])
listing_delay = Histogram(
    "ods_recorder_listing_seconds", "From a segment's last byte to the playlist listing it",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
episodes_finished = Counter("ods_recorder_episodes_total", "Episodes finalized, by final status", ["status"])
uploads = Counter("ods_recorder_uploads_total", "Episode files uploaded from the spool to the store")
upload_bytes = Counter("ods_recorder_upload_bytes_total", "Bytes uploaded from the spool to the store")
upload_failures = Counter("ods_recorder_upload_failures_total", "Upload attempts that failed (each is retried)")
purged = Counter("ods_recorder_purged_total", "Episode prefixes removed from the store after their rows went")
upload_backlog = Gauge("ods_recorder_upload_backlog",
                       "Closed segments waiting in the spool for their upload and listing (bucket backend)")
part_delay = Histogram(
    "ods_recorder_llhls_part_publish_seconds", "From a part's last byte muxed to its listing on the live playlist",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
)
blocking_requests = Gauge("ods_recorder_llhls_blocking_requests", "Blocking LL-HLS playlist requests waiting")
live_hls_viewers = Gauge(
    "ods_recorder_llhls_viewers",
    "Distinct live LL-HLS playlist pollers on this node in the last complete minute (behind a CDN: its fetchers)")
