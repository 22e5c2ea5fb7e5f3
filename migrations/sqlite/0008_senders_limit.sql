-- Verification emails are counted per account and address: the sends of one account must
-- not use up another's allowance for the same address. Rows from before are dropped (they
-- cover one day at most and belong to no account).
DELETE FROM verification_sends;
ALTER TABLE verification_sends ADD COLUMN account_id TEXT REFERENCES accounts (id) ON DELETE CASCADE;
-- A send is written before the email is made and counted after, so that concurrent
-- requests count one another; `id` takes back one that was refused.
ALTER TABLE verification_sends ADD COLUMN id TEXT;
DROP INDEX verification_sends_by_email;
CREATE INDEX verification_sends_by_account ON verification_sends (account_id, email, at);
