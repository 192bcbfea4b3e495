DROP INDEX outbox_by_owner;
ALTER TABLE outbox DROP COLUMN owner;
DROP TABLE partition_leases;
DROP TABLE members;
