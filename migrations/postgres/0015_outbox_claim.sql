-- The outbox's lanes, read by the claim: each account's own mail (mailroom's, such as
-- verification emails; '' for the operator's, which has no account) and each account's API
-- emails, in the order they fall due. Only waiting emails are in them, so a claim reads the
-- head of each lane and never the delivered history. Own mail has a lane of its own because
-- it is claimed ahead of tenants' mail, and must not be searched for behind an account's
-- backlog of API emails.
CREATE INDEX emails_own_lanes ON emails (COALESCE(account_id, ''), next_attempt_at)
    WHERE status IN ('scheduled', 'queued', 'sending') AND kind <> 'email';
CREATE INDEX emails_api_lanes ON emails (COALESCE(account_id, ''), next_attempt_at)
    WHERE status IN ('scheduled', 'queued', 'sending') AND kind = 'email';

-- The worker's minute count of recent failures, which would otherwise read every email.
CREATE INDEX emails_failed ON emails (updated_at) WHERE status = 'failed';
