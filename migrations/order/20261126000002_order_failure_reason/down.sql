ALTER TABLE orders DROP COLUMN failure_reason;
