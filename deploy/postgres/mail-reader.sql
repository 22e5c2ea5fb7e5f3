-- A read-only role for Dovecot and Postfix: it can read the directory views and nothing
-- else. Run as a superuser (or the database owner) after `mailroom migrate`:
--   psql -v password="'…'" -d mailroom -f deploy/postgres/mail-reader.sql
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mailroom_mail') THEN
        CREATE ROLE mailroom_mail LOGIN;
    END IF;
END
$$;
ALTER ROLE mailroom_mail PASSWORD :password;
GRANT SELECT ON dovecot_users, postfix_domains, postfix_mailboxes, postfix_aliases TO mailroom_mail;
