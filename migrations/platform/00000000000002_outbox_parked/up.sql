-- Outbox rows the broker can never accept (too large, or refused as
-- invalid), moved here by the relay with the reason, so that they stop
-- blocking the rows behind them. Each keeps its outbox id.
CREATE TABLE outbox_parked (
    id BIGINT PRIMARY KEY,
    topic TEXT NOT NULL,
    message_key BYTEA NOT NULL,
    payload BYTEA NOT NULL,
    header_names TEXT[] NOT NULL,
    header_values BYTEA[] NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    error TEXT NOT NULL,
    parked_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
