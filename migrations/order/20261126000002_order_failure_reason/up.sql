-- Why an order was cancelled (the payment's decline reason).
ALTER TABLE orders ADD COLUMN failure_reason TEXT;
