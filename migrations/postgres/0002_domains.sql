-- Managed domains, proven by DNS. A name may be pending in several accounts (so nobody
-- can block it by adding it first) but active in one only.
CREATE TABLE domains (
    id                   TEXT PRIMARY KEY,
    account_id           TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name                 TEXT NOT NULL,
    status               TEXT NOT NULL CHECK (status IN ('pending', 'active', 'failed', 'suspended')),
    -- 'dns' or 'operator': how the domain became active.
    verified_by          TEXT,
    created_at           BIGINT NOT NULL,
    status_changed_at    BIGINT NOT NULL,
    verified_at          BIGINT,
    last_checked_at      BIGINT,
    -- When checks of an active domain first stopped finding the proof.
    proof_missing_since  BIGINT,
    -- The background verifier's schedule; NULL when it leaves the domain alone.
    next_check_at        BIGINT,
    failed_checks        INTEGER NOT NULL DEFAULT 0,
    lease_until          BIGINT,
    UNIQUE (account_id, name)
);
CREATE UNIQUE INDEX domains_one_active_owner ON domains (name) WHERE status = 'active';
CREATE INDEX domains_due ON domains (next_check_at) WHERE next_check_at IS NOT NULL;
CREATE INDEX domains_by_account ON domains (account_id, name);

-- Every status change, with its time and reason.
CREATE TABLE domain_events (
    domain_id    TEXT NOT NULL REFERENCES domains (id) ON DELETE CASCADE,
    at           BIGINT NOT NULL,
    from_status  TEXT,
    to_status    TEXT NOT NULL,
    reason       TEXT NOT NULL
);
CREATE INDEX domain_events_by_domain ON domain_events (domain_id, at);

-- One DKIM key pair per token; the token is both the selector and the label under the
-- DKIM zone. The private key (PKCS#8 DER) is sealed under the master key.
CREATE TABLE dkim_keys (
    token        TEXT PRIMARY KEY,
    domain_id    TEXT NOT NULL REFERENCES domains (id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    public_key   TEXT NOT NULL,
    private_key  TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX dkim_keys_by_domain ON dkim_keys (domain_id, position);

-- What the last check found for each record: a JSON array of values, or the lookup error.
-- `found_at` is set when the values were found at another name than asked (the domain
-- doubled by a DNS provider that appends it).
CREATE TABLE domain_lookups (
    domain_id    TEXT NOT NULL REFERENCES domains (id) ON DELETE CASCADE,
    record_type  TEXT NOT NULL,
    name         TEXT NOT NULL,
    found        TEXT NOT NULL,
    found_at     TEXT,
    error        TEXT,
    checked_at   BIGINT NOT NULL,
    PRIMARY KEY (domain_id, record_type, name)
);
