-- What the last check found for each record moves onto the domain's row, as one JSON
-- array of {type, name, values, at, error}: saving a check is then one row update.
ALTER TABLE domains ADD COLUMN lookups TEXT;
UPDATE domains SET lookups = l.lookups
FROM (
    SELECT domain_id, json_agg(json_build_object(
        'type', record_type,
        'name', name,
        'values', found::json,
        'at', found_at,
        'error', error))::text AS lookups
    FROM domain_lookups GROUP BY domain_id
) AS l
WHERE domains.id = l.domain_id;
DROP TABLE domain_lookups;
