-- Invitations into an entity. The token is stored as a SHA-256 digest; an invitation
-- past its expiry reads as `expired`.
CREATE TABLE invitations (
    id                  TEXT PRIMARY KEY,
    entity_id           TEXT NOT NULL REFERENCES entities (id) ON DELETE CASCADE,
    email               TEXT NOT NULL,
    name                TEXT,
    role                TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
    status              TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'cancelled')),
    invited_by          TEXT NOT NULL,
    invited_by_user_id  TEXT,
    token_hash          TEXT NOT NULL UNIQUE,
    valid_days          INTEGER NOT NULL,
    expires_at          BIGINT NOT NULL,
    accepted_at         BIGINT,
    accepted_by         TEXT,
    last_sent_at        BIGINT NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);
CREATE INDEX invitations_by_entity ON invitations (entity_id, created_at);
CREATE UNIQUE INDEX invitations_one_pending ON invitations (entity_id, email) WHERE status = 'pending';

-- Users' access tokens, as SHA-256 digests.
CREATE TABLE access_tokens (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX access_tokens_by_user ON access_tokens (user_id);

-- Failed logins, by email and by client address, to slow down guessing.
CREATE TABLE login_failures (
    subject  TEXT NOT NULL,
    at       BIGINT NOT NULL
);
CREATE INDEX login_failures_by_subject ON login_failures (subject, at);
