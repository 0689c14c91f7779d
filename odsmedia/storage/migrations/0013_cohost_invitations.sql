-- Co-host invitations are api_tokens rows too (one way to mint, hash and revoke
-- a credential): `purpose` says whether a row admits anyone ('access') or is
-- an invitation that can only be exchanged, once, for a host token of its
-- room ('invitation'; `used_at` marks the exchange).  `parent_id` is the
-- token a row came from (the inviter's token for an invitation, the
-- invitation for the co-host's token), so revoking one revokes what it gave.

ALTER TABLE api_tokens
    ADD COLUMN purpose text NOT NULL DEFAULT 'access' CHECK (purpose IN ('access', 'invitation')),
    ADD COLUMN parent_id bigint REFERENCES api_tokens(id) ON DELETE CASCADE,
    ADD COLUMN used_at timestamptz;

CREATE INDEX api_tokens_parent ON api_tokens (parent_id) WHERE parent_id IS NOT NULL;
