ALTER TABLE payments DROP COLUMN trace_parent;
