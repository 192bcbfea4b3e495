ALTER TABLE payments DROP COLUMN settler;
