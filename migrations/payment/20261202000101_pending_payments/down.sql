DROP INDEX payments_pending;
ALTER TABLE payments DROP COLUMN update_time;
ALTER TABLE payments DROP COLUMN attempts;
-- The previous rule has no place for a payment the provider has not
-- decided; such rows cannot be kept.
DELETE FROM payments WHERE status = 'PENDING';
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check CHECK (status IN ('COMPLETED', 'DECLINED'));
