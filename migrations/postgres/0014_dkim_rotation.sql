-- DKIM keys rotate behind the domain's three selectors (tokens), which never change: a
-- selector holds one key at a time, and its state follows from the times below and the
-- clock, so that a switch or a retirement needs no job to happen on time.
--   standby:   signing_since IS NULL, or retire_at has passed (the key is no longer
--              published; the selector answers a revoked record until it is reused)
--   published: signing_since is still to come (a rotation's new key)
--   signing:   signing_since has come, and signing_until (set by a rotation) has not
--   retiring:  signing_until has passed, retire_at has not (still published, so that
--              mail signed before the switch verifies)
-- One key of each algorithm signs at a time; a rotation takes the standby selector, so
-- a domain has at most one under way.
ALTER TABLE dkim_keys ADD COLUMN algorithm TEXT NOT NULL DEFAULT 'rsa';
ALTER TABLE dkim_keys ADD COLUMN signing_since BIGINT;
ALTER TABLE dkim_keys ADD COLUMN signing_until BIGINT;
ALTER TABLE dkim_keys ADD COLUMN retire_at BIGINT;

-- Until now the first selector signed and the other two stood by. The second gets an
-- Ed25519 key when mailroom starts (keys are made in code, not in SQL), published for the
-- switch delay before it signs.
UPDATE dkim_keys SET signing_since = created_at WHERE position = 0;

-- Automatic rotation finds the keys that have signed longest; retired keys are found to
-- have their private half deleted.
CREATE INDEX dkim_keys_signing ON dkim_keys (signing_since) WHERE signing_until IS NULL;
CREATE INDEX dkim_keys_retiring ON dkim_keys (retire_at) WHERE private_key <> '';
