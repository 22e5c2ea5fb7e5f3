-- SMTP relay settings of a domain (the nodemailer-shaped object of the settings API).
-- The password is sealed under the master key.
CREATE TABLE smtp_settings (
    id                   TEXT PRIMARY KEY,
    account_id           TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    domain_id            TEXT NOT NULL UNIQUE REFERENCES domains (id),
    provider             TEXT NOT NULL CHECK (provider = 'smtp'),
    description          TEXT NOT NULL,
    from_address         TEXT NOT NULL,
    host                 TEXT NOT NULL,
    port                 INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    secure               INTEGER NOT NULL,
    debug                INTEGER NOT NULL,
    reject_unauthorized  INTEGER NOT NULL,
    auth_user            TEXT NOT NULL,
    auth_pass            TEXT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);

-- Every email mailroom sends, written in the same transaction as the change that causes
-- it. The body holds one-time tokens, so it is sealed; the API never shows it.
CREATE TABLE outbox (
    id               TEXT PRIMARY KEY,
    account_id       TEXT REFERENCES accounts (id) ON DELETE CASCADE,
    kind             TEXT NOT NULL,
    from_address     TEXT NOT NULL,
    to_address       TEXT NOT NULL,
    subject          TEXT NOT NULL,
    body             TEXT NOT NULL,
    message_id       TEXT NOT NULL UNIQUE,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'sending', 'sent', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT,
    lease_until      BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    sent_at          BIGINT
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status IN ('queued', 'sending');
CREATE INDEX outbox_by_account ON outbox (account_id, created_at);

CREATE TABLE delivery_attempts (
    message_id  TEXT NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    at          BIGINT NOT NULL,
    transport   TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('sent', 'temporary', 'permanent')),
    detail      TEXT NOT NULL,
    PRIMARY KEY (message_id, attempt)
);
