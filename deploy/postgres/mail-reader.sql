-- A read-only role for Dovecot and Postfix: it can read the directory views and nothing
-- else. Two steps, because creating a role and granting on mailroom's views need
-- different rights:
--
-- 1. Once, as a superuser (or a role with CREATEROLE), make the role and its password:
--      psql -d mailroom -c "CREATE ROLE mailroom_mail LOGIN PASSWORD '…'"
--    (the same, with ALTER ROLE, changes the password later).
-- 2. As the database owner (the role mailroom connects as, which owns the views) or a
--    superuser, after `mailroom migrate` and again after each upgrade:
--      psql -v ON_ERROR_STOP=1 -d mailroom -f deploy/postgres/mail-reader.sql
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mailroom_mail') THEN
        RAISE EXCEPTION 'role mailroom_mail does not exist: a superuser creates it first (step 1 above)';
    END IF;
END
$$;
GRANT SELECT ON dovecot_users, postfix_domains, postfix_mailboxes, postfix_aliases,
    postfix_sender_logins TO mailroom_mail;
