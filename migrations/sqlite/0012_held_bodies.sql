-- The bytes of sealed bodies each account's emails still hold, kept by the database as
-- bodies are written and deleted, so that the limit on them is checked by reading one row.
CREATE TABLE held_bodies (
    account_id  TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    bytes       BIGINT NOT NULL
);

INSERT INTO held_bodies (account_id, bytes)
    SELECT account_id, SUM(LENGTH(body)) FROM emails
    WHERE body IS NOT NULL AND account_id IS NOT NULL GROUP BY account_id;

CREATE TRIGGER held_bodies_on_insert AFTER INSERT ON emails
    WHEN NEW.body IS NOT NULL AND NEW.account_id IS NOT NULL
BEGIN
    INSERT INTO held_bodies (account_id, bytes) VALUES (NEW.account_id, LENGTH(NEW.body))
        ON CONFLICT (account_id) DO UPDATE SET bytes = bytes + excluded.bytes;
END;

CREATE TRIGGER held_bodies_on_update AFTER UPDATE OF body ON emails
    WHEN OLD.body IS NOT NULL AND NEW.body IS NULL AND OLD.account_id IS NOT NULL
BEGIN
    UPDATE held_bodies SET bytes = bytes - LENGTH(OLD.body) WHERE account_id = OLD.account_id;
END;

CREATE TRIGGER held_bodies_on_delete AFTER DELETE ON emails
    WHEN OLD.body IS NOT NULL AND OLD.account_id IS NOT NULL
BEGIN
    UPDATE held_bodies SET bytes = bytes - LENGTH(OLD.body) WHERE account_id = OLD.account_id;
END;
