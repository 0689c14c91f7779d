-- Core identities and rooms. Later capabilities add their own files
-- (0002 recording, 0003 chat, 0004 auth, 0005 billing, 0006 privacy).

CREATE TABLE accounts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email           text NOT NULL CHECK (email = lower(email) AND position('@' in email) > 1),
    display_name    text NOT NULL DEFAULT '' CHECK (char_length(display_name) <= 80),
    email_verified_at timestamptz,
    age_confirmed_at  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX accounts_email_key ON accounts (email);

CREATE TABLE rooms (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug            text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    title           text NOT NULL DEFAULT '' CHECK (char_length(title) <= 200),
    -- public: anyone, anonymous viewers included; signed-in: any account;
    -- plans: accounts entitled to one of access_plans.
    access_policy   text NOT NULL DEFAULT 'public'
                    CHECK (access_policy IN ('public', 'signed-in', 'plans')),
    access_plans    text[] NOT NULL DEFAULT '{}',
    owner_id        bigint REFERENCES accounts(id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((access_policy = 'plans') = (cardinality(access_plans) > 0))
);

-- Per-room roles for accounts; viewers need no row.
CREATE TABLE room_members (
    room_id         bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    account_id      bigint NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    role            text NOT NULL CHECK (role IN ('host', 'moderator')),
    granted_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, account_id)
);
CREATE INDEX room_members_account ON room_members (account_id);

-- Bearer tokens (OBS/WHIP, WHEP, automation). Only a SHA-256 of the token
-- is kept; the token itself is shown once, when minted.
CREATE TABLE api_tokens (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash      bytea NOT NULL UNIQUE,
    account_id      bigint REFERENCES accounts(id) ON DELETE CASCADE,
    room_id         bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    role            text NOT NULL CHECK (role IN ('host', 'moderator', 'viewer')),
    label           text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    last_used_at    timestamptz
);
CREATE INDEX api_tokens_account ON api_tokens (account_id) WHERE account_id IS NOT NULL;
