-- A declined payment is recorded too, with the provider's reason, so that a
-- redelivered request is declined once, not charged later.
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check CHECK (status IN ('COMPLETED', 'DECLINED'));
ALTER TABLE payments ADD COLUMN decline_reason TEXT;
ALTER TABLE payments ADD CONSTRAINT payments_decline_reason_check
    CHECK ((status = 'DECLINED') = (decline_reason IS NOT NULL));
