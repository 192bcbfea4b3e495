DROP TABLE outbox;
DROP TABLE consumer_offsets;
