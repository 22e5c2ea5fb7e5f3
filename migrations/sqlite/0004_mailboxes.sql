-- Mailboxes on managed domains. Integer ids, as the mailbox API shows them; never reused.
CREATE TABLE mailboxes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id     TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    domain_id      TEXT NOT NULL REFERENCES domains (id),
    local_part     TEXT NOT NULL,
    address        TEXT NOT NULL UNIQUE,
    -- The tenant's own identifier of the mailbox's owner.
    user_id        TEXT,
    display_name   TEXT NOT NULL,
    -- {ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$…: a form Dovecot verifies.
    password_hash  TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    is_default     INTEGER NOT NULL DEFAULT 0,
    quota_mb       BIGINT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX mailboxes_by_account ON mailboxes (account_id, id);
CREATE INDEX mailboxes_by_domain ON mailboxes (domain_id, id);
CREATE INDEX mailboxes_by_user ON mailboxes (account_id, user_id, id);
CREATE UNIQUE INDEX mailboxes_one_default ON mailboxes (account_id, user_id) WHERE is_default = 1;

-- Where the mail servers keep mail, as mailroom's settings say (one row).
CREATE TABLE mail_directory (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    vmail_root  TEXT NOT NULL,
    uid         BIGINT NOT NULL,
    gid         BIGINT NOT NULL
);
INSERT INTO mail_directory (id, vmail_root, uid, gid) VALUES (1, '/var/vmail', 5000, 5000);

-- The directory Dovecot and Postfix read (Postfix Admin's contract): active mailboxes on
-- active domains only.
CREATE VIEW dovecot_users AS
SELECT m.address AS user,
       m.password_hash AS password,
       md.vmail_root || '/' || d.name || '/' || m.local_part AS home,
       md.uid AS uid,
       md.gid AS gid,
       CASE WHEN m.quota_mb IS NULL THEN NULL ELSE '*:storage=' || m.quota_mb || 'M' END AS quota_rule
FROM mailboxes m
JOIN domains d ON d.id = m.domain_id
CROSS JOIN mail_directory md
WHERE m.status = 'active' AND d.status = 'active';

CREATE VIEW postfix_domains AS
SELECT name AS domain FROM domains WHERE status = 'active';

CREATE VIEW postfix_mailboxes AS
SELECT m.address AS address, d.name || '/' || m.local_part || '/' AS maildir
FROM mailboxes m JOIN domains d ON d.id = m.domain_id
WHERE m.status = 'active' AND d.status = 'active';

-- Each mailbox aliases itself, so that a catch-all alias added later cannot swallow it.
CREATE VIEW postfix_aliases AS
SELECT m.address AS address, m.address AS goto
FROM mailboxes m JOIN domains d ON d.id = m.domain_id
WHERE m.status = 'active' AND d.status = 'active';
