-- A delivery's successful attempt (nearly every attempt there is) is kept on the
-- delivery's own row: its number is `attempts`, its time `updated_at`. Recording it is
-- then the one row update that marks the delivery succeeded. Failed attempts, and the
-- successes recorded before this change, keep their rows in webhook_attempts.
ALTER TABLE webhook_deliveries ADD COLUMN success_http_status BIGINT;
ALTER TABLE webhook_deliveries ADD COLUMN success_latency_ms BIGINT;
ALTER TABLE webhook_deliveries ADD COLUMN success_response TEXT;
