-- Provider calls that ended without an answer (a timeout or an error). Only
-- these count toward PAYMENT_PROVIDER_MAX_ATTEMPTS: a call cut off because
-- this service stopped or crashed says nothing about the provider, and a
-- payment declined for our own restarts could have been charged already.
-- `attempts` still counts every call made.
ALTER TABLE payments ADD COLUMN unanswered INT NOT NULL DEFAULT 0 CHECK (unanswered >= 0);
