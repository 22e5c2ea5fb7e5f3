-- The answers of sends made with an `Idempotency-Key`, kept a day per account: the same
-- key again answers the stored response. The row is written in the transaction that
-- queues the email, so that of two concurrent twins one commits and the other fails on
-- the primary key.
CREATE TABLE idempotency_keys (
    account_id    TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    idem_key      TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        BIGINT NOT NULL,
    response      TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    PRIMARY KEY (account_id, idem_key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Emails each account sent per minute, counted before they are queued (the sending rate
-- limit); old minutes are pruned.
CREATE TABLE send_counts (
    account_id    TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    minute        BIGINT NOT NULL,
    sent          BIGINT NOT NULL,
    PRIMARY KEY (account_id, minute)
);
CREATE INDEX send_counts_minute ON send_counts (minute);
