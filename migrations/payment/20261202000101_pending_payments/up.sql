-- A payment is recorded PENDING when its request is consumed, and settled
-- afterwards, outside that transaction, by asking the provider with the
-- order id as the idempotency key.
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('PENDING', 'COMPLETED', 'DECLINED'));
-- Provider calls made for the payment, so that the bound on unanswered
-- calls holds across restarts.
ALTER TABLE payments ADD COLUMN attempts INT NOT NULL DEFAULT 0 CHECK (attempts >= 0);
ALTER TABLE payments ADD COLUMN update_time TIMESTAMPTZ NOT NULL DEFAULT now();
-- The settlement worker reads the pending payments, oldest first.
CREATE INDEX payments_pending ON payments (create_time) WHERE status = 'PENDING';
