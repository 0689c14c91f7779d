-- Episodes (one per live session of a room) and their HLS segments.

CREATE TABLE episodes (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id         bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    title           text NOT NULL DEFAULT '' CHECK (char_length(title) <= 200),
    status          text NOT NULL DEFAULT 'live'
                    CHECK (status IN ('live', 'finalizing', 'ready', 'interrupted', 'failed')),
    started_at      timestamptz NOT NULL DEFAULT now(),
    ended_at        timestamptz,
    duration        double precision NOT NULL DEFAULT 0,   -- seconds of media
    segment_count   integer NOT NULL DEFAULT 0,
    -- Where the files live in the storage backend (relative key prefix).
    storage_key     text NOT NULL,
    -- Node that records it, so a restart finalizes only its own interrupted episodes.
    node            text NOT NULL DEFAULT ''
);
CREATE INDEX episodes_room_started ON episodes (room_id, started_at DESC);
-- At most one live episode per room.
CREATE UNIQUE INDEX episodes_one_live ON episodes (room_id) WHERE status = 'live';

CREATE TABLE segments (
    episode_id      bigint NOT NULL REFERENCES episodes(id) ON DELETE CASCADE,
    seq             integer NOT NULL,
    name            text NOT NULL,
    -- fMP4 initialization section this segment needs (EXT-X-MAP).
    init_name       text,
    -- First segment after a change of initialization section (EXT-X-DISCONTINUITY).
    discontinuity   boolean NOT NULL DEFAULT false,
    duration        double precision NOT NULL,
    start_offset    double precision NOT NULL,   -- seconds from episode start
    size_bytes      bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (episode_id, seq),
    UNIQUE (episode_id, name)
);
