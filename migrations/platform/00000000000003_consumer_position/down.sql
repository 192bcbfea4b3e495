ALTER TABLE consumer_offsets
    DROP COLUMN last_record_time,
    DROP COLUMN last_ce_id;
