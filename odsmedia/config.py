"""Typed configuration: defaults, an optional TOML file, then the environment.

Every setting is declared once in ``SETTINGS``: its dotted key (the TOML
location), its environment variable, its type and its default.  The table
drives loading, validation, ``config/default.toml`` (a test keeps the two
equal) and docs/configuration.md.  A bad value raises ``ConfigError`` whose
message is one line naming the key and what was expected, which the CLI
prints before exiting with status 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping


class ConfigError(ValueError):
    """A setting has a value of the wrong shape; the message names it."""


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("a boolean (true/false)")


def _int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError("an integer")
    if isinstance(raw, int):
        return raw
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ValueError("an integer") from None


def _float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("a number")
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise ValueError("a number") from None


def _within(parse: Callable[[Any], Any], low: int, high: int, noun: str) -> Callable[[Any], Any]:
    def checked(raw: Any) -> Any:
        value = parse(raw)
        if not low <= value <= high:
            raise ValueError(f"{noun} from {low} to {high}")
        return value

    return checked


def _bounded(low: int, high: int) -> Callable[[Any], int]:
    return _within(_int, low, high, "an integer")


def _port(raw: Any) -> int:
    value = _int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("a port number 0-65535")
    return value


def _str(raw: Any) -> str:
    if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
        raise ValueError("a string")
    return str(raw)


def _list(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    if isinstance(raw, (list, tuple)) and all(isinstance(i, str) for i in raw):
        return tuple(raw)
    raise ValueError("a list of strings (comma-separated in the environment)")


def _ip_list(raw: Any) -> tuple[str, ...]:
    items = _list(raw)
    for item in items:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise ValueError(f"a comma-separated list of IP addresses ({item!r} is not one)") from None
    return items


def _network_list(raw: Any) -> tuple[str, ...]:
    items = _list(raw)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"a comma-separated list of networks in CIDR form ({item!r} is not one)") from None
    return items


def _optional_ip(raw: Any) -> str:
    text = _str(raw)
    if text:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise ValueError("an IP address or empty") from None
    return text


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        text = _str(raw)
        if text not in options:
            raise ValueError("one of " + ", ".join(options))
        return text

    return parse


def _url(*schemes: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        text = _str(raw)
        if text and not any(text.startswith(s + "://") or text.startswith(s + ":") for s in schemes):
            raise ValueError("a URL starting with " + " or ".join(s + "://" for s in schemes))
        return text

    return parse


def _url_list(*schemes: str) -> Callable[[Any], tuple[str, ...]]:
    def parse(raw: Any) -> tuple[str, ...]:
        items = _list(raw)
        for item in items:
            if not any(item.startswith(s + ":") for s in schemes):
                raise ValueError("URLs starting with " + " or ".join(s + ":" for s in schemes) + f" ({item!r})")
        return items

    return parse


def _origin_list(raw: Any) -> tuple[str, ...]:
    """``*``, or origins (scheme://host[:port], no path)."""
    items = _list(raw)
    for item in items:
        if item != "*" and not re.fullmatch(r"https?://[^/\s]+", item.rstrip("/")):
            raise ValueError(f"* or origins such as https://player.example ({item!r})")
    return items


def _duration_between(low: int, high: int) -> Callable[[Any], float]:
    return _within(_duration, low, high, "a duration in seconds")


def _duration(raw: Any) -> float:
    """Seconds, or a number with a unit suffix s/m/h/d ("15m")."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if raw < 0:
            raise ValueError("a non-negative duration")
        return float(raw)
    text = str(raw).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text)
    except ValueError:
        raise ValueError("a duration such as 30, 15m, 1h or 7d") from None
    if value < 0:
        raise ValueError("a non-negative duration")
    return value


@dataclass(frozen=True)
class Setting:
    key: str
    env: str
    parse: Callable[[Any], Any]
    default: Any
    doc: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("http.host", "ODS_HTTP_HOST", _str, "127.0.0.1", "Address the HTTP server binds."),
    Setting("http.port", "ODS_HTTP_PORT", _port, 8080, "Port the HTTP server binds (0 picks a free one)."),
    Setting("http.public_url", "ODS_PUBLIC_URL", _url("http", "https"), "",
            "Externally visible base URL (links in e-mail, WHIP Location). Empty: derived from host and port."),
    Setting("http.node_url", "ODS_NODE_URL", _str, "",
            "This node's own URL, named by room_on_other_node when a room lives here (public_url is the "
            "deployment's, perhaps a load balancer). With `serve --workers`, {port} stands for the worker's "
            "private port. Empty: http.public_url (one process) or it with the worker's private port."),
    Setting("http.trusted_proxies", "ODS_TRUSTED_PROXIES", _network_list, (),
            "Networks whose X-Forwarded-For is believed when deriving a client's region."),
    Setting("data.dir", "ODS_DATA_DIR", _str, "./.ods-data",
            "Directory for episodes, the dev outbox, dev secrets and embedded services."),
    Setting("database.url", "DATABASE_URL", _url("postgresql", "postgres"), "",
            "PostgreSQL DSN. Empty: `odsmedia dev` runs an embedded PostgreSQL under the data dir."),
    Setting("database.pool_size", "ODS_DATABASE_POOL_SIZE", _int, 10, "Largest asyncpg pool size."),
    Setting("redis.url", "REDIS_URL", _url("redis", "rediss", "unix"), "",
            "Redis URL. Empty: `odsmedia dev` runs an embedded Redis-compatible server (Valkey)."),
    Setting("redis.prefix", "ODS_REDIS_PREFIX", _str, "ods:",
            "Prefix of every Redis key and channel, so deployments can share one Redis."),
    Setting("log.level", "ODS_LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info", "Log level."),
    Setting("log.format", "ODS_LOG_FORMAT", _choice("auto", "json", "text"), "auto",
            "Log format; auto is text under `odsmedia dev` and JSON otherwise."),
    Setting("secret.key", "ODS_SECRET_KEY", _str, "",
            "Key signing cookies and anonymous ids (>= 32 characters). Required by `serve`; "
            "`dev` generates one and keeps it in the data dir.", secret=True),
    Setting("ice.addresses", "ODS_ICE_ADDRESSES", _ip_list, (),
            "Host addresses offered as ICE candidates. Empty: every interface (aioice's default)."),
    Setting("ice.announced_address", "ODS_ICE_ANNOUNCED_ADDRESS", _optional_ip, "",
            "Public address announced in place of the host address (1:1 NAT)."),
    Setting("ice.allowed_networks", "ODS_ICE_ALLOWED_NETWORKS", _network_list, (),
            "Remote candidates outside these networks are ignored. Empty: the networks of ice.addresses "
            "when those are loopback, else any."),
    Setting("ice.stun_urls", "ODS_ICE_STUN_URLS", _list, (), "STUN URLs handed to browser clients."),
    Setting("ice.turn_urls", "ODS_ICE_TURN_URLS", _url_list("turn", "turns"), (),
            "TURN URLs handed to clients, e.g. turn:host:3478?transport=udp, turn:host:3478?transport=tcp, "
            "turns:host:443?transport=tcp."),
    Setting("ice.turn_username", "ODS_ICE_TURN_USERNAME", _str, "", "TURN username for browser clients."),
    Setting("ice.turn_credential", "ODS_ICE_TURN_CREDENTIAL", _str, "",
            "Static TURN credential (used only when ice.turn_secret is empty).", secret=True),
    Setting("ice.turn_secret", "ODS_ICE_TURN_SECRET", _str, "",
            "coturn static-auth-secret: each participant gets its own time-limited TURN credential "
            "(REST-API scheme). Empty: the static username/credential above.", secret=True),
    Setting("ice.turn_ttl", "ODS_ICE_TURN_TTL", _duration, 43200.0,
            "How long a minted TURN credential is valid (seconds); coturn refuses it afterwards."),
    Setting("ice.force_relay", "ODS_ICE_FORCE_RELAY", _bool, False,
            "Pages connect only through TURN (iceTransportPolicy relay): hides client addresses, tests TURN."),
    Setting("ice.consent_timeout", "ODS_ICE_CONSENT_TIMEOUT", _duration, 30.0,
            "A peer that stops answering consent checks (RFC 7675) is dropped within this many seconds "
            "(at least 3)."),
    Setting("ice.dev_coturn_port", "ODS_ICE_DEV_COTURN_PORT", _port, 0,
            "`odsmedia dev` only: start a local coturn (Debian package coturn) on 127.0.0.1 at this port "
            "(3478 is usual) and hand out credentials for it. 0 (the default): none."),
    Setting("media.udp_port", "ODS_MEDIA_UDP_PORT", _port, 0,
            "The one UDP port all of the node's ICE/DTLS/SRTP traffic uses, on each ICE host address (open it "
            "in the firewall); worker i of `serve --workers` uses this port + i. 0: an ephemeral port per peer "
            "connection."),
    Setting("media.forwarding", "ODS_MEDIA_FORWARDING", _choice("packet", "frame"), "packet",
            "How live viewers are served: packet (each RTP packet rewritten and sent to every viewer) or "
            "frame (frames reassembled and re-packetized per viewer; the earlier path)."),
    Setting("media.max_webrtc_viewers_per_room", "ODS_MEDIA_MAX_WEBRTC_VIEWERS_PER_ROOM", _bounded(0, 1_000_000),
            1_000_000, "WebRTC viewers (subscribers that do not publish) one room takes; "
            "past it a viewer gets webrtc_viewer_cap and the viewer page plays LL-HLS."),
    Setting("media.subscriber_queue", "ODS_MEDIA_SUBSCRIBER_QUEUE", _int, 256,
            "Packets a subscriber may lag behind before it is resynced at the next keyframe."),
    Setting("media.pli_interval", "ODS_MEDIA_PLI_INTERVAL", _duration, 0.5,
            "Shortest interval between keyframe requests sent to one publisher (seconds)."),
    Setting("workers.count", "ODS_WORKERS", _bounded(0, 1024), 0,
            "Media processes `odsmedia serve` runs behind the one HTTP port, each a node of its own "
            "(`--workers` overrides). 0: one per core; 1: a single process, no supervisor."),
    Setting("workers.port_base", "ODS_WORKERS_PORT_BASE", _port, 0,
            "Worker i's private HTTP port (its node URL) is this + i. 0: free ports picked at start, kept "
            "across worker restarts."),
    Setting("rooms.relay_cpu_percent", "ODS_ROOMS_RELAY_CPU_PERCENT", _bounded(1, 100_000), 70,
            "An origin whose process CPU (percent of one core) passes this sends new viewers of its rooms to "
            "relays on other nodes."),
    Setting("rooms.full_cpu_percent", "ODS_ROOMS_FULL_CPU_PERCENT", _bounded(1, 100_000), 90,
            "A node whose process CPU passes this is full: a room that is not live anywhere, or a viewer it "
            "would relay, is redirected to the least-loaded live node."),
    Setting("rooms.relay_threshold", "ODS_ROOMS_RELAY_THRESHOLD", _bounded(0, 1_000_000), 200,
            "Viewers on a room's origin node at or above which a viewer joining on another node is served "
            "there, as a relay of the origin (below it, that node answers room_on_other_node). 0: always relay."),
    Setting("relay.stall_seconds", "ODS_RELAY_STALL_SECONDS", _duration, 3.0,
            "A pipe that carries no packet for this long while its publication is live and unmuted is rebuilt; "
            "a source node that does not answer within it is gone, and its relay rooms end."),
    Setting("relay.srtp", "ODS_RELAY_SRTP", _bool, False,
            "Protect pipes between nodes with SRTP (keys exchanged over the Redis control channel); "
            "off: plain RTP/RTCP, for pipes between workers of one machine on loopback."),
    Setting("relay.address", "ODS_RELAY_ADDRESS", _optional_ip, "127.0.0.1",
            "Address this node's pipe sockets bind and announce to the other end of a pipe (another "
            "node's relay reaches it there)."),
    Setting("recording.enabled", "ODS_RECORDING_ENABLED", _bool, True, "Record every live session to an episode."),
    Setting("recording.segment_seconds", "ODS_RECORDING_SEGMENT_SECONDS", _float, 4.0,
            "Target HLS segment duration."),
    Setting("recording.part_seconds", "ODS_RECORDING_PART_SECONDS", _float, 1.0,
            "LL-HLS part duration while live (0 disables parts and the live LL-HLS playlist)."),
    Setting("recording.segment_type", "ODS_RECORDING_SEGMENT_TYPE", _choice("fmp4"), "fmp4",
            "HLS segment container (fMP4 only; docs/recording.md says why)."),
    Setting("recording.reconnect_grace", "ODS_RECORDING_RECONNECT_GRACE", _duration, 10.0,
            "How long an episode waits for the host to publish again before it is finalized (seconds)."),
    Setting("recording.audio_codec", "ODS_RECORDING_AUDIO_CODEC", _choice("opus", "aac"), "opus",
            "Episode audio: opus (as received; no Apple HLS players) or aac (one Opus->AAC transcode per session)."),
    Setting("recording.retention_days", "ODS_RECORDING_RETENTION_DAYS", _bounded(0, 36500), 0,
            "Episodes that ended longer ago than this many days are deleted with their media (0: kept)."),
    Setting("storage.backend", "ODS_STORAGE_BACKEND", _choice("local", "s3"), "local",
            "Where episode media lives: local (<data dir>/episodes on the recording node) or s3 (a bucket)."),
    Setting("storage.bucket", "ODS_STORAGE_BUCKET", _str, "", "S3 bucket for episode media (backend s3)."),
    Setting("storage.prefix", "ODS_STORAGE_PREFIX", _str, "episodes/",
            "Key prefix inside the bucket (backend s3)."),
    Setting("storage.endpoint_url", "ODS_STORAGE_ENDPOINT_URL", _url("http", "https"), "",
            "S3 endpoint for MinIO, R2, GCS interop (empty: AWS). Credentials come from the standard AWS chain."),
    Setting("storage.region", "ODS_STORAGE_REGION", _str, "",
            "S3 region (empty: the AWS chain's, else us-east-1)."),
    Setting("storage.serve", "ODS_STORAGE_SERVE", _choice("redirect", "proxy"), "redirect",
            "Replay segments from a bucket: redirect to a presigned URL, or proxy the bytes (Range, ETag)."),
    Setting("storage.presign_seconds", "ODS_STORAGE_PRESIGN_SECONDS", _bounded(1, 604800), 300,
            "Lifetime of a presigned segment URL (backend s3, serve redirect)."),
    Setting("storage.upload_retry_max", "ODS_STORAGE_UPLOAD_RETRY_MAX", _duration, 5.0,
            "Longest wait between retries of a failed upload (backoff from 0.2 s doubles up to this)."),
    Setting("hls.token_seconds", "ODS_HLS_TOKEN_SECONDS", _duration_between(30, 86400), 300.0,
            "Lifetime of the signed URL tokens a gated room's HLS URLs carry (a CDN fetches with them, no cookie)."),
    Setting("hls.token_previous_key", "ODS_HLS_TOKEN_PREVIOUS_KEY", _str, "",
            "The previous secret.key during a rotation: HLS URL tokens it signed stay valid (one token lifetime).",
            secret=True),
    Setting("hls.cors_origins", "ODS_HLS_CORS_ORIGINS", _origin_list, (),
            "Origins of players on other sites allowed to fetch episode playlists and media (* for any)."),
    Setting("chat.max_length", "ODS_CHAT_MAX_LENGTH", _bounded(1, 4000), 500,
            "Longest chat message, in characters (at most 4000, the column's limit)."),
    Setting("chat.rate_per_10s", "ODS_CHAT_RATE_PER_10S", _int, 10, "Messages one user may post per 10 seconds."),
    Setting("chat.history", "ODS_CHAT_HISTORY", _int, 50, "Items sent to a client when it joins."),
    Setting("chat.rate_per_network_10s", "ODS_CHAT_RATE_PER_NETWORK_10S", _bounded(0, 1_000_000), 60,
            "Posts one client network (IPv4 /24, IPv6 /48) may make per 10 seconds in one room, across all its "
            "identities; hosts and moderators are not counted (0 disables)."),
    Setting("chat.rate_per_room_10s", "ODS_CHAT_RATE_PER_ROOM_10S", _bounded(0, 1_000_000), 1000,
            "Posts one room accepts per 10 seconds from viewers, across all of them (0 disables)."),
    Setting("abuse.signaling_per_network", "ODS_ABUSE_SIGNALING_PER_NETWORK", _bounded(0, 1_000_000), 100,
            "Signaling participants one client network may hold open on a node at once (0 disables)."),
    Setting("abuse.chat_sockets_per_network", "ODS_ABUSE_CHAT_SOCKETS_PER_NETWORK", _bounded(0, 1_000_000), 200,
            "Chat sockets one client network may hold open on a node at once (0 disables)."),
    Setting("abuse.whep_per_network", "ODS_ABUSE_WHEP_PER_NETWORK", _bounded(0, 1_000_000), 50,
            "WHEP sessions one client network may hold open on a node at once (0 disables)."),
    Setting("auth.link_ttl", "ODS_AUTH_LINK_TTL", _duration, 900.0, "Magic link lifetime."),
    Setting("auth.session_idle", "ODS_AUTH_SESSION_IDLE", _duration, 14 * 86400.0, "Session idle expiry."),
    Setting("auth.session_absolute", "ODS_AUTH_SESSION_ABSOLUTE", _duration, 30 * 86400.0,
            "Session absolute expiry."),
    Setting("auth.token_ttl", "ODS_AUTH_TOKEN_TTL", _duration, 86400.0, "Default API token lifetime."),
    Setting("auth.invitation_ttl", "ODS_AUTH_INVITATION_TTL", _duration, 86400.0,
            "Default lifetime of an unused co-host invitation (at most 7 days)."),
    Setting("auth.cohost_ttl", "ODS_AUTH_COHOST_TTL", _duration, 43200.0,
            "Lifetime of the host token a co-host gets by accepting an invitation."),
    Setting("auth.reauth_interval", "ODS_AUTH_REAUTH_INTERVAL", _duration, 2.0,
            "How often each node re-checks the sessions, tokens and accounts its open chat and signaling sockets "
            "were admitted with; those that ended are closed (4401)."),
    Setting("auth.link_rate_per_address", "ODS_AUTH_LINK_RATE_PER_ADDRESS", _int, 5,
            "Magic links one e-mail address may request per auth.link_rate_window."),
    Setting("auth.link_rate_per_network", "ODS_AUTH_LINK_RATE_PER_NETWORK", _int, 20,
            "Magic links one client network (IPv4 /24, IPv6 /48) may request per auth.link_rate_window."),
    Setting("auth.link_rate_window", "ODS_AUTH_LINK_RATE_WINDOW", _duration, 900.0,
            "Window of the magic-link rate limits."),
    Setting("auth.session_cache_ttl", "ODS_AUTH_SESSION_CACHE_TTL", _duration, 5.0,
            "How long a node reuses a looked-up session (sign-out and revocation drop it at once on every node; "
            "0 disables)."),
    Setting("mail.backend", "ODS_MAIL_BACKEND", _choice("outbox", "smtp", "mailersend"), "outbox",
            "How e-mail leaves: .eml files under <data dir>/outbox, SMTP, or MailerSend's API."),
    Setting("mail.from", "ODS_MAIL_FROM", _str, "ODS Media <no-reply@localhost>", "Sender of e-mail."),
    Setting("mail.smtp_host", "ODS_MAIL_SMTP_HOST", _str, "127.0.0.1", "SMTP host."),
    Setting("mail.smtp_port", "ODS_MAIL_SMTP_PORT", _port, 25, "SMTP port."),
    Setting("mail.smtp_starttls", "ODS_MAIL_SMTP_STARTTLS", _bool, False, "Upgrade the SMTP connection with STARTTLS."),
    Setting("mail.smtp_username", "ODS_MAIL_SMTP_USERNAME", _str, "", "SMTP login (empty: no AUTH)."),
    Setting("mail.smtp_password", "ODS_MAIL_SMTP_PASSWORD", _str, "", "SMTP password.", secret=True),
    Setting("mail.mailersend_api_key", "MAILERSEND_API_KEY", _str, "", "MailerSend API key.", secret=True),
    Setting("mail.mailersend_base_url", "ODS_MAILERSEND_BASE_URL", _url("http", "https"),
            "https://api.mailersend.com", "MailerSend API base URL."),
    Setting("billing.stripe_secret_key", "STRIPE_SECRET_KEY", _str, "", "Stripe secret API key.", secret=True),
    Setting("billing.stripe_webhook_secret", "STRIPE_WEBHOOK_SECRET", _str, "",
            "Stripe webhook signing secret.", secret=True),
    Setting("billing.stripe_api_base", "ODS_STRIPE_API_BASE", _url("http", "https"), "",
            "Override of Stripe's API base (tests point it at a local stand-in)."),
    Setting("privacy.request_log_days", "ODS_PRIVACY_REQUEST_LOG_DAYS", _int, 30,
            "Days raw request logs (region, never IP) are kept before rotating into daily aggregates."),
    Setting("privacy.session_event_days", "ODS_PRIVACY_SESSION_EVENT_DAYS", _int, 180,
            "Days sign-in audit events are kept."),
    Setting("privacy.sweep_interval", "ODS_PRIVACY_SWEEP_INTERVAL", _duration, 3600.0,
            "How often expired tokens, sessions and old logs are deleted."),
    Setting("analytics.enabled", "ODS_ANALYTICS_ENABLED", _bool, True,
            "Count audiences (cookieless, aggregated; docs/privacy.md) for session reports and the operator page."),
    Setting("analytics.sample_interval", "ODS_ANALYTICS_SAMPLE_INTERVAL", _duration, 10.0,
            "How often concurrent live viewers are sampled per room and counts are written (seconds)."),
    Setting("analytics.aggregate_days", "ODS_ANALYTICS_AGGREGATE_DAYS", _int, 730,
            "Days audience aggregates (per minute, per day, per episode) are kept."),
    Setting("security.contact", "ODS_SECURITY_CONTACT", _list, (),
            "Contact URIs (mailto: or https:) of /.well-known/security.txt; empty: no security.txt."),
    Setting("security.policy_url", "ODS_SECURITY_POLICY_URL", _str, "",
            "Vulnerability disclosure policy named by security.txt (optional)."),
    Setting("billing.past_due_grace", "ODS_BILLING_PAST_DUE_GRACE", _duration, 3 * 86400.0,
            "How long a past_due subscription keeps access."),
    Setting("billing.recheck_interval", "ODS_BILLING_RECHECK_INTERVAL", _duration, 30.0,
            "How often entitlements of admitted participants are re-checked (those whose access ended are removed)."),
    Setting("billing.cache_ttl", "ODS_BILLING_CACHE_TTL", _duration, 60.0,
            "Longest a node trusts a cached entitlement without a webhook invalidating it."),
)

_BY_KEY = {s.key: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    """Validated settings; read with ``config["http.port"]`` or ``config.get``."""

    values: Mapping[str, Any]
    plans: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    dev: bool = False
    # Keys set by the file or the environment (not left at their default).
    explicit: frozenset[str] = frozenset()

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def replace(self, **changes: Any) -> "Config":
        """A copy with some keys changed (dotted keys via ``**{"a.b": v}``), validated."""
        values = dict(self.values)
        for key, raw in changes.items():
            values[key] = _parse(_BY_KEY[key], raw, source="override")
        return Config(values=values, plans=self.plans, dev=self.dev, explicit=self.explicit | set(changes))

    def snapshot(self) -> dict[str, Any]:
        """JSON-able form (secrets included: it goes down a pipe to a worker, never to a file or log)."""
        return {"values": {k: list(v) if isinstance(v, tuple) else v for k, v in self.values.items()},
                "plans": {code: dict(plan) for code, plan in self.plans.items()}, "dev": self.dev,
                "explicit": sorted(self.explicit)}

    @classmethod
    def restore(cls, snapshot: Mapping[str, Any]) -> "Config":
        """The Config a ``snapshot`` was taken of, validated again."""
        values = {s.key: _parse(s, snapshot["values"][s.key], source="override") for s in SETTINGS}
        return cls(values=values, plans=dict(snapshot["plans"]), dev=bool(snapshot["dev"]),
                   explicit=frozenset(snapshot["explicit"]))

    @property
    def data_dir(self) -> Path:
        return Path(self.values["data.dir"]).resolve()

    @property
    def public_url(self) -> str:
        url = self.values["http.public_url"]
        if url:
            return url.rstrip("/")
        return f"http://{self.values['http.host']}:{self.values['http.port']}"


def _parse(setting: Setting, raw: Any, *, source: str) -> Any:
    try:
        return setting.parse(raw)
    except ValueError as exc:
        where = setting.env if source == "env" else setting.key
        # The message is printed: never with a credential in it.
        shown = "***" if is_secret(setting) else mask(repr(raw))
        raise ConfigError(f"invalid {where}={shown}: expected {exc}") from None


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def load(
    environ: Mapping[str, str] | None = None,
    file: str | os.PathLike[str] | None = None,
    *,
    dev: bool = False,
) -> Config:
    """Defaults, then the TOML file (``file`` or ODS_CONFIG), then the environment."""
    env = os.environ if environ is None else environ
    values = {s.key: s.default for s in SETTINGS}
    explicit: set[str] = set()
    plans: dict[str, Mapping[str, Any]] = {}
    path = file if file is not None else env.get("ODS_CONFIG") or None
    if path:
        try:
            with open(path, "rb") as fh:
                table = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"invalid ODS_CONFIG={str(path)!r}: expected an existing TOML file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid ODS_CONFIG={str(path)!r}: expected valid TOML ({exc})") from None
        raw_plans = table.pop("plans", {})
        if not isinstance(raw_plans, Mapping):
            raise ConfigError("invalid plans: expected a table of plan tables")
        for code, plan in raw_plans.items():
            if not isinstance(plan, Mapping) or not isinstance(plan.get("price"), str):
                raise ConfigError(f"invalid plans.{code}: expected a table with a price (Stripe price id)")
            plans[code] = dict(plan)
        for key, raw in _flatten(table).items():
            setting = _BY_KEY.get(key)
            if setting is None:
                raise ConfigError(f"invalid {key}: expected one of the documented keys (unknown key)")
            values[key] = _parse(setting, raw, source="file")
            explicit.add(key)
    for setting in SETTINGS:
        if setting.env in env:
            values[setting.key] = _parse(setting, env[setting.env], source="env")
            explicit.add(setting.key)
    secret = values["secret.key"]
    if secret and len(secret) < 32:
        raise ConfigError("invalid ODS_SECRET_KEY: expected at least 32 characters")
    return Config(values=values, plans=plans, dev=dev, explicit=frozenset(explicit))


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(value) if value else "(empty)"
    return str(value) if value != "" else "(empty)"


def markdown_table() -> str:
    """The settings table of docs/configuration.md (a test keeps the doc in step)."""
    lines = ["| key | environment | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = "(none)" if s.secret else _show(s.default)
        lines.append(f"| `{s.key}` | `{s.env}` | `{default}` | {s.doc.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


# Query parameters of a DSN that carry credentials (libpq's password and sslpassword,
# and anything named like a secret).
_SECRET_NAME = re.compile(r"(secret|key|token|password|passwd|credential)", re.IGNORECASE)
_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@", re.IGNORECASE)
_QUERY_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&;#]+)=(?P<value>[^&;#]*)")


def mask(text: str) -> str:
    """``text`` with every credential in it replaced by ``***``.

    The password of URL userinfo with or without a user name (``redis://:pw@h``,
    ``postgres://u:pw@h``; a lone ``u@`` is a user name, as libpq and redis-py read
    it) and query parameters named like a secret (``?password=``, ``?sslpassword=``,
    ``?api_key=``)."""

    def userinfo(m: re.Match[str]) -> str:
        user, colon, _ = m["userinfo"].partition(":")
        return f"{m['scheme']}{user}:***@" if colon else m.group(0)

    def param(m: re.Match[str]) -> str:
        if _SECRET_NAME.search(m["name"]):
            return f"{m['lead']}{m['name']}=***"
        return m.group(0)

    return _QUERY_PARAM.sub(param, _USERINFO.sub(userinfo, text))


def is_secret(setting: Setting) -> bool:
    """Declared secret, or a string setting whose name says it holds one."""
    name = setting.key.rsplit(".", 1)[-1]
    return setting.secret or (isinstance(setting.default, str) and bool(_SECRET_NAME.search(name)))


def describe(config: Config) -> dict[str, Any]:
    """Effective settings with secrets masked, for `odsmedia config`."""
    shown: dict[str, Any] = {}
    for s in SETTINGS:
        value = config[s.key]
        if is_secret(s) and value:
            value = "***"
        elif isinstance(value, str):
            value = mask(value)
        elif isinstance(value, tuple):
            value = [mask(v) for v in value]
        shown[s.key] = value
    return shown
