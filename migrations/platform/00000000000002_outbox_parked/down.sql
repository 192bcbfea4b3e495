DROP TABLE outbox_parked;
