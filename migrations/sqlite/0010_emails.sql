-- One outbox of emails with per-recipient delivery. The API's emails and mailroom's own
-- mail are the same kind of row; the single-recipient `outbox` and its `delivery_attempts`
-- move here (their history becomes events).

-- An email. `position` orders an account's emails and pages the list (`after`); `body`
-- is sealed (text, HTML, attachments, custom headers) and NULL once deleted. `status` is
-- the claim state while recipients wait, then the outcome: scheduled, queued (waiting for
-- its next attempt), sending (leased), sent (some recipient took it), failed (no recipient
-- took it), suppressed (every recipient suppressed), cancelled.
CREATE TABLE emails (
    position         INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    account_id       TEXT REFERENCES accounts (id) ON DELETE CASCADE,
    entity_id        TEXT REFERENCES entities (id) ON DELETE SET NULL,
    kind             TEXT NOT NULL,
    from_address     TEXT NOT NULL,
    from_name        TEXT,
    reply_to         TEXT,
    subject          TEXT NOT NULL,
    body             TEXT,
    body_deleted_at  BIGINT,
    message_id       TEXT NOT NULL UNIQUE,
    tags             TEXT NOT NULL DEFAULT '{}',
    status           TEXT NOT NULL CHECK (status IN
                       ('scheduled', 'queued', 'sending', 'sent', 'failed', 'suppressed', 'cancelled')),
    scheduled_at     BIGINT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT,
    lease_until      BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    sent_at          BIGINT
);
-- Covering for the metrics' reading of the queue too (status and lease_until in the index).
CREATE INDEX emails_due ON emails (next_attempt_at, status, lease_until) WHERE status IN ('scheduled', 'queued', 'sending');
CREATE INDEX emails_by_account ON emails (account_id, position);
CREATE INDEX emails_by_status ON emails (account_id, status, position);
CREATE INDEX emails_by_from ON emails (account_id, LOWER(from_address), position);
CREATE INDEX emails_with_body ON emails (created_at) WHERE body IS NOT NULL;

-- Each recipient of an email, in the order given; its own status, attempts and reply.
CREATE TABLE email_recipients (
    email_id         TEXT NOT NULL REFERENCES emails (id) ON DELETE CASCADE,
    position         INTEGER NOT NULL,
    address          TEXT NOT NULL,
    name             TEXT,
    type             TEXT NOT NULL CHECK (type IN ('to', 'cc', 'bcc')),
    status           TEXT NOT NULL CHECK (status IN
                       ('queued', 'scheduled', 'sent', 'deferred', 'bounced', 'failed', 'suppressed', 'cancelled')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_reply       TEXT,
    next_attempt_at  BIGINT,
    updated_at       BIGINT NOT NULL,
    sent_at          BIGINT,
    PRIMARY KEY (email_id, position)
);
CREATE INDEX email_recipients_by_address ON email_recipients (LOWER(address), email_id);

-- Tags of an email (also in `emails.tags` as shown), one row each so that a list filters
-- on an index.
CREATE TABLE email_tags (
    email_id    TEXT NOT NULL REFERENCES emails (id) ON DELETE CASCADE,
    account_id  TEXT REFERENCES accounts (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (email_id, name)
);
CREATE INDEX email_tags_by_value ON email_tags (account_id, name, value);

-- What happened, written in the transaction of the change. No CHECK on `type`: other
-- kinds of events join without rebuilding the table.
CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    account_id  TEXT REFERENCES accounts (id) ON DELETE CASCADE,
    email_id    TEXT REFERENCES emails (id) ON DELETE CASCADE,
    recipient   TEXT,
    type        TEXT NOT NULL,
    detail      TEXT,
    at          BIGINT NOT NULL
);
CREATE INDEX events_by_email ON events (email_id, at);
CREATE INDEX events_by_account ON events (account_id, at);

-- Addresses an account's mail never goes to.
CREATE TABLE suppressions (
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    email       TEXT NOT NULL,
    reason      TEXT NOT NULL CHECK (reason IN ('manual', 'bounce')),
    detail      TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (account_id, email)
);

INSERT INTO emails (id, account_id, kind, from_address, subject, body, message_id, status,
                    attempts, next_attempt_at, lease_until, last_error, created_at, updated_at, sent_at)
SELECT id, account_id, kind, from_address, subject, body, message_id, status,
       attempts, next_attempt_at, lease_until, last_error, created_at, updated_at, sent_at
FROM outbox ORDER BY created_at, id;

INSERT INTO email_recipients (email_id, position, address, type, status, attempts, last_reply,
                              next_attempt_at, updated_at, sent_at)
SELECT id, 0, to_address, 'to',
       CASE WHEN status = 'sent' THEN 'sent' WHEN status = 'failed' THEN 'failed'
            WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END,
       attempts, last_error,
       CASE WHEN status IN ('queued', 'sending') THEN next_attempt_at END,
       updated_at, sent_at
FROM outbox;

INSERT INTO events (id, account_id, email_id, recipient, type, detail, at)
SELECT 'evt_' || lower(hex(randomblob(12))), account_id, id, to_address, 'queued', NULL, created_at
FROM outbox;

INSERT INTO events (id, account_id, email_id, recipient, type, detail, at)
SELECT 'evt_' || lower(hex(randomblob(12))), o.account_id, o.id, o.to_address,
       CASE a.outcome WHEN 'sent' THEN 'sent' WHEN 'temporary' THEN 'deferred' ELSE 'failed' END,
       a.detail, a.at
FROM delivery_attempts a JOIN outbox o ON o.id = a.message_id;

DROP TABLE delivery_attempts;
DROP TABLE outbox;
