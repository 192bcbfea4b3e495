-- Where each consumer resumes: the next offset to read, per topic and
-- partition. Written in the same transaction as the work the records caused.
CREATE TABLE consumer_offsets (
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    next_offset BIGINT NOT NULL CHECK (next_offset >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition_id)
);

-- Events waiting to be published. A row is written in the same transaction
-- as the state change that caused it and deleted once the broker has
-- acknowledged it, so nothing is lost between commit and publish.
CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    topic TEXT NOT NULL,
    message_key BYTEA NOT NULL,
    payload BYTEA NOT NULL,
    header_names TEXT[] NOT NULL,
    header_values BYTEA[] NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
