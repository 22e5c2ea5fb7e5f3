-- Events become the account's event log that webhooks deliver: each has a `position`
-- (the order the log is read and paged in), the entity it concerns and its payload's
-- `data` as the API shows the object at that moment. Events without `data` are history
-- only (of mailroom's own mail), never listed nor delivered. Types are namespaced
-- (`email.sent`, `domain.verified`…).
CREATE TABLE events_new (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    account_id  TEXT REFERENCES accounts (id) ON DELETE CASCADE,
    entity_id   TEXT,
    email_id    TEXT REFERENCES emails (id) ON DELETE CASCADE,
    recipient   TEXT,
    type        TEXT NOT NULL,
    detail      TEXT,
    data        TEXT,
    at          BIGINT NOT NULL
);
INSERT INTO events_new (id, account_id, entity_id, email_id, recipient, type, detail, data, at)
SELECT v.id, v.account_id, e.entity_id, v.email_id, v.recipient, 'email.' || v.type, v.detail,
       CASE WHEN e.kind = 'email' THEN json_object(
           'id', e.id, 'from', e.from_address, 'subject', e.subject, 'tags', json(e.tags),
           'entity_id', e.entity_id, 'message_id', e.message_id, 'created_at',
           strftime('%Y-%m-%dT%H:%M:%fZ', e.created_at / 1000.0, 'unixepoch'),
           'recipient', json_object('email', v.recipient, 'status', v.type, 'reply', v.detail)) END,
       v.at
FROM events v LEFT JOIN emails e ON e.id = v.email_id
ORDER BY v.at, v.rowid;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE INDEX events_by_email ON events (email_id, position);
CREATE INDEX events_by_account ON events (account_id, position) WHERE data IS NOT NULL;
CREATE INDEX events_by_type ON events (account_id, type, position) WHERE data IS NOT NULL;
CREATE INDEX events_by_age ON events (at);

-- An account's webhook endpoints. The signing secret is sealed (it must be read to sign);
-- after a rotation the previous one keeps signing beside it until `previous_secret_until`.
-- `failures` counts consecutive failed attempts since `failing_since`; `disabled_reason`
-- says why mailroom turned the endpoint off (`null` when the account did).
CREATE TABLE webhooks (
    id                     TEXT PRIMARY KEY,
    account_id             TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    url                    TEXT NOT NULL,
    description            TEXT,
    events                 TEXT NOT NULL,
    enabled                INTEGER NOT NULL,
    secret                 TEXT NOT NULL,
    previous_secret        TEXT,
    previous_secret_until  BIGINT,
    failures               INTEGER NOT NULL DEFAULT 0,
    failing_since          BIGINT,
    disabled_at            BIGINT,
    disabled_reason        TEXT,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL
);
CREATE INDEX webhooks_by_account ON webhooks (account_id, created_at);

-- Which event types each endpoint receives, one row each, so that recording an event finds
-- its endpoints on an index.
CREATE TABLE webhook_subscriptions (
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    event_type  TEXT NOT NULL,
    webhook_id  TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    PRIMARY KEY (account_id, event_type, webhook_id)
);
CREATE INDEX webhook_subscriptions_by_webhook ON webhook_subscriptions (webhook_id);

-- One job per (event, endpoint), written with the event. `pending` waits for
-- `next_attempt_at`; `delivering` is leased until `next_attempt_at` (an expired lease is
-- due again); `succeeded` and `failed` (out of attempts) are final. `object_key` names the
-- object the event is about, so that one object's events go out in order.
CREATE TABLE webhook_deliveries (
    position         INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    webhook_id       TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id         TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    object_key       TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivering', 'succeeded', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
-- Each endpoint's due jobs in turn; the jobs under way, counted for its concurrency cap.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (webhook_id, next_attempt_at, position) WHERE status IN ('pending', 'delivering');
CREATE INDEX webhook_deliveries_under_way ON webhook_deliveries (webhook_id) WHERE status = 'delivering';
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, position);
CREATE INDEX webhook_deliveries_by_status ON webhook_deliveries (webhook_id, status, position);
CREATE INDEX webhook_deliveries_by_object ON webhook_deliveries (webhook_id, object_key, position) WHERE status IN ('pending', 'delivering');
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id);

-- Every attempt at a delivery: the HTTP status (`null` when no answer came, then `error`
-- says why), how long it took and the first KiB of the reply.
CREATE TABLE webhook_attempts (
    delivery_id  TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    number       INTEGER NOT NULL,
    at           BIGINT NOT NULL,
    http_status  INTEGER,
    latency_ms   BIGINT NOT NULL,
    response     TEXT,
    error        TEXT,
    PRIMARY KEY (delivery_id, number)
);

-- Invitations and sender addresses whose expiry has been announced (the event written).
ALTER TABLE invitations ADD COLUMN expiry_announced_at BIGINT;
ALTER TABLE sender_addresses ADD COLUMN expiry_announced_at BIGINT;
-- What expired before this upgrade is not news.
UPDATE invitations SET expiry_announced_at = expires_at
    WHERE status = 'pending' AND expires_at <= CAST(strftime('%s', 'now') AS INTEGER) * 1000;
UPDATE sender_addresses SET expiry_announced_at = expires_at
    WHERE verified_at IS NULL AND expires_at <= CAST(strftime('%s', 'now') AS INTEGER) * 1000;
CREATE INDEX invitations_expiry_to_announce ON invitations (expires_at)
    WHERE status = 'pending' AND expiry_announced_at IS NULL;
CREATE INDEX sender_addresses_expiry_to_announce ON sender_addresses (expires_at)
    WHERE verified_at IS NULL AND expiry_announced_at IS NULL;
