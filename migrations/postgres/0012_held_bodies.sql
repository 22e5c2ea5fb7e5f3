-- The bytes of sealed bodies each account's emails still hold, kept by the database as
-- bodies are written and deleted, so that the limit on them is checked by reading one row.
CREATE TABLE held_bodies (
    account_id  TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    bytes       BIGINT NOT NULL
);

INSERT INTO held_bodies (account_id, bytes)
    SELECT account_id, SUM(OCTET_LENGTH(body)) FROM emails
    WHERE body IS NOT NULL AND account_id IS NOT NULL GROUP BY account_id;

CREATE FUNCTION held_bodies_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.body IS NOT NULL AND OLD.account_id IS NOT NULL
       AND (TG_OP = 'DELETE' OR NEW.body IS NULL) THEN
        UPDATE held_bodies SET bytes = bytes - OCTET_LENGTH(OLD.body)
            WHERE account_id = OLD.account_id;
    END IF;
    IF TG_OP = 'INSERT' AND NEW.body IS NOT NULL AND NEW.account_id IS NOT NULL THEN
        INSERT INTO held_bodies (account_id, bytes) VALUES (NEW.account_id, OCTET_LENGTH(NEW.body))
            ON CONFLICT (account_id) DO UPDATE SET bytes = held_bodies.bytes + EXCLUDED.bytes;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER held_bodies_count AFTER INSERT OR UPDATE OF body OR DELETE ON emails
    FOR EACH ROW EXECUTE FUNCTION held_bodies_count();
