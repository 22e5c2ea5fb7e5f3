-- What the last check found for each record moves onto the domain's row, as one JSON
-- array of {type, name, values, at, error}: saving a check is then one row update.
ALTER TABLE domains ADD COLUMN lookups TEXT;
UPDATE domains SET lookups = (
    SELECT json_group_array(json_object(
        'type', l.record_type,
        'name', l.name,
        'values', CASE WHEN json_valid(l.found) THEN json(l.found) ELSE json_array() END,
        'at', l.found_at,
        'error', l.error))
    FROM domain_lookups l WHERE l.domain_id = domains.id)
WHERE id IN (SELECT domain_id FROM domain_lookups);
DROP TABLE domain_lookups;
