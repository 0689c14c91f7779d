-- Chat: messages, questions and highlights; votes; sanctions; the moderation audit.
--
-- Every change in a room's chat takes the next number of that room's
-- sequence (chat_rooms.last_seq), updated in the same statement as the
-- change. The row lock on chat_rooms serializes writers of one room until
-- they commit, so commit order equals sequence order: once seq n is visible,
-- every seq below it is too. Clients resume from the last seq they saw and
-- nodes fill gaps from here, so Redis may drop or reorder what it carries.

CREATE TABLE chat_rooms (
    room_id         bigint PRIMARY KEY REFERENCES rooms(id) ON DELETE CASCADE,
    last_seq        bigint NOT NULL DEFAULT 0,
    slow_mode_seconds integer NOT NULL DEFAULT 0 CHECK (slow_mode_seconds BETWEEN 0 AND 3600)
);

CREATE TABLE chat_items (
    room_id         bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    id              bigint NOT NULL,               -- the room's seq when it was posted
    changed_seq     bigint NOT NULL,               -- the room's seq of its latest change
    kind            text NOT NULL CHECK (kind IN ('message', 'question', 'highlight')),
    author          text NOT NULL,                 -- gate.Identity.subject
    author_name     text NOT NULL CHECK (char_length(author_name) <= 80),
    body            text NOT NULL CHECK (char_length(body) <= 4000),
    created_at      timestamptz NOT NULL DEFAULT now(),
    episode_id      bigint REFERENCES episodes(id) ON DELETE SET NULL,
    episode_offset  double precision,              -- seconds since the live episode started
    votes           integer NOT NULL DEFAULT 0,
    answered_at     timestamptz,
    -- A deleted item keeps its row as a tombstone (so resuming clients learn
    -- of the deletion) but loses its text.
    deleted_at      timestamptz,
    deleted_by      text,
    -- The default parser reads <...> as HTML tags and skips <script> bodies; chat
    -- text is text, so angle brackets are blanked before parsing.
    search          tsvector GENERATED ALWAYS AS (to_tsvector('english', translate(body, '<>', '  '))) STORED,
    PRIMARY KEY (room_id, id),
    CHECK (deleted_at IS NULL OR body = '')
);
CREATE INDEX chat_items_changed ON chat_items (room_id, changed_seq);
CREATE INDEX chat_items_episode ON chat_items (episode_id, episode_offset) WHERE deleted_at IS NULL;
CREATE INDEX chat_items_search ON chat_items USING gin (search) WHERE deleted_at IS NULL;
CREATE INDEX chat_items_author ON chat_items (author);

-- One upvote per subject per question.
CREATE TABLE chat_votes (
    room_id         bigint NOT NULL,
    item_id         bigint NOT NULL,
    subject         text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, item_id, subject),
    FOREIGN KEY (room_id, item_id) REFERENCES chat_items (room_id, id) ON DELETE CASCADE
);

-- Timeouts (until set) and bans (until NULL) of a subject in a room.
CREATE TABLE chat_sanctions (
    room_id         bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    subject         text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('timeout', 'ban')),
    until           timestamptz,
    by_subject      text NOT NULL,
    reason          text NOT NULL DEFAULT '' CHECK (char_length(reason) <= 200),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, subject, kind),
    CHECK ((kind = 'ban') = (until IS NULL))
);

-- Every moderation action: who, what, whom, when, and its parameters.
CREATE TABLE moderation_actions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id         bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    actor           text NOT NULL,
    action          text NOT NULL,
    target          text NOT NULL DEFAULT '',
    detail          jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX moderation_actions_room ON moderation_actions (room_id, created_at DESC);
