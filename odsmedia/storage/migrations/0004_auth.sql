-- Passwordless sign-in: magic links, sessions, and the sign-in audit.
-- No raw IP address is stored anywhere: events keep a coarse region only.

-- A magic link is "<selector>.<verifier>": the selector finds the row, the
-- verifier's SHA-256 is compared in constant time. Neither is stored raw.
CREATE TABLE magic_links (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    selector        bytea NOT NULL UNIQUE,
    verifier_hash   bytea NOT NULL,
    email           text NOT NULL CHECK (email = lower(email) AND position('@' in email) > 1),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz
);
CREATE INDEX magic_links_expires ON magic_links (expires_at);

-- The cookie carries 32 random bytes; only their SHA-256 is kept.
CREATE TABLE sessions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash      bytea NOT NULL UNIQUE,
    account_id      bigint NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,          -- absolute expiry
    revoked_at      timestamptz,
    region          text NOT NULL DEFAULT 'unknown'
);
CREATE INDEX sessions_account ON sessions (account_id);

CREATE TABLE session_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    kind            text NOT NULL
                    CHECK (kind IN ('sign_in', 'sign_out', 'link_failed', 'link_expired', 'revoked')),
    account_id      bigint REFERENCES accounts(id) ON DELETE CASCADE,
    session_id      bigint,
    region          text NOT NULL
);
CREATE INDEX session_events_account ON session_events (account_id, at DESC);
CREATE INDEX session_events_at ON session_events (at);
