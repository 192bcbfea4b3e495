-- What a consumer last read before its stored position: the record at
-- next_offset - 1. It tells a log that is merely behind (wait for it) from
-- one that was recreated (start again from its beginning).
ALTER TABLE consumer_offsets
    ADD COLUMN last_ce_id TEXT,
    ADD COLUMN last_record_time TIMESTAMPTZ;
