ALTER TABLE payments DROP CONSTRAINT payments_decline_reason_check;
ALTER TABLE payments DROP COLUMN decline_reason;
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check CHECK (status IN ('COMPLETED'));
