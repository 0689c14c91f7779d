-- Audience analytics (docs/privacy.md, "Analytics"): aggregated when written,
-- cookieless, no address anywhere.  Raw rows (visitor hashes, salts) live a
-- day or two; aggregates live for analytics.aggregate_days.

-- A request with DNT or Sec-GPC is logged for security like any other, but
-- not folded into the analytics_daily aggregate.
ALTER TABLE request_logs ADD COLUMN counted boolean NOT NULL DEFAULT true;

-- One secret per UTC day; deleted once the day is over, so the day's visitor
-- hashes can never be recomputed or linked to another day's.
CREATE TABLE analytics_salts (
    day             date PRIMARY KEY,
    salt            bytea NOT NULL
);

-- hash(day's salt, region, browser family, subject): counts unique viewers.
-- episode_id 0: outside any episode.  Short-lived (raw).
CREATE TABLE analytics_visitors (
    day             date NOT NULL,
    room_id         bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    episode_id      bigint NOT NULL DEFAULT 0,
    audience        text NOT NULL CHECK (audience IN ('live', 'replay')),
    visitor         bytea NOT NULL,
    PRIMARY KEY (room_id, day, episode_id, audience, visitor)
);
CREATE INDEX analytics_visitors_day ON analytics_visitors (day);

-- A room's live minute: counts added as events happen.
CREATE TABLE analytics_room_minutes (
    room_id         bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    minute          timestamptz NOT NULL,
    joins           integer NOT NULL DEFAULT 0,
    leaves          integer NOT NULL DEFAULT 0,
    watch_seconds   double precision NOT NULL DEFAULT 0,
    messages        integer NOT NULL DEFAULT 0,
    questions       integer NOT NULL DEFAULT 0,
    answers         integer NOT NULL DEFAULT 0,
    highlights      integer NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, minute)
);
CREATE INDEX analytics_room_minutes_minute ON analytics_room_minutes (minute);

-- Concurrent live viewers of a room, sampled every analytics.sample_interval.
-- Each node samples the viewers it serves; a room's count is the sum over nodes.
CREATE TABLE analytics_concurrency (
    room_id         bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    at              timestamptz NOT NULL,
    node            text NOT NULL,
    viewers         integer NOT NULL,
    PRIMARY KEY (room_id, at, node)
);
CREATE INDEX analytics_concurrency_at ON analytics_concurrency (at);

-- A room's day: what the operator's 30-day view sums.
CREATE TABLE analytics_room_days (
    room_id         bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    day             date NOT NULL,
    live_viewers    integer NOT NULL DEFAULT 0,   -- unique, that day
    replay_viewers  integer NOT NULL DEFAULT 0,   -- unique, that day
    joins           integer NOT NULL DEFAULT 0,
    watch_seconds   double precision NOT NULL DEFAULT 0,
    replay_plays    integer NOT NULL DEFAULT 0,
    replay_seconds  double precision NOT NULL DEFAULT 0,
    messages        integer NOT NULL DEFAULT 0,
    questions       integer NOT NULL DEFAULT 0,
    searches        integer NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, day)
);
CREATE INDEX analytics_room_days_day ON analytics_room_days (day);

-- An episode's audience, live and replay.
CREATE TABLE analytics_episodes (
    episode_id      bigint PRIMARY KEY REFERENCES episodes(id) ON DELETE CASCADE,
    live_viewers    integer NOT NULL DEFAULT 0,   -- unique per day, summed over the days it spans
    replay_viewers  integer NOT NULL DEFAULT 0,
    replay_plays    integer NOT NULL DEFAULT 0,
    replay_seconds  double precision NOT NULL DEFAULT 0
);

-- Audience retention of a replay: plays that watched each 10 s bucket of the episode.
CREATE TABLE analytics_replay_buckets (
    episode_id      bigint NOT NULL REFERENCES episodes(id) ON DELETE CASCADE,
    bucket          integer NOT NULL CHECK (bucket >= 0),
    plays           integer NOT NULL DEFAULT 0,
    PRIMARY KEY (episode_id, bucket)
);

-- Operators: see every room's analytics, delete accounts on request.
CREATE TABLE operators (
    account_id      bigint PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    granted_at      timestamptz NOT NULL DEFAULT now(),
    granted_by      text NOT NULL DEFAULT ''
);

-- Published versions of the privacy policy (odsmedia policy publish).
CREATE TABLE policy_versions (
    version         text PRIMARY KEY CHECK (char_length(version) BETWEEN 1 AND 64),
    body            text NOT NULL,
    material        boolean NOT NULL,
    published_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX policy_versions_published ON policy_versions (published_at DESC);

CREATE TABLE policy_acknowledgements (
    account_id      bigint NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    version         text NOT NULL REFERENCES policy_versions(version),
    acknowledged_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, version)
);

-- One notice e-mail per account and material version, whatever the retries.
CREATE TABLE policy_mailings (
    account_id      bigint NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    version         text NOT NULL REFERENCES policy_versions(version),
    sent_at         timestamptz,
    PRIMARY KEY (account_id, version)
);

-- Accounts deleted (self-service or on request).  Keeps no e-mail: the
-- account is gone; the row proves the request was honoured.
CREATE TABLE account_deletions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    account_id      bigint NOT NULL,
    actor           text NOT NULL,          -- 'self', 'cli', or the operator's subject
    reason          text NOT NULL DEFAULT '' CHECK (char_length(reason) <= 500),
    removed         jsonb NOT NULL
);
