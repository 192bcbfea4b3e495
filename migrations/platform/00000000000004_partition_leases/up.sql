-- The live instances of the service. Each renews its row every
-- LEASE_RENEW_INTERVAL_MS; one whose expires_at has passed (by this
-- database's clock) is gone, and what it owned is taken over.
CREATE TABLE members (
    instance_id TEXT PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL,
    joined_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Who consumes each partition. A lease is held while owner is set and
-- expires_at has not passed; every new holder bumps epoch, and a batch
-- commits only under the owner and epoch it was fetched under.
CREATE TABLE partition_leases (
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    owner TEXT,
    epoch BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (topic, partition_id)
);

-- The instance whose relay publishes the row: the one that wrote it (its
-- connections set oms.instance_id), until it is gone and another adopts
-- the row. NULL: written by something else, adopted by any relay.
ALTER TABLE outbox
    ADD COLUMN owner TEXT DEFAULT NULLIF(current_setting('oms.instance_id', true), '');
CREATE INDEX outbox_by_owner ON outbox (owner, id);
