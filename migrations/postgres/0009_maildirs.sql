-- Each mailbox's mail lives at a path that holds its id, `{domain}/{local part}@{id}` (a
-- local part never holds `@`), so an address deleted and created again never opens the
-- previous owner's Maildir. Mailboxes made before keep the path their mail is at.
ALTER TABLE mailboxes ADD COLUMN maildir TEXT;
UPDATE mailboxes m SET maildir = d.name || '/' || m.local_part FROM domains d WHERE d.id = m.domain_id;

-- One folder, one mailbox (several NULLs, for the instant between a mailbox's insert and
-- its path, are allowed).
CREATE UNIQUE INDEX mailboxes_by_maildir ON mailboxes (maildir);

-- Deleted mailboxes' Maildirs, until `mailroom admin purge-maildirs` removes them on the
-- mail host.
CREATE TABLE deleted_maildirs (
    mailbox_id  BIGINT PRIMARY KEY,
    address     TEXT NOT NULL,
    maildir     TEXT NOT NULL,
    deleted_at  BIGINT NOT NULL
);

-- Replaced in place, so that the mail servers' role keeps its grants.
CREATE OR REPLACE VIEW dovecot_users AS
SELECT m.address AS "user",
       m.password_hash AS password,
       md.vmail_root || '/' || m.maildir AS home,
       md.uid AS uid,
       md.gid AS gid,
       CASE WHEN m.quota_mb IS NULL THEN NULL ELSE '*:storage=' || m.quota_mb || 'M' END AS quota_rule
FROM mailboxes m
JOIN domains d ON d.id = m.domain_id
CROSS JOIN mail_directory md
WHERE m.status = 'active' AND d.status = 'active';

CREATE OR REPLACE VIEW postfix_mailboxes AS
SELECT m.address AS address, m.maildir || '/' AS maildir
FROM mailboxes m JOIN domains d ON d.id = m.domain_id
WHERE m.status = 'active' AND d.status = 'active';

-- Postfix's smtpd_sender_login_maps: the SASL login that owns each sender address. Every
-- mailbox owns its address whatever its status, so that no other login may send as a
-- disabled one.
CREATE VIEW postfix_sender_logins AS
SELECT address AS sender, address AS login FROM mailboxes;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mailroom_mail') THEN
        GRANT SELECT ON postfix_sender_logins TO mailroom_mail;
    END IF;
END
$$;
