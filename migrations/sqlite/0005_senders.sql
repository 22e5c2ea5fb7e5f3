-- The sender address of an account (entity_id NULL) or of one of its entities: one per
-- scope. Verification secrets are stored as SHA-256 digests only.
CREATE TABLE sender_addresses (
    id            TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    entity_id     TEXT REFERENCES entities (id) ON DELETE CASCADE,
    email         TEXT NOT NULL,
    domain_id     TEXT NOT NULL REFERENCES domains (id),
    verified_at   BIGINT,
    token_hash    TEXT UNIQUE,
    code_hash     TEXT,
    code_failures INTEGER NOT NULL DEFAULT 0,
    expires_at    BIGINT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE UNIQUE INDEX sender_addresses_one_per_scope ON sender_addresses (account_id, COALESCE(entity_id, ''));

-- Every verification email sent, to limit how often one address is written to.
CREATE TABLE verification_sends (
    email  TEXT NOT NULL,
    at     BIGINT NOT NULL
);
CREATE INDEX verification_sends_by_email ON verification_sends (email, at);
