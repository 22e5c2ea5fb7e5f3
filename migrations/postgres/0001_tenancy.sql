-- Timestamps are milliseconds since the Unix epoch (UTC); flags are 0/1 integers.

CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE entities (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX entities_by_account ON entities (account_id, created_at);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,
    name           TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

CREATE TABLE memberships (
    entity_id   TEXT NOT NULL REFERENCES entities (id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (entity_id, user_id)
);
CREATE INDEX memberships_by_user ON memberships (user_id);

-- An API key is stored as the SHA-256 of its secret; `prefix` is what lists show.
-- A key without an entity acts for the whole account.
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    entity_id    TEXT REFERENCES entities (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
    secret_hash  TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX api_keys_by_account ON api_keys (account_id, created_at);

-- One row once the first start has created the first account, so that no later start
-- (nor a second instance starting beside the first) prints a key again.
CREATE TABLE bootstrap (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    account_id  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
