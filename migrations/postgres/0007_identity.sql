-- A user's email is compared without regard to case: it is kept in lowercase.
UPDATE users SET email = translate(email, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz');

-- Attempts that a limit counts (failed logins, password-reset requests). A row is written
-- before the work it limits, so that concurrent attempts count one another.
ALTER TABLE login_failures RENAME TO attempts;
ALTER TABLE attempts ADD COLUMN id TEXT;
DROP INDEX login_failures_by_subject;
CREATE INDEX attempts_by_subject ON attempts (subject, at);
CREATE INDEX attempts_by_time ON attempts (at);

-- Who created a key: a user's id, another key's id, or 'cli'. Keys a user created are
-- revoked when that user leaves the entity or stops being its admin.
ALTER TABLE api_keys ADD COLUMN created_by TEXT NOT NULL DEFAULT 'cli';
ALTER TABLE api_keys ADD COLUMN created_by_user_id TEXT;
CREATE INDEX api_keys_by_creator ON api_keys (created_by_user_id);

-- Password-reset links, as SHA-256 digests; each works once, for an hour.
CREATE TABLE password_resets (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX password_resets_by_user ON password_resets (user_id);
